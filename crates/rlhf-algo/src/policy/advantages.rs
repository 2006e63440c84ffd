//! Advantage estimators on the host (pure functions, no tensors): GAE for PPO and the
//! critic-free group/batch baselines of GRPO, Dr. GRPO, RLOO and REINFORCE++.
//!
//! Token-level inputs are flat row-major `[batch, len]` slices with a 0/1 mask, so sequences of
//! different lengths share one padded layout. Non-finite inputs are rejected, never zeroed.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};
use crate::ops::{check_finite_host, check_range, from_host, mask_host, to_host};

/// GAE's γ (TRL `PPOConfig.gamma`: 1.0 for language, where the episode is one response).
pub const DEFAULT_GAMMA: f64 = 1.0;
/// GAE's λ (TRL `PPOConfig.lam`: 0.95).
pub const DEFAULT_LAMBDA: f64 = 0.95;
/// GRPO's std epsilon (TRL: `(r − mean) / (std + 1e-4)`).
pub const DEFAULT_GRPO_STD_EPS: f64 = 1e-4;

/// Discount and trace parameters of [`gae`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaeConfig {
    /// Discount γ in `[0, 1]`.
    pub gamma: f64,
    /// Trace decay λ in `[0, 1]`.
    pub lambda: f64,
}

impl Default for GaeConfig {
    fn default() -> Self {
        Self {
            gamma: DEFAULT_GAMMA,
            lambda: DEFAULT_LAMBDA,
        }
    }
}

impl GaeConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_range("gae.gamma", self.gamma, 0.0, 1.0, true, true)?;
        check_range("gae.lambda", self.lambda, 0.0, 1.0, true, true)
    }
}

/// Advantages and returns of [`gae`], flat `[batch, len]`, zero on masked positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Gae {
    /// `Â_t`.
    pub advantages: Vec<f32>,
    /// `Â_t + V_t` (the value targets).
    pub returns: Vec<f32>,
}

fn check_layout(input: &'static str, values: &[f32], mask: &[f32], len: usize) -> Result<usize> {
    if len == 0 || !mask.len().is_multiple_of(len) || values.len() != mask.len() {
        return Err(AlgoError::Shape {
            input,
            expected: vec![mask.len()],
            got: vec![values.len()],
        });
    }
    check_finite_host(input, values)?;
    Ok(mask.len() / len)
}

fn check_mask(mask: &[f32]) -> Result<()> {
    check_finite_host("mask", mask)?;
    match mask.iter().position(|&m| m != 0.0 && m != 1.0) {
        None => Ok(()),
        Some(i) => Err(AlgoError::invalid(
            "mask",
            format!("entries must be 0 or 1, found {} at {i}", mask[i]),
        )),
    }
}

/// Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
/// Using Generalized Advantage Estimation", eq. 16), backwards over the valid tokens of each
/// row: `δ_t = r_t + γ·V_{t'} − V_t`, `Â_t = δ_t + γλ·Â_{t'}`, where `t'` is the next valid
/// token and `V = 0` after the last one (the response ended). Masked positions are skipped
/// (neither read nor written), so a mask with holes works too.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    mask: &[f32],
    len: usize,
    config: &GaeConfig,
) -> Result<Gae> {
    config.validate()?;
    check_mask(mask)?;
    let rows = check_layout("rewards", rewards, mask, len)?;
    check_layout("values", values, mask, len)?;
    let (gamma, lambda) = (config.gamma, config.lambda);
    let mut advantages = vec![0.0f32; mask.len()];
    let mut returns = vec![0.0f32; mask.len()];
    for b in 0..rows {
        let (mut next_value, mut next_adv) = (0.0f64, 0.0f64);
        for t in (0..len).rev() {
            let i = b * len + t;
            if mask[i] == 0.0 {
                continue;
            }
            let v = f64::from(values[i]);
            let delta = f64::from(rewards[i]) + gamma * next_value - v;
            next_adv = delta + gamma * lambda * next_adv;
            next_value = v;
            advantages[i] = next_adv as f32;
            returns[i] = (next_adv + v) as f32;
        }
    }
    Ok(Gae {
        advantages,
        returns,
    })
}

/// [`gae`] on `[batch, T]` tensors (read back to the host); returns `(advantages, returns)`.
pub fn gae_tensors<B: Backend>(
    rewards: &Tensor<B, 2>,
    values: &Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    config: &GaeConfig,
) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
    let dims = rewards.dims();
    crate::ops::expect_dims("values", values, dims)?;
    crate::ops::expect_dims("mask", mask, dims)?;
    let out = gae(
        &to_host(rewards)?,
        &to_host(values)?,
        &mask_host("mask", mask)?,
        dims[1],
        config,
    )?;
    let device = rewards.device();
    Ok((
        from_host(out.advantages, dims, &device),
        from_host(out.returns, dims, &device),
    ))
}

fn groups(
    rewards: &[f32],
    group_size: usize,
    min_size: usize,
) -> Result<std::slice::Chunks<'_, f32>> {
    if group_size < min_size {
        return Err(AlgoError::invalid(
            "group_size",
            format!("must be at least {min_size}, got {group_size}"),
        ));
    }
    if rewards.is_empty() || !rewards.len().is_multiple_of(group_size) {
        return Err(AlgoError::invalid(
            "rewards",
            format!(
                "{} rewards do not split into groups of {group_size}",
                rewards.len()
            ),
        ));
    }
    check_finite_host("rewards", rewards)?;
    Ok(rewards.chunks(group_size))
}

fn mean(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64
}

/// GRPO's group-normalised advantages (Shao et al. 2024, "DeepSeekMath", §4.1.2):
/// `A_i = (r_i − mean(r)) / (std(r) + eps)` within each group of `group_size` consecutive
/// rewards; `std` is the unbiased sample standard deviation (as `torch.std`, which TRL uses).
pub fn grpo_advantages(rewards: &[f32], group_size: usize, eps: f64) -> Result<Vec<f32>> {
    crate::ops::check_positive("grpo.std_eps", eps)?;
    let mut out = Vec::with_capacity(rewards.len());
    for g in groups(rewards, group_size, 2)? {
        let m = mean(g);
        let var = g.iter().map(|&r| (f64::from(r) - m).powi(2)).sum::<f64>() / (g.len() - 1) as f64;
        let denom = var.sqrt() + eps;
        out.extend(g.iter().map(|&r| ((f64::from(r) - m) / denom) as f32));
    }
    Ok(out)
}

/// Dr. GRPO's advantages (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
/// Perspective"): `A_i = r_i − mean(r)` within each group, no std normalisation.
pub fn dr_grpo_advantages(rewards: &[f32], group_size: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in groups(rewards, group_size, 1)? {
        let m = mean(g);
        out.extend(g.iter().map(|&r| (f64::from(r) - m) as f32));
    }
    Ok(out)
}

/// RLOO's leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics: Revisiting
/// REINFORCE-Style Optimization for Learning from Human Feedback in LLMs"):
/// `A_i = r_i − (1/(k−1))·Σ_{j≠i} r_j` within each group of `k ≥ 2`.
pub fn rloo_advantages(rewards: &[f32], group_size: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in groups(rewards, group_size, 2)? {
        let sum: f64 = g.iter().map(|&r| f64::from(r)).sum();
        let k = g.len() as f64;
        out.extend(
            g.iter()
                .map(|&r| (f64::from(r) - (sum - f64::from(r)) / (k - 1.0)) as f32),
        );
    }
    Ok(out)
}

/// Token-level returns and batch-normalised advantages of [`reinforce_pp_advantages`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReturnsAndAdvantages {
    /// Returns-to-go `G_t`, flat `[batch, len]`, zero on masked positions.
    pub returns: Vec<f32>,
    /// `(G_t − mean) / (std + 1e-8)` over all valid tokens of the batch; zero on masked positions.
    pub advantages: Vec<f32>,
}

/// REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
/// Language Models"): token rewards `r_t = −β·kl_t`, plus the sequence score on the last
/// valid token; returns `G_t = Σ_{s≥t} γ^{s−t} r_s` over valid tokens; advantages normalised
/// over every valid token of the global batch (population std, `eps = 1e-8`).
///
/// `kl` is the per-token `log π_old − log π_ref` (k1) of the sampled tokens.
pub fn reinforce_pp_advantages(
    scores: &[f32],
    kl: &[f32],
    mask: &[f32],
    len: usize,
    kl_coef: f64,
    gamma: f64,
) -> Result<ReturnsAndAdvantages> {
    crate::ops::check_non_negative("reinforce_pp.kl_coef", kl_coef)?;
    check_range("reinforce_pp.gamma", gamma, 0.0, 1.0, true, true)?;
    check_mask(mask)?;
    let rows = check_layout("kl", kl, mask, len)?;
    check_finite_host("scores", scores)?;
    if scores.len() != rows {
        return Err(AlgoError::Shape {
            input: "scores",
            expected: vec![rows],
            got: vec![scores.len()],
        });
    }
    let mut returns = vec![0.0f32; mask.len()];
    let mut valid = Vec::new();
    for (b, &score) in scores.iter().enumerate() {
        let row = b * len..(b + 1) * len;
        let Some(last) = mask[row.clone()].iter().rposition(|&m| m > 0.0) else {
            return Err(AlgoError::invalid(
                "mask",
                format!("sequence {b} has no valid token"),
            ));
        };
        let mut running = 0.0f64;
        for t in (0..len).rev() {
            let i = b * len + t;
            if mask[i] == 0.0 {
                continue;
            }
            let mut r = -kl_coef * f64::from(kl[i]);
            if t == last {
                r += f64::from(score);
            }
            running = r + gamma * running;
            returns[i] = running as f32;
        }
        valid.extend(row.filter(|&i| mask[i] > 0.0));
    }
    let n = valid.len() as f64;
    let mu = valid.iter().map(|&i| f64::from(returns[i])).sum::<f64>() / n;
    let var = valid
        .iter()
        .map(|&i| (f64::from(returns[i]) - mu).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt() + 1e-8;
    let mut advantages = vec![0.0f32; mask.len()];
    for &i in &valid {
        advantages[i] = ((f64::from(returns[i]) - mu) / sd) as f32;
    }
    Ok(ReturnsAndAdvantages {
        returns,
        advantages,
    })
}
