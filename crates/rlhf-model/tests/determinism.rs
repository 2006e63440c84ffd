//! The same inputs give bit-identical outputs (synchronous runs must be reproducible).

use std::path::Path;

use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, PaddingSide, SamplingParams, TokenBatch, Transformer};

#[test]
fn forward_and_generation_are_bitwise_deterministic() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2");
    let model = Transformer::<Cpu>::load(&dir, &Default::default())?;
    let seqs = vec![
        vec![38, 75, 259, 308, 346],
        vec![1, 427, 265, 201, 52, 270, 77],
    ];
    let batch = TokenBatch::pad(&seqs, 0, PaddingSide::Left)?;
    let a = host_vec(model.forward_logits(&batch)?.into_data())?;
    for _ in 0..5 {
        let b = host_vec(model.forward_logits(&batch)?.into_data())?;
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "forward differs"
        );
    }
    let p = SamplingParams {
        max_new_tokens: 6,
        seed: 11,
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| seqs[i % 2].clone()).collect();
    let g = model.generate(&prompts, &p)?;
    for _ in 0..5 {
        assert_eq!(model.generate(&prompts, &p)?, g, "generation differs");
    }
    Ok(())
}
