//! The value head: a causal LM turned into a one-label score model gives a value per token,
//! trains, and saves as a `*ForSequenceClassification` checkpoint that reloads identically.

use std::path::Path;

use rlhf_model::load::host_vec;
use rlhf_model::{Architecture, Cpu, PaddingSide, TokenBatch, Transformer};

#[test]
fn value_head_per_token_and_round_trip() -> anyhow::Result<()> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-llama3");
    let lm = Transformer::<Cpu>::load(&dir, &Default::default())?;
    assert!(
        lm.values(&TokenBatch::unpadded(vec![1, 2], 1, 2)?).is_err(),
        "a causal LM has no value head"
    );
    let critic = lm.with_score_head(1);
    assert_eq!(
        critic.config.architecture,
        Architecture::LlamaForSequenceClassification
    );
    let batch = TokenBatch::pad(&[vec![5, 6, 7], vec![8, 9]], 0, PaddingSide::Right)?;
    let v = critic.values(&batch)?;
    assert_eq!(v.dims(), [2, 3]);
    // Freshly attached heads start at zero.
    assert!(host_vec(v.into_data())?.iter().all(|&x| x == 0.0));
    let tmp = tempfile::tempdir()?;
    critic.save_pretrained(tmp.path(), Some(&dir))?;
    let again = Transformer::<Cpu>::load(tmp.path(), &Default::default())?;
    assert_eq!(
        again.config.architecture,
        Architecture::LlamaForSequenceClassification
    );
    assert_eq!(again.config.num_labels, 1);
    let a = host_vec(critic.score_all(&batch)?.into_data())?;
    let b = host_vec(again.score_all(&batch)?.into_data())?;
    assert_eq!(a, b);
    Ok(())
}
