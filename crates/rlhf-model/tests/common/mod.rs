//! Helpers shared by the model's integration tests: the fixture checkpoints and the outputs
//! transformers computed for them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rlhf_model::load::host_vec;
use rlhf_model::{
    Completion, PaddingSide, SamplingParams, TokenBatch, Transformer, masked_sum, target_mask,
};
use safetensors::SafeTensors;
use serde_json::Value;

/// `tests/fixtures` at the workspace root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Every causal-LM fixture folder (those with `greedy_16` in reference.json).
pub fn causal_dirs() -> Vec<PathBuf> {
    dirs_with("greedy_16")
}

/// Every reward-model fixture folder (those with `scores` in reference.json).
pub fn reward_dirs() -> Vec<PathBuf> {
    dirs_with("scores")
}

pub fn dirs_with(key: &str) -> Vec<PathBuf> {
    let mut dirs = vec![];
    for set in ["hf-tiny", "hf-extra"] {
        let Ok(entries) = std::fs::read_dir(fixtures().join(set)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(r) = read_json(&p.join("reference.json"))
                && r.get(key).is_some()
            {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    dirs
}

pub fn read_json(p: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?)
}

/// transformers' greedy continuations (`greedy_16` in reference.json) of the fixture's prompts,
/// one per prompt, and the sampling settings that reproduce them ([`greedy_params`]).
pub fn greedy_16(reference: &Value) -> Vec<Vec<u32>> {
    reference["greedy_16"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(ids_u32)
        .collect()
}

/// Greedy decoding of 16 new tokens, as `greedy_16` was made.
pub fn greedy_params() -> SamplingParams {
    SamplingParams {
        max_new_tokens: 16,
        temperature: 0.0,
        ..Default::default()
    }
}

pub fn ids_u32(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
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
pub fn sampler_vs_teacher_forced<B: Backend>(
    model: &Transformer<B>,
    completions: &[Completion],
) -> anyhow::Result<f32> {
    let mut worst = 0f32;
    for c in completions {
        let full = whole_sequence(c);
        let batch = TokenBatch::unpadded(full.clone(), 1, full.len())?;
        let lp = host_vec(model.token_logprobs(&batch)?.into_data())?;
        worst = worst.max(max_abs_diff(&lp[c.prompt_ids.len() - 1..], &c.logprobs));
    }
    Ok(worst)
}

/// `model`'s logits and token log-probs on the fixture's `input_ids`, checked against
/// transformers' (within 1e-4); returns the batch and the logits.
pub fn forward_checked<B: Backend>(
    model: &Transformer<B>,
    dir: &Path,
) -> anyhow::Result<(TokenBatch, Vec<f32>)> {
    let r = Reference::load(dir)?;
    let (shape, ids) = r.i64("input_ids")?;
    let batch = TokenBatch::unpadded(ids.iter().map(|&x| x as u32).collect(), shape[0], shape[1])?;
    let logits = host_vec(model.forward_logits(&batch)?.into_data())?;
    let (_, want) = r.f32("logits")?;
    let d = max_abs_diff(&logits, &want);
    eprintln!("{}: max logit diff {d:e}", dir.display());
    assert!(d < 1e-4, "{}: logits differ by {d}", dir.display());
    let lp = host_vec(model.token_logprobs(&batch)?.into_data())?;
    let (_, want) = r.f32("token_logprobs")?;
    let d = max_abs_diff(&lp, &want);
    assert!(d < 1e-4, "{}: token log-probs differ by {d}", dir.display());
    Ok((batch, logits))
}

/// Three prompts sampled (temperature 0.9, top-k 40, top-p 0.95, 12 new tokens) by `model`, with
/// the sampler's log-probs checked against a teacher-forced pass (within 1e-4); returns the
/// completions and each whole sequence (prompt and completion).
pub fn sampled_and_checked<B: Backend>(
    model: &Transformer<B>,
    dir: &Path,
) -> anyhow::Result<(Vec<Completion>, Vec<Vec<u32>>)> {
    let prompts = vec![vec![5, 9, 33, 41, 7], vec![100, 3], vec![12, 13, 14]];
    let params = rlhf_model::SamplingParams {
        max_new_tokens: 12,
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
        seed: 3,
        ..Default::default()
    };
    let out = model.generate(&prompts, &params)?;
    let d = sampler_vs_teacher_forced(model, &out)?;
    assert!(
        d < 1e-4,
        "{}: sampler vs teacher-forced differ by {d}",
        dir.display()
    );
    let seqs = out.iter().map(whole_sequence).collect();
    Ok((out, seqs))
}

/// A completion's prompt followed by its completion.
pub fn whole_sequence(c: &Completion) -> Vec<u32> {
    c.prompt_ids
        .iter()
        .chain(&c.completion_ids)
        .copied()
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Rows of different lengths (right-padded), longer than mistral-window's window of 6.
pub fn right_padded_rows() -> anyhow::Result<TokenBatch> {
    let rows: Vec<Vec<u32>> = vec![
        (0..14).map(|i| (i * 37 + 5) % 500).collect(),
        (0..9).map(|i| (i * 11 + 3) % 500).collect(),
        (0..12).map(|i| (i * 53 + 1) % 500).collect(),
    ];
    Ok(TokenBatch::pad(&rows, 0, PaddingSide::Right)?)
}

/// `-Σ_r w_r Σ_t log p` over the real targets of [`right_padded_rows`] (3 rows), weights
/// differing per row.
pub fn logprob_loss<B: AutodiffBackend>(
    lp: Tensor<B, 2>,
    batch: &TokenBatch,
) -> anyhow::Result<Tensor<B, 1>> {
    Ok(weighted_target_loss(lp, batch, [1.0, 0.5, 2.0]))
}

/// `-Σ_r w_r Σ_t values` over the real targets of a 3-row batch, with `weights` per row.
pub fn weighted_target_loss<B: AutodiffBackend>(
    values: Tensor<B, 2>,
    batch: &TokenBatch,
    weights: [f32; 3],
) -> Tensor<B, 1> {
    let device = values.device();
    let mask = Tensor::<B, 2>::from_data(
        TensorData::new(target_mask(batch), [batch.batch, batch.len - 1]),
        &device,
    );
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights.to_vec(), [3]), &device);
    (masked_sum(values, mask) * weights).sum().neg()
}

/// Gradients by parameter path, in module order ([`by_name`]).
pub type NamedGrads = Vec<(String, Vec<f32>)>;

/// Every parameter's gradient, by parameter path.
pub fn by_name<B: AutodiffBackend>(
    model: &Transformer<B>,
    grads: &GradientsParams,
) -> anyhow::Result<NamedGrads> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<(String, Option<TensorData>)>,
        path: Vec<String>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = self.grads.get::<B::InnerBackend, D>(param.id);
            self.out
                .push((self.path.join("."), g.map(|g| g.into_data())));
        }
    }
    let mut c = Collect {
        grads,
        out: vec![],
        path: vec![],
    };
    model.visit(&mut c);
    c.out
        .into_iter()
        .map(|(name, data)| {
            let data = data.ok_or_else(|| anyhow::anyhow!("{name}: no gradient"))?;
            Ok((name, host_vec(data)?))
        })
        .collect()
}

/// The largest difference between two sets of gradients ([`by_name`], same model), each relative
/// to the largest magnitude of its parameter's gradient in `a`; panics on a zero gradient in `a`
/// (nothing to compare).
pub fn largest_relative_difference(what: &str, a: &NamedGrads, b: &NamedGrads) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: parameter counts differ");
    let mut worst = 0f32;
    for ((name, a), (_, b)) in a.iter().zip(b) {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{what}: {name} has a zero gradient");
        worst = worst.max(max_abs_diff(a, b) / scale);
    }
    worst
}
