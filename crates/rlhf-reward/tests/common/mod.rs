//! What the tests against the tiny Qwen2 fixture share.

use std::path::PathBuf;

use rlhf_model::{Cpu, PaddingSide, TokenBatch, Transformer};

/// The tiny Qwen2 checkpoint (a causal LM whose log-probs the model tests check against
/// transformers).
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2")
}

/// Summed log-prob of every token of `ids` given its prefix (one sequence, no padding).
pub fn total_logprob(model: &Transformer<Cpu>, ids: &[u32]) -> anyhow::Result<f64> {
    let batch = TokenBatch::pad(&[ids.to_vec()], 0, PaddingSide::Right)?;
    let lp = model.token_logprobs(&batch)?.into_data().convert::<f32>();
    let values = lp.into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(values.iter().map(|&x| f64::from(x)).sum())
}
