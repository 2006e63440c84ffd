//! SFT (`train_sft`) under gradient checkpointing takes the same steps as without (up to
//! rounding).

use burn::module::AutodiffModule;
use rlhf_learner::sft::{SftSettings, train_sft};
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, TokenBatch, Transformer};

mod common;
use common::{fixture, seq};

type B = burn::backend::Autodiff<Cpu>;

#[test]
fn sft_with_gradient_checkpointing_trains_as_without() -> anyhow::Result<()> {
    let base = Transformer::<B>::load(&fixture(), &Default::default())?;
    let examples = vec![
        seq(&[5, 6, 7], &[11, 12, 13], 0.0),
        seq(&[9, 10], &[14, 15], 0.0),
        seq(&[8], &[16, 17, 18, 19], 0.0),
    ];
    let probe = TokenBatch::unpadded(vec![5, 6, 7, 11, 12, 13], 1, 6)?;
    let before = host_vec(base.valid().token_logprobs(&probe)?.into_data())?;
    let mut runs = vec![];
    for gradient_checkpointing in [false, true] {
        let settings = SftSettings {
            lr: 1e-2,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            batch_size: 2,
            epochs: 2,
            max_len: 64,
            gradient_checkpointing,
        };
        let (policy, report) = train_sft(base.clone(), &examples, settings, |_, _, _| {})?;
        assert_eq!((report.steps, report.skipped_nonfinite_steps), (4, 0));

        let lp = host_vec(policy.valid().token_logprobs(&probe)?.into_data())?;
        assert_ne!(lp, before, "training changed nothing");
        runs.push((report.first_loss, report.last_loss, lp));
    }
    // Equal up to rounding (see rlhf-model's tests/checkpoint.rs).
    let (a, b) = (&runs[0], &runs[1]);
    assert!(
        (a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5,
        "{a:?} vs {b:?}"
    );
    let diff =
        a.2.iter()
            .zip(&b.2)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
    assert!(diff < 1e-4, "log-probs after training differ by {diff}");
    Ok(())
}
