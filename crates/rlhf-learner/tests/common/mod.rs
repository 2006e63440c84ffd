//! Helpers shared by the learner's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rlhf_learner::Seq;

/// The tiny Qwen2 checkpoint the tests train.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2")
}

/// A completion of `prompt` with its reward.
pub fn seq(prompt: &[u32], completion: &[u32], reward: f64) -> Seq {
    Seq {
        prompt: prompt.to_vec(),
        completion: completion.to_vec(),
        reward,
    }
}
