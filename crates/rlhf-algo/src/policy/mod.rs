//! Policy-gradient objectives over per-token log-probs `[batch, T]` with a float 0/1 mask:
//!
//! - [`terms`]: the building blocks (clipped surrogate, clipped value loss, entropy, per-token
//!   KL estimators, truncated importance weights);
//! - [`advantages`]: GAE, GRPO / Dr. GRPO / RLOO / REINFORCE++ advantages (host, pure);
//! - [`kl_control`]: fixed and adaptive KL coefficients;
//! - [`objectives`]: PPO, GRPO, Dr. GRPO, RLOO and REINFORCE++ as complete losses.

pub mod advantages;
pub mod kl_control;
pub mod objectives;
pub mod terms;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_host;
#[cfg(test)]
mod tests_terms;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::{AlgoError, Result};
use crate::ops::{expect_dims, expect_non_empty, finite_host, mask_host};

pub use advantages::{
    Gae, GaeConfig, ReturnsAndAdvantages, dr_grpo_advantages, gae, gae_tensors, grpo_advantages,
    reinforce_pp_advantages, rloo_advantages,
};
pub use kl_control::{AdaptiveKlController, KlControl, KlController};
pub use objectives::{
    DrGrpoConfig, GroupBatch, GrpoConfig, PpoConfig, ReinforcePpConfig, RlooConfig, RolloutBatch,
    SppoConfig, ValueBatch, dr_grpo_loss, grpo_loss, ppo_loss, reinforce_pp_loss, rloo_loss,
    sppo_loss,
};
pub use terms::{
    ImportanceStats, KlEstimator, SurrogateConfig, clipped_surrogate, clipped_value_loss,
    entropy_from_logits, kl_estimate, truncated_importance_weights,
};

/// Per-token log-probs of a batch of sampled responses, `[batch, T]` each.
///
/// Padding positions must hold finite values (e.g. 0) and a 0 in `mask`.
#[derive(Debug, Clone)]
pub struct TokenBatch<B: Backend> {
    /// `log π_θ(y_t | x, y_<t)` under the policy being trained (differentiable).
    pub logp: Tensor<B, 2>,
    /// `log π_old` of the policy at the start of this update (the PPO ratio's denominator).
    /// `None` means on-policy: `logp.detach()` (ratio 1, plain policy gradient).
    pub old_logp: Option<Tensor<B, 2>>,
    /// `log π_ref`, for a KL penalty in the loss (GRPO) or in the reward (REINFORCE++).
    pub reference_logp: Option<Tensor<B, 2>>,
    /// `log μ` of the possibly stale policy version that sampled the tokens (async mode);
    /// when present the loss is reweighted by truncated `π_old/μ` (see `importance_cap`).
    pub behaviour_logp: Option<Tensor<B, 2>>,
    /// Per-token entropies of the policy (from [`entropy_from_logits`]), for an entropy bonus.
    pub entropy: Option<Tensor<B, 2>>,
    /// 1 for response tokens that count, 0 for prompt and padding.
    pub mask: Tensor<B, 2>,
}

impl<B: Backend> TokenBatch<B> {
    /// On-policy batch: only the current log-probs and the mask.
    pub fn new(logp: Tensor<B, 2>, mask: Tensor<B, 2>) -> Self {
        Self {
            logp,
            old_logp: None,
            reference_logp: None,
            behaviour_logp: None,
            entropy: None,
            mask,
        }
    }

    /// Adds `log π_old`.
    pub fn with_old(mut self, old_logp: Tensor<B, 2>) -> Self {
        self.old_logp = Some(old_logp);
        self
    }

    /// Adds `log π_ref`.
    pub fn with_reference(mut self, reference_logp: Tensor<B, 2>) -> Self {
        self.reference_logp = Some(reference_logp);
        self
    }

    /// Adds the behaviour policy's log-probs.
    pub fn with_behaviour(mut self, behaviour_logp: Tensor<B, 2>) -> Self {
        self.behaviour_logp = Some(behaviour_logp);
        self
    }

    /// Adds per-token entropies.
    pub fn with_entropy(mut self, entropy: Tensor<B, 2>) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// `[batch, T]`.
    pub fn dims(&self) -> [usize; 2] {
        self.logp.dims()
    }
}

/// Host copies of a checked [`TokenBatch`] (for statistics).
#[derive(Debug, Clone)]
pub(crate) struct HostTokens {
    pub dims: [usize; 2],
    pub logp: Vec<f32>,
    pub old: Vec<f32>,
    pub reference: Option<Vec<f32>>,
    pub entropy: Option<Vec<f32>>,
    pub mask: Vec<f32>,
}

impl HostTokens {
    /// Masked mean of host values.
    pub fn masked_mean(&self, values: impl Iterator<Item = f32>) -> f32 {
        let (mut sum, mut count) = (0.0f64, 0.0f64);
        for (v, &m) in values.zip(&self.mask) {
            if m > 0.0 {
                sum += f64::from(v);
                count += 1.0;
            }
        }
        if count > 0.0 {
            (sum / count) as f32
        } else {
            0.0
        }
    }
}

fn optional_2d<B: Backend>(
    input: &'static str,
    tensor: &Option<Tensor<B, 2>>,
    dims: [usize; 2],
) -> Result<Option<Vec<f32>>> {
    match tensor {
        Some(t) => {
            expect_dims(input, t, dims)?;
            Ok(Some(finite_host(input, t)?))
        }
        None => Ok(None),
    }
}

/// Checks shapes, finiteness and the mask (at least one valid token); returns host copies.
pub(crate) fn check_tokens<B: Backend>(batch: &TokenBatch<B>) -> Result<HostTokens> {
    let dims = batch.dims();
    expect_non_empty("logp", dims[0] * dims[1])?;
    let logp = finite_host("logp", &batch.logp)?;
    expect_dims("mask", &batch.mask, dims)?;
    let mask = mask_host("mask", &batch.mask)?;
    if !mask.iter().any(|&m| m > 0.0) {
        return Err(AlgoError::invalid("mask", "no valid token in the batch"));
    }
    let old = optional_2d("old_logp", &batch.old_logp, dims)?.unwrap_or_else(|| logp.clone());
    optional_2d("behaviour_logp", &batch.behaviour_logp, dims)?;
    Ok(HostTokens {
        dims,
        logp,
        old,
        reference: optional_2d("reference_logp", &batch.reference_logp, dims)?,
        entropy: optional_2d("entropy", &batch.entropy, dims)?,
        mask,
    })
}
