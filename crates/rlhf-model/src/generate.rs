//! Batched sampling with a preallocated KV cache, the token choice made on the model's device.
//!
//! **Log-prob convention.** [`Completion::logprobs`] holds, for each sampled token, its log-prob
//! under the *unmodified* policy distribution (`log_softmax(logits)`, temperature 1, no top-k/top-p
//! truncation) — the quantity a trainer recomputes teacher-forced, so generator and learner agree
//! by construction. [`Completion::sampling_logprobs`] holds the log-prob under the distribution the
//! token was actually drawn from (after temperature, top-k and top-p; 0 for greedy), which is what
//! importance-sampling corrections need.
//!
//! **Where the work happens.** On a GPU, each decoding step picks the next token of every row
//! with tensor operations on the device ([`pick`]) and feeds it straight back into the next step
//! ([`Transformer::step_device`]), so no `[batch, vocab]` logits cross to the host; the host reads
//! the picked tokens and their two log-probs (`3 × batch` numbers a step) every
//! [`DEVICE_READBACK_STEPS`] steps to see whether every row has stopped, because each read is a
//! synchronisation that stalls the queue of kernels. A row that stopped keeps decoding until the
//! next read (its extra tokens are dropped), which never changes another row's tokens. On the CPU
//! backend the logits already live in host memory, so the same choice is made row by row in f64
//! ([`pick_row`], faster there than tensor operations) and read back every step. Both pickers
//! implement one definition, below; they agree up to float rounding at a boundary between two
//! tokens (tested), and the schedule never changes a completion (tested).
//!
//! **Sampling.** Temperature, then top-k, then top-p, each renormalising (the order and meaning
//! of transformers' logits processors; top-k keeps every token tied with the k-th largest, as
//! transformers does; top-p keeps the smallest most-likely set whose mass reaches `top_p`, and
//! every token tied with its least likely member). The token is drawn by inverse CDF in
//! vocabulary order with one uniform number per row and step. On the device, top-p's cut-off is
//! found by bisection on the probability threshold (32 halvings, so up to tokens within `2⁻³²`
//! of the threshold); on the host by partial selection.
//!
//! **Randomness.** Row `i` of a call draws its uniforms from its own generator seeded with
//! `(seed, i)`, one per possible step, so a row's sample does not depend on how many other rows
//! share the batch.

use std::borrow::Cow;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rlhf_core::mix;
use serde::{Deserialize, Serialize};

use crate::batch::{PaddingSide, TokenBatch};
use crate::error::{ModelError, Result};
use crate::load::host_vec;
use crate::model::{KvCache, Transformer};

/// Version of the sampling definition: it changes whenever the same model, settings and seed
/// can give different tokens, so that caches of samples (rlhf-eval's) do not mix versions.
/// 1: sorted-order inverse CDF on the host; 2: vocabulary-order inverse CDF, top-p after a
/// renormalising top-k.
pub const SAMPLER_VERSION: u32 = 2;

/// Decoding steps between two reads of the picked tokens on a GPU (see the module docs).
pub const DEVICE_READBACK_STEPS: usize = 8;

/// Halvings of the top-p threshold's bisection.
const TOP_P_BISECTIONS: usize = 32;

/// Block length of [`prefix_sums`].
const CUMSUM_BLOCK: usize = 128;

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
        let schedule = DecodeSchedule::for_backend::<B>(&self.device());
        self.generate_scheduled(prompts, params, seeds, schedule)
    }

    /// [`Transformer::generate_seeded`] with an explicit [`DecodeSchedule`] instead of the
    /// backend's: this exists so that the GPU schedule can be tested on the CPU.
    pub fn generate_scheduled(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        seeds: &[u64],
        schedule: DecodeSchedule,
    ) -> Result<Vec<Completion>> {
        params.validate()?;
        let every = schedule.readback_every.max(1);
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
        let steps = params.max_new_tokens;
        let device = self.device();
        let mut cache = KvCache::new(
            &self.config,
            b,
            prompt_batch.len + steps,
            self.precision,
            &device,
        );
        // Row-major [batch, steps]: row r's generator supplies one uniform per step.
        let mut uniforms = Vec::with_capacity(b * steps);
        if params.temperature > 0.0 {
            for &seed in seeds {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                uniforms.extend((0..steps).map(|_| rng.random::<f32>()));
            }
        }
        // The device picker reads the uniforms from one tensor; the host picker from the vector.
        let device_uniforms = (schedule.pick_on_device && !uniforms.is_empty()).then(|| {
            let u = std::mem::take(&mut uniforms);
            Tensor::<B, 2>::from_data(TensorData::new(u, [b, steps]), &device)
        });
        let mut rows = vec![RowSoFar::default(); b];
        let mut pending: Vec<Picked<B>> = Vec::new();
        let mut hidden = self.step(&prompt_batch, &mut cache)?;
        for step in 0..steps {
            let logits = self.logits(hidden)?;
            let picked = if schedule.pick_on_device {
                let u = device_uniforms
                    .as_ref()
                    .map(|u| u.clone().slice([0..b, step..step + 1]));
                pick(logits, params, u)
            } else {
                let u: Vec<f32> = (0..b)
                    .map(|r| uniforms.get(r * steps + step).copied().unwrap_or(0.0))
                    .collect();
                pick_on_host(logits, params, &u)?
            };
            let tokens = picked.tokens.clone();
            pending.push(picked);
            let last = step + 1 == steps;
            if last || (step + 1) % every == 0 {
                read_back(std::mem::take(&mut pending), &mut rows, &params.stop_ids)?;
                if last || rows.iter().all(|r| r.stopped) {
                    break;
                }
            }
            hidden = self.step_device(tokens, &mut cache)?;
        }
        rows.into_iter()
            .zip(prompts)
            .enumerate()
            .map(|(r, (row, prompt))| row.finish(r, prompt, &params.stop_ids))
            .collect()
    }
}

/// Where the next token is chosen and how often the host looks at the choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSchedule {
    /// Choose with tensor operations on the model's device ([`pick`]), else on the host
    /// ([`pick_row`]).
    pub pick_on_device: bool,
    /// Decoding steps between two reads of the choices (stop detection).
    pub readback_every: usize,
}

impl DecodeSchedule {
    /// On the CPU backend (tensors in host memory): host picks, read every step (a read costs
    /// nothing and no step is wasted). Elsewhere: device picks, read every
    /// [`DEVICE_READBACK_STEPS`].
    pub fn for_backend<B: Backend>(device: &B::Device) -> Self {
        if B::name(device).contains("ndarray") {
            Self {
                pick_on_device: false,
                readback_every: 1,
            }
        } else {
            Self {
                pick_on_device: true,
                readback_every: DEVICE_READBACK_STEPS,
            }
        }
    }
}

/// One decoding step's choice for every row, still on the device (each `[batch, 1]`).
#[derive(Debug, Clone)]
pub struct Picked<B: Backend> {
    pub tokens: Tensor<B, 2, Int>,
    /// Log-prob under the unmodified policy.
    pub logprobs: Tensor<B, 2>,
    /// Log-prob under the processed sampling distribution (0 for greedy).
    pub sampling_logprobs: Tensor<B, 2>,
}

/// Picks the next token of every row from `logits` (`[batch, vocab]`) on their device.
/// `uniforms` (`[batch, 1]`, values in `[0, 1)`) drive the draw; greedy decoding
/// (temperature 0) takes the first maximum and ignores them.
pub fn pick<B: Backend>(
    logits: Tensor<B, 2>,
    params: &SamplingParams,
    uniforms: Option<Tensor<B, 2>>,
) -> Picked<B> {
    let [b, v] = logits.dims();
    let policy = log_softmax(logits.clone(), 1);
    let uniforms = match uniforms {
        Some(u) if params.temperature > 0.0 => u,
        _ => {
            // Greedy; ties go to the lowest id, as torch.argmax does.
            let tokens = logits.argmax(1);
            return Picked {
                logprobs: policy.gather(1, tokens.clone()),
                sampling_logprobs: Tensor::zeros([b, 1], &tokens.device()),
                tokens,
            };
        }
    };
    // At temperature 1 the scaled distribution is the policy's (x / 1 == x exactly).
    let mut scaled = if params.temperature == 1.0 {
        policy.clone()
    } else {
        log_softmax(logits.div_scalar(params.temperature), 1)
    };
    if params.top_k > 0 && params.top_k < v {
        let k = params.top_k;
        let kth = scaled.clone().topk(k, 1).slice([0..b, k - 1..k]);
        let drop = scaled.clone().lower(kth.expand([b, v]));
        scaled = log_softmax(scaled.mask_fill(drop, f32::NEG_INFINITY), 1);
    }
    if params.top_p < 1.0 {
        let probs = scaled.clone().exp();
        let threshold = nucleus_threshold(probs.clone(), params.top_p);
        let drop = probs.lower(threshold.expand([b, v]));
        scaled = log_softmax(scaled.mask_fill(drop, f32::NEG_INFINITY), 1);
    }
    // Inverse CDF: the first token whose cumulative probability exceeds u · total.
    let probs = scaled.clone().exp();
    let cumulative = prefix_sums(probs.clone());
    let total = cumulative.clone().slice([0..b, v - 1..v]);
    let target = (uniforms * total).expand([b, v]);
    let before = cumulative.lower_equal(target).int().sum_dim(1);
    let index = before.clamp_max(v as i64 - 1);
    // Rounding can land u · total on the total itself, past the last token with mass: take the
    // most likely token then (probability below 2⁻²⁴ per draw).
    let massless = probs.gather(1, index.clone()).lower_equal_elem(0.0);
    let tokens = index.mask_where(massless, scaled.clone().argmax(1));
    Picked {
        logprobs: policy.gather(1, tokens.clone()),
        sampling_logprobs: scaled.gather(1, tokens.clone()),
        tokens,
    }
}

/// Inclusive prefix sums along dimension 1, in blocks of [`CUMSUM_BLOCK`]: each block's own
/// prefix sums plus the sum of the blocks before it. burn 0.21's device `cumsum` has every
/// output element add up its whole prefix (O(v²) work per row): at Qwen's 151 936-token
/// vocabulary that took most of a decoding step on an H200, growing with the batch
/// (docs/gpu.md). In blocks the work is O(v · block + (v / block)²) per row.
fn prefix_sums<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [b, v] = x.dims();
    let c = CUMSUM_BLOCK;
    if v <= c {
        return x.cumsum(1);
    }
    let n = v.div_ceil(c);
    let padded = if n * c == v {
        x
    } else {
        let zeros = Tensor::zeros([b, n * c - v], &x.device());
        Tensor::cat(vec![x, zeros], 1)
    };
    let within = padded.reshape([b, n, c]).cumsum(2);
    let totals = within.clone().slice([0..b, 0..n, c - 1..c]);
    let before = totals.clone().cumsum(1) - totals;
    (within + before).reshape([b, n * c]).slice([0..b, 0..v])
}

/// Per row, the largest probability threshold `t` whose kept set `{p ≥ t}` still holds at least
/// `top_p` of the mass (`[batch, 1]`), found by bisection: the kept set is then the smallest
/// most-likely prefix reaching `top_p`, as transformers' top-p keeps.
fn nucleus_threshold<B: Backend>(probs: Tensor<B, 2>, top_p: f32) -> Tensor<B, 2> {
    let [b, v] = probs.dims();
    let mass_from = |t: &Tensor<B, 2>| {
        let kept = probs
            .clone()
            .greater_equal(t.clone().expand([b, v]))
            .float();
        (probs.clone() * kept).sum_dim(1)
    };
    // Invariant: mass_from(lo) >= top_p; hi starts at the row maximum.
    let mut lo = Tensor::<B, 2>::zeros([b, 1], &probs.device());
    let mut hi = probs.clone().max_dim(1);
    let enough_at_max = mass_from(&hi).greater_equal_elem(top_p);
    for _ in 0..TOP_P_BISECTIONS {
        let mid = (lo.clone() + hi.clone()).div_scalar(2.0);
        let enough = mass_from(&mid).greater_equal_elem(top_p);
        lo = lo.mask_where(enough.clone(), mid.clone());
        hi = mid.mask_where(enough, hi);
    }
    lo.mask_where(enough_at_max, hi)
}

/// [`pick`] made on the host: reads the logits and picks row by row with [`pick_row`].
fn pick_on_host<B: Backend>(
    logits: Tensor<B, 2>,
    params: &SamplingParams,
    uniforms: &[f32],
) -> Result<Picked<B>> {
    let [b, v] = logits.dims();
    let device = logits.device();
    let host = host_vec(logits.into_data())?;
    let mut tokens = Vec::with_capacity(b);
    let mut logprobs = Vec::with_capacity(b);
    let mut sampling = Vec::with_capacity(b);
    for (row, &u) in host.chunks(v).zip(uniforms) {
        let (t, lp, slp) = pick_row(row, params, u);
        tokens.push(t as i64);
        logprobs.push(lp);
        sampling.push(slp);
    }
    Ok(Picked {
        tokens: Tensor::from_data(TensorData::new(tokens, [b, 1]), &device),
        logprobs: Tensor::from_data(TensorData::new(logprobs, [b, 1]), &device),
        sampling_logprobs: Tensor::from_data(TensorData::new(sampling, [b, 1]), &device),
    })
}

/// Picks one row's next token on the host, in f64: returns (token, policy log-prob, sampling
/// log-prob). Same definition as [`pick`] (module docs).
pub fn pick_row(row: &[f32], params: &SamplingParams, uniform: f32) -> (u32, f32, f32) {
    let policy = log_softmax_row(row);
    if params.temperature == 0.0 {
        // Greedy; ties go to the lowest id, as torch.argmax does.
        let best = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best });
        return (best as u32, policy[best] as f32, 0.0);
    }
    // At temperature 1 the scaled distribution is the policy's, copied only if truncated.
    let mut scaled: Cow<[f64]> = if params.temperature == 1.0 {
        Cow::Borrowed(&policy)
    } else {
        let t = params.temperature;
        Cow::Owned(log_softmax_row(
            &row.iter().map(|&x| x / t).collect::<Vec<f32>>(),
        ))
    };
    if params.top_k > 0 && params.top_k < row.len() {
        let kth = kth_largest(&scaled, params.top_k);
        keep_at_least(scaled.to_mut(), kth);
    }
    if params.top_p < 1.0 {
        let cut = nucleus_cut(&scaled, params.top_p as f64);
        keep_at_least(scaled.to_mut(), cut);
    }
    let target = uniform as f64;
    let mut acc = 0.0;
    let mut choice = None;
    for (i, &l) in scaled.iter().enumerate() {
        if l == f64::NEG_INFINITY {
            continue;
        }
        acc += l.exp();
        choice = Some(i);
        if target < acc {
            break;
        }
    }
    // No token with mass (non-finite logits): token 0 with NaN log-probs, reported by the caller.
    let Some(choice) = choice else {
        return (0, f32::NAN, f32::NAN);
    };
    (choice as u32, policy[choice] as f32, scaled[choice] as f32)
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

/// The `k`-th largest value (1-based) of `xs`, by partial selection.
fn kth_largest(xs: &[f64], k: usize) -> f64 {
    let mut copy = xs.to_vec();
    let (_, kth, _) = copy.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    *kth
}

/// The log-prob of the least likely token of the smallest most-likely set whose mass reaches
/// `top_p`. Sorts only as many of the largest values as the mass needs (64, 512, ... of them).
fn nucleus_cut(logprobs: &[f64], top_p: f64) -> f64 {
    let mut m = 64.min(logprobs.len());
    loop {
        let mut copy = logprobs.to_vec();
        if m < copy.len() {
            copy.select_nth_unstable_by(m - 1, |a, b| b.total_cmp(a));
        }
        let top = &mut copy[..m];
        top.sort_unstable_by(|a, b| b.total_cmp(a));
        let mut cum = 0.0;
        for &l in top.iter() {
            cum += l.exp();
            if cum >= top_p {
                return l;
            }
        }
        if m == logprobs.len() {
            return top[m - 1];
        }
        m = (m * 8).min(logprobs.len());
    }
}

/// Drops (log-prob −∞) every value below `cut`, then renormalises what is left.
fn keep_at_least(logprobs: &mut [f64], cut: f64) {
    for l in logprobs.iter_mut() {
        if *l < cut {
            *l = f64::NEG_INFINITY;
        }
    }
    let max = logprobs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let lse = logprobs.iter().map(|&x| (x - max).exp()).sum::<f64>().ln() + max;
    logprobs.iter_mut().for_each(|l| *l -= lse);
}

/// What the host knows of one row so far.
#[derive(Debug, Clone, Default)]
struct RowSoFar {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    sampling_logprobs: Vec<f32>,
    stopped: bool,
}

impl RowSoFar {
    /// Cuts the row after its first stop id and checks its log-probs are finite.
    fn finish(mut self, row: usize, prompt: &[u32], stop_ids: &[u32]) -> Result<Completion> {
        let stop_at = self.tokens.iter().position(|t| stop_ids.contains(t));
        let len = stop_at.map_or(self.tokens.len(), |i| i + 1);
        self.tokens.truncate(len);
        self.logprobs.truncate(len);
        self.sampling_logprobs.truncate(len);
        let bad = self
            .logprobs
            .iter()
            .zip(&self.sampling_logprobs)
            .position(|(a, b)| !a.is_finite() || !b.is_finite());
        if let Some(step) = bad {
            return Err(ModelError::NonFinite(format!(
                "log-probs of row {row} at generation step {step} (non-finite logits)"
            )));
        }
        Ok(Completion {
            prompt_ids: prompt.to_vec(),
            completion_ids: self.tokens,
            logprobs: self.logprobs,
            sampling_logprobs: self.sampling_logprobs,
            finish_reason: if stop_at.is_some() {
                FinishReason::Stop
            } else {
                FinishReason::Length
            },
        })
    }
}

/// Reads the picked tokens of the steps since the last read into each row's host record.
fn read_back<B: Backend>(
    steps: Vec<Picked<B>>,
    rows: &mut [RowSoFar],
    stop_ids: &[u32],
) -> Result<()> {
    let n = steps.len();
    if n == 0 {
        return Ok(());
    }
    let mut tokens = Vec::with_capacity(n);
    let mut logprobs = Vec::with_capacity(n);
    let mut sampling = Vec::with_capacity(n);
    for p in steps {
        tokens.push(p.tokens);
        logprobs.push(p.logprobs);
        sampling.push(p.sampling_logprobs);
    }
    let tokens = Tensor::cat(tokens, 1)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))?;
    let logprobs = host_vec(Tensor::cat(logprobs, 1).into_data())?;
    let sampling = host_vec(Tensor::cat(sampling, 1).into_data())?;
    for (r, row) in rows.iter_mut().enumerate() {
        for t in r * n..(r + 1) * n {
            let token = u32::try_from(tokens[t])
                .map_err(|_| ModelError::Data(format!("picked token id {}", tokens[t])))?;
            row.tokens.push(token);
            row.logprobs.push(logprobs[t]);
            row.sampling_logprobs.push(sampling[t]);
            row.stopped |= stop_ids.contains(&token);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    /// The processed sampling distribution computed independently on the host (sort-based,
    /// f64): temperature, top-k keeping ties with the k-th value, renormalise, top-p.
    fn reference(row: &[f32], p: &SamplingParams) -> Vec<f64> {
        let scaled: Vec<f32> = row.iter().map(|&x| x / p.temperature).collect();
        let mut q: Vec<f64> = log_softmax_row(&scaled).iter().map(|l| l.exp()).collect();
        let mut sorted = q.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if p.top_k > 0 && p.top_k < q.len() {
            let kth = sorted[p.top_k - 1];
            q.iter_mut().filter(|x| **x < kth).for_each(|x| *x = 0.0);
        }
        let z: f64 = q.iter().sum();
        q.iter_mut().for_each(|x| *x /= z);
        if p.top_p < 1.0 {
            let mut sorted = q.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let mut cum = 0.0;
            let mut cut = sorted[0];
            for &x in &sorted {
                cum += x;
                cut = x;
                if cum >= p.top_p as f64 {
                    break;
                }
            }
            q.iter_mut().filter(|x| **x < cut).for_each(|x| *x = 0.0);
            let z: f64 = q.iter().sum();
            q.iter_mut().for_each(|x| *x /= z);
        }
        q
    }

    /// Picks from `rows` (each of the same length) with one uniform per row.
    fn pick_rows(rows: &[Vec<f32>], p: &SamplingParams, u: &[f32]) -> Vec<(u32, f32, f32)> {
        let device = Default::default();
        let (b, v) = (rows.len(), rows[0].len());
        let logits = Tensor::<Cpu, 2>::from_data(TensorData::new(rows.concat(), [b, v]), &device);
        let u = Tensor::<Cpu, 2>::from_data(TensorData::new(u.to_vec(), [b, 1]), &device);
        let picked = pick(logits, p, Some(u));
        let mut rows = vec![RowSoFar::default(); b];
        read_back(vec![picked], &mut rows, &[]).expect("read back");
        rows.iter()
            .map(|r| (r.tokens[0], r.logprobs[0], r.sampling_logprobs[0]))
            .collect()
    }

    /// The even grid of `n` uniforms.
    fn grid(n: usize) -> Vec<f32> {
        (0..n).map(|j| (j as f32 + 0.5) / n as f32).collect()
    }

    /// How often each token is picked, by the device picker and by the host picker, when `u`
    /// runs over an even grid of `n` points: the inverse CDF turns that into the distribution's
    /// exact quantiles. Asserts both pickers choose the same token for every `u`.
    fn grid_counts(row: &[f32], p: &SamplingParams, n: usize) -> Vec<usize> {
        let u = grid(n);
        let on_device = pick_rows(&vec![row.to_vec(); n], p, &u);
        let mut counts = vec![0; row.len()];
        for (j, &(t, lp, slp)) in on_device.iter().enumerate() {
            let (ht, hlp, hslp) = pick_row(row, p, u[j]);
            assert_eq!(
                t, ht,
                "device and host pickers differ at u = {} ({p:?})",
                u[j]
            );
            assert!(
                (lp - hlp).abs() < 1e-5 && (slp - hslp).abs() < 1e-5,
                "{lp} {hlp} {slp} {hslp}"
            );
            counts[t as usize] += 1;
        }
        counts
    }

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_picks_first_maximum() {
        let row = vec![1.0, 3.0, 3.0, -1.0];
        let (t, lp, slp) = pick_rows(std::slice::from_ref(&row), &params(0.0, 0, 1.0), &[0.3])[0];
        assert_eq!(t, 1);
        assert!((lp as f64 - log_softmax_row(&row)[1]).abs() < 1e-6);
        assert_eq!(slp, 0.0);
    }

    #[test]
    fn top_k_one_is_greedy_and_ties_with_the_kth_are_kept() {
        let row = vec![0.0, 2.0, 1.0, -3.0];
        let counts = grid_counts(&row, &params(1.0, 1, 1.0), 50);
        assert_eq!(counts, vec![0, 50, 0, 0]);
        let (_, _, slp) = pick_rows(std::slice::from_ref(&row), &params(1.0, 1, 1.0), &[0.9])[0];
        assert_eq!(slp, 0.0);
        // Three tokens tie for the 2nd place: top_k 2 keeps all four of the top values' tokens.
        let counts = grid_counts(&[1.0, 2.0, 1.0, 1.0, 0.0], &params(1.0, 2, 1.0), 400);
        assert!(
            counts[..4].iter().all(|&c| c > 0) && counts[4] == 0,
            "{counts:?}"
        );
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_the_mass() {
        // p ≈ [0.087, 0.644, 0.237, 0.032]: top_p 0.8 keeps exactly {1, 2}.
        let row = [0.0, 2.0, 1.0, -1.0];
        let counts = grid_counts(&row, &params(1.0, 0, 0.8), 1000);
        let q = reference(&row, &params(1.0, 0, 0.8));
        assert_eq!((counts[0], counts[3]), (0, 0), "{counts:?}");
        for i in [1, 2] {
            assert!(
                (counts[i] as f64 - 1000.0 * q[i]).abs() <= 1.0,
                "{counts:?} {q:?}"
            );
        }
        // The most likely token alone reaches 0.6: only it is kept.
        assert_eq!(
            grid_counts(&row, &params(1.0, 0, 0.6), 20),
            vec![0, 20, 0, 0]
        );
    }

    #[test]
    fn picks_follow_the_processed_distribution_exactly() {
        // Random rows and settings; with an even grid of u the counts are the exact quantiles of
        // the processed distribution, and each pick's log-probs are the policy's and the
        // processed distribution's.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let n = 2000;
        for case in 0..24 {
            let v = 3 + case % 9;
            let row: Vec<f32> = (0..v).map(|_| rng.random_range(-3.0..3.0)).collect();
            let p = params(
                [1.0, 0.7, 1.6][case % 3],
                [0, 0, 2, 5][case % 4],
                [1.0, 0.9, 0.5][case % 3 / 2 + case % 2],
            );
            let q = reference(&row, &p);
            let counts = grid_counts(&row, &p, n);
            for (i, (&c, &qi)) in counts.iter().zip(&q).enumerate() {
                assert!(
                    (c as f64 - n as f64 * qi).abs() <= 1.0,
                    "case {case} token {i}: {c} picks for q = {qi} ({p:?}, {row:?})"
                );
            }
            let policy = log_softmax_row(&row);
            for (t, lp, slp) in pick_rows(&vec![row.clone(); 8], &p, &grid(8)) {
                let t = t as usize;
                assert!((lp as f64 - policy[t]).abs() < 1e-5, "case {case}");
                assert!((slp as f64 - q[t].ln()).abs() < 1e-5, "case {case}");
            }
        }
    }

    #[test]
    fn blocked_prefix_sums_match_sequential_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let device = Default::default();
        // Below, at and past one block, several blocks with and without a partial last one.
        for v in [1, 127, 128, 129, 300, 3 * 128, 5000] {
            let b = 3;
            let data: Vec<f32> = (0..b * v).map(|_| rng.random_range(0.0..1.0)).collect();
            let x = Tensor::<Cpu, 2>::from_data(TensorData::new(data.clone(), [b, v]), &device);
            let got = prefix_sums(x);
            assert_eq!(got.dims(), [b, v]);
            let got = got.into_data().to_vec::<f32>().expect("f32");
            for r in 0..b {
                let mut acc = 0.0f64;
                for i in 0..v {
                    acc += data[r * v + i] as f64;
                    let g = got[r * v + i] as f64;
                    assert!(
                        (g - acc).abs() <= 1e-6 * acc.max(1.0),
                        "v {v} row {r} index {i}: {g} vs {acc}"
                    );
                }
            }
        }
    }

    #[test]
    fn picks_over_a_vocabulary_of_many_blocks_agree_with_the_host() {
        // The inverse CDF over blocked prefix sums: the same token as the host's sequential f64
        // walk for every u of a grid, with and without truncation.
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let row: Vec<f32> = (0..3001).map(|_| rng.random_range(-4.0..4.0)).collect();
        for p in [params(1.0, 0, 1.0), params(0.8, 200, 0.9)] {
            let counts = grid_counts(&row, &p, 600);
            assert!(counts.iter().filter(|&&c| c > 0).count() > 100, "{p:?}");
        }
    }

    #[test]
    fn host_picker_handles_a_large_nucleus_and_non_finite_rows() {
        // 3000 near-equal tokens: top_p 0.9 needs ~2700 of them (several selection rounds).
        let row: Vec<f32> = (0..3000).map(|i| (i % 7) as f32 * 1e-3).collect();
        let p = params(1.0, 0, 0.9);
        let q = reference(&row, &p);
        let kept = q.iter().filter(|&&x| x > 0.0).count();
        assert!(kept > 2000, "{kept}");
        for u in grid(50) {
            let (t, _, slp) = pick_row(&row, &p, u);
            assert!(q[t as usize] > 0.0);
            assert!((slp as f64 - q[t as usize].ln()).abs() < 1e-6);
        }
        let (_, lp, slp) = pick_row(&[f32::NAN, 1.0], &params(1.0, 0, 1.0), 0.5);
        assert!(lp.is_nan() && slp.is_nan());
    }

    #[test]
    fn rows_of_one_batch_pick_independently() {
        let rows = vec![
            vec![0.0, 5.0, 0.0],
            vec![5.0, 0.0, 0.0],
            vec![0.0, 0.0, 5.0],
        ];
        let picks = pick_rows(&rows, &params(1.0, 1, 1.0), &[0.99, 0.01, 0.5]);
        let tokens: Vec<u32> = picks.iter().map(|p| p.0).collect();
        assert_eq!(tokens, vec![1, 0, 2]);
    }

    #[test]
    fn non_finite_log_probs_are_an_error_naming_row_and_step() {
        let row = RowSoFar {
            tokens: vec![3, 4],
            logprobs: vec![-1.0, f32::NAN],
            sampling_logprobs: vec![-1.0, -1.0],
            stopped: false,
        };
        let err = row
            .finish(5, &[1], &[])
            .expect_err("NaN log-prob")
            .to_string();
        assert!(err.contains("row 5") && err.contains("step 1"), "{err}");
        // Tokens after the first stop id are dropped, with their log-probs.
        let row = RowSoFar {
            tokens: vec![3, 9, 4],
            logprobs: vec![-1.0, -2.0, f32::NAN],
            sampling_logprobs: vec![0.0; 3],
            stopped: true,
        };
        let c = row.finish(0, &[1], &[9]).expect("finite row");
        assert_eq!(
            (c.completion_ids, c.finish_reason),
            (vec![3, 9], FinishReason::Stop)
        );
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
