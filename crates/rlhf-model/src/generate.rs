//! Batched sampling with a preallocated KV cache.
//!
//! **Log-prob convention.** [`Completion::logprobs`] holds, for each sampled token, its log-prob
//! under the *unmodified* policy distribution (`log_softmax(logits)`, temperature 1, no top-k/top-p
//! truncation) — the quantity a trainer recomputes teacher-forced, so generator and learner agree
//! by construction. [`Completion::sampling_logprobs`] holds the log-prob under the distribution the
//! token was actually drawn from (after temperature, top-k and top-p; 0 for greedy), which is what
//! importance-sampling corrections need.
//!
//! **Randomness.** Row `i` of a call draws from its own generator seeded with
//! `(seed, i)`, so a row's sample does not depend on how many other rows share the batch.

use burn::tensor::backend::Backend;
use rand::{Rng, SeedableRng};
use rlhf_core::mix;
use serde::{Deserialize, Serialize};

use crate::batch::{PaddingSide, TokenBatch};
use crate::error::{ModelError, Result};
use crate::load::host_vec;
use crate::model::{KvCache, Transformer};

/// Sampling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Upper bound on generated tokens per sequence.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (arg-max).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// A sequence finishes when it samples one of these (usually the EOS ids).
    pub stop_ids: Vec<u32>,
    /// Seed of the per-row random generators.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop_ids: vec![],
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks the settings, naming the offending one.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::Input(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::Input(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.max_new_tokens == 0 {
            return Err(ModelError::Input(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Sampled a stop id (included as the last completion token).
    Stop,
    /// Reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    /// Log-prob of each completion token under the unmodified policy (see module docs).
    pub logprobs: Vec<f32>,
    /// Log-prob of each completion token under the processed sampling distribution.
    pub sampling_logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

impl<B: Backend> Transformer<B> {
    /// Samples a completion for every prompt, all rows decoded together with one KV cache.
    /// Row `i` draws from a generator seeded with `(params.seed, i)`.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>> {
        let seeds: Vec<u64> = (0..prompts.len() as u64)
            .map(|i| mix(params.seed, i))
            .collect();
        self.generate_seeded(prompts, params, &seeds)
    }

    /// Like [`Transformer::generate`], with one explicit seed per row (so that a sample's
    /// randomness depends only on its own id, not on how rows were batched).
    pub fn generate_seeded(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        seeds: &[u64],
    ) -> Result<Vec<Completion>> {
        params.validate()?;
        if seeds.len() != prompts.len() {
            return Err(ModelError::Input(format!(
                "{} seeds for {} prompts",
                seeds.len(),
                prompts.len()
            )));
        }
        let pad = self.config.pad_token_id.unwrap_or(0);
        let prompt_batch = TokenBatch::pad(prompts, pad, PaddingSide::Left)?;
        let b = prompt_batch.batch;
        let capacity = prompt_batch.len + params.max_new_tokens;
        let mut cache = KvCache::new(&self.config, b, capacity, &self.device());
        let mut rngs: Vec<rand::rngs::StdRng> = seeds
            .iter()
            .map(|&s| rand::rngs::StdRng::seed_from_u64(s))
            .collect();
        let mut out: Vec<Completion> = prompts
            .iter()
            .map(|p| Completion {
                prompt_ids: p.clone(),
                completion_ids: vec![],
                logprobs: vec![],
                sampling_logprobs: vec![],
                finish_reason: FinishReason::Length,
            })
            .collect();
        let mut done = vec![false; b];
        let mut hidden = self.step(&prompt_batch, &mut cache)?;
        for step in 0..params.max_new_tokens {
            let logits = host_vec(self.logits(hidden)?.into_data())?;
            let v = logits.len() / b;
            let mut next = vec![pad; b];
            let mut mask = vec![0u8; b];
            for r in 0..b {
                if done[r] {
                    continue;
                }
                let row = &logits[r * v..(r + 1) * v];
                if row.iter().any(|x| !x.is_finite()) {
                    return Err(ModelError::NonFinite(format!(
                        "logits of row {r} at generation step {step}"
                    )));
                }
                let (tok, lp, slp) = sample(row, params, &mut rngs[r]);
                let c = &mut out[r];
                c.completion_ids.push(tok);
                c.logprobs.push(lp);
                c.sampling_logprobs.push(slp);
                if params.stop_ids.contains(&tok) {
                    c.finish_reason = FinishReason::Stop;
                    done[r] = true;
                } else {
                    next[r] = tok;
                    mask[r] = 1;
                }
            }
            if done.iter().all(|&d| d) || step + 1 == params.max_new_tokens {
                break;
            }
            let batch = TokenBatch {
                batch: b,
                len: 1,
                ids: next,
                mask,
            };
            hidden = self.step(&batch, &mut cache)?;
        }
        Ok(out)
    }
}

/// Log-softmax of a row, accumulated in f64.
pub fn log_softmax_row(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Picks the next token: returns (token, policy log-prob, sampling log-prob).
fn sample(row: &[f32], p: &SamplingParams, rng: &mut impl Rng) -> (u32, f32, f32) {
    let base = log_softmax_row(row);
    if p.temperature == 0.0 {
        // Greedy; ties go to the lowest id, as torch.argmax does.
        let mut best = 0;
        for (i, &x) in row.iter().enumerate() {
            if x > row[best] {
                best = i;
            }
        }
        return (best as u32, base[best] as f32, 0.0);
    }
    // Temperature, then top-k, then top-p (the order of transformers' logits processors).
    // At temperature 1 the scaled distribution is the policy's (x / 1 == x exactly).
    let scaled_lp;
    let lp: &[f64] = if p.temperature == 1.0 {
        &base
    } else {
        let scaled: Vec<f32> = row.iter().map(|&x| x / p.temperature).collect();
        scaled_lp = log_softmax_row(&scaled);
        &scaled_lp
    };
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    let mut keep = order.len();
    if p.top_k > 0 {
        keep = keep.min(p.top_k);
    }
    if p.top_p < 1.0 {
        let mut cum = 0.0;
        for (n, &i) in order.iter().take(keep).enumerate() {
            cum += lp[i].exp();
            if cum >= p.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
    }
    let kept = &order[..keep.max(1)];
    let max = lp[kept[0]];
    let z: f64 = kept.iter().map(|&i| (lp[i] - max).exp()).sum();
    let u: f64 = rng.random::<f64>() * z;
    let mut acc = 0.0;
    let mut choice = kept[kept.len() - 1];
    for &i in kept {
        acc += (lp[i] - max).exp();
        if u < acc {
            choice = i;
            break;
        }
    }
    let sampling_lp = lp[choice] - max - z.ln();
    (choice as u32, base[choice] as f32, sampling_lp as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_first_maximum() {
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let (t, lp, slp) = sample(&[1.0, 3.0, 3.0, -1.0], &p, &mut rng);
        assert_eq!(t, 1);
        assert!((lp as f64 - log_softmax_row(&[1.0, 3.0, 3.0, -1.0])[1]).abs() < 1e-7);
        assert_eq!(slp, 0.0);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_truncates() {
        let row = [0.0, 2.0, 1.0, -3.0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let k1 = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            let (t, _, slp) = sample(&row, &k1, &mut rng);
            assert_eq!((t, slp), (1, 0.0));
        }
        // p(1) ≈ 0.66, p(2) ≈ 0.24: top_p 0.8 keeps exactly {1, 2}.
        let tp = SamplingParams {
            top_p: 0.8,
            ..Default::default()
        };
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[sample(&row, &tp, &mut rng).0 as usize] += 1;
        }
        assert_eq!((seen[0], seen[3]), (0, 0));
        assert!(seen[1] > seen[2] && seen[2] > 50, "{seen:?}");
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let row = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // probs 1/6, 2/6, 3/6
        let p = SamplingParams::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = [0f64; 3];
        let n = 30_000;
        for _ in 0..n {
            seen[sample(&row, &p, &mut rng).0 as usize] += 1.0;
        }
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 0.5].iter().enumerate() {
            assert!((seen[i] / n as f64 - want).abs() < 0.015, "{seen:?}");
        }
    }

    #[test]
    fn invalid_settings_are_rejected() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                max_new_tokens: 0,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_err());
        }
    }
}
