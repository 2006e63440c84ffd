//! Helpers shared by the model's integration tests: the fixture checkpoints and the outputs
//! transformers computed for them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rlhf_model::load::host_vec;
use rlhf_model::{Completion, Cpu, TokenBatch, Transformer};
use safetensors::SafeTensors;

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A fixture's `reference.safetensors`: tensors transformers computed.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            bytes: std::fs::read(dir.join("reference.safetensors"))?,
        })
    }
    pub fn f32(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        let v = st.tensor(name)?;
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((v.shape().to_vec(), data))
    }
    pub fn i64(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<i64>)> {
        let st = SafeTensors::deserialize(&self.bytes)?;
        let v = st.tensor(name)?;
        let data = v
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok((v.shape().to_vec(), data))
    }
}

/// The largest difference between the log-probs the sampler recorded for `completions` and those
/// of a teacher-forced pass over each whole sequence (prompt and completion).
pub fn sampler_vs_teacher_forced(
    model: &Transformer<Cpu>,
    completions: &[Completion],
) -> anyhow::Result<f32> {
    let mut worst = 0f32;
    for c in completions {
        let full: Vec<u32> = c
            .prompt_ids
            .iter()
            .chain(&c.completion_ids)
            .copied()
            .collect();
        let batch = TokenBatch::unpadded(full.clone(), 1, full.len())?;
        let lp = host_vec(model.token_logprobs(&batch)?.into_data())?;
        worst = worst.max(max_abs_diff(&lp[c.prompt_ids.len() - 1..], &c.logprobs));
    }
    Ok(worst)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
