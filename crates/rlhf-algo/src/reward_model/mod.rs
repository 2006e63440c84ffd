//! Reward-model objectives: Bradley–Terry with an optional margin, ArmoRM-style multi-objective
//! regression with a gated scalar, and Lagrangian combination of several reward models under
//! constraints.

mod constrained;
#[cfg(test)]
mod tests;

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, softmax};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};
use crate::ops::{
    check_positive, checked_loss, expect_dims, expect_non_empty, finite_host, host_mean, mask_host,
};
use crate::output::{LossOutput, RewardStats};

pub use constrained::{ConstrainedRewards, Constraint, ConstraintKind};

/// Reward-model scores of preference pairs (`[batch]` each).
#[derive(Debug, Clone)]
pub struct RewardPairBatch<B: Backend> {
    /// `r(x, y_c)` (differentiable).
    pub chosen: Tensor<B, 1>,
    /// `r(x, y_r)` (differentiable).
    pub rejected: Tensor<B, 1>,
    /// Per-pair margin `m ≥ 0` (Llama 2: larger for clearer preferences); `None` means 0.
    pub margin: Option<Tensor<B, 1>>,
}

/// Per-objective ratings for multi-objective regression (`[batch, k]` each).
#[derive(Debug, Clone)]
pub struct RatingBatch<B: Backend> {
    /// Predicted ratings (differentiable).
    pub predicted: Tensor<B, 2>,
    /// Target ratings (padding entries must be finite, e.g. 0).
    pub target: Tensor<B, 2>,
    /// 1 where a rating exists, 0 where it is missing (ArmoRM's datasets rate few objectives).
    pub mask: Tensor<B, 2>,
}

/// Config of [`bradley_terry_loss`] (`name = "bradley_terry"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BradleyTerryConfig {
    /// Scale β (> 0) on the reward difference (1 for a plain RM; ArmoRM's gating stage scales).
    pub beta: f64,
}

impl Default for BradleyTerryConfig {
    fn default() -> Self {
        Self { beta: 1.0 }
    }
}

impl BradleyTerryConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("bradley_terry.beta", self.beta)
    }
}

/// Bradley–Terry reward-model loss (Ouyang et al. 2022, eq. 1; with the margin of Touvron et
/// al. 2023, "Llama 2", eq. 2): `L = −log σ(β·(r_c − r_r) − m)`, averaged over pairs.
pub fn bradley_terry_loss<B: Backend>(
    batch: &RewardPairBatch<B>,
    config: &BradleyTerryConfig,
) -> Result<LossOutput<B, RewardStats>> {
    config.validate()?;
    let n = batch.chosen.dims()[0];
    expect_non_empty("chosen", n)?;
    expect_dims("rejected", &batch.rejected, [n])?;
    let c = finite_host("chosen", &batch.chosen)?;
    let r = finite_host("rejected", &batch.rejected)?;
    let mut z = (batch.chosen.clone() - batch.rejected.clone()) * config.beta;
    if let Some(m) = &batch.margin {
        expect_dims("margin", m, [n])?;
        finite_host("margin", m)?;
        z = z - m.clone();
    }
    let loss = log_sigmoid(z).neg().mean();
    let value = checked_loss("bradley_terry", &loss)?;
    let diffs: Vec<f32> = c.iter().zip(&r).map(|(c, r)| c - r).collect();
    let wins: Vec<f32> = diffs
        .iter()
        .map(|&d| f32::from(u8::from(d > 0.0)))
        .collect();
    Ok(LossOutput {
        loss,
        stats: RewardStats {
            loss: value,
            accuracy: host_mean(&wins),
            margin: host_mean(&diffs),
        },
    })
}

/// ArmoRM stage 1 (Wang et al. 2024, "Interpretable Preferences via Multi-Objective Reward
/// Modeling and Mixture-of-Experts"): regression of per-objective ratings with missing labels
/// masked out, `L = Σ_{b,k} m_bk·(ŷ_bk − y_bk)² / Σ m` (mean squared error over present ratings;
/// the paper fits this stage by ridge regression on frozen features).
pub fn multi_objective_regression_loss<B: Backend>(
    batch: &RatingBatch<B>,
) -> Result<LossOutput<B, RewardStats>> {
    let dims = batch.predicted.dims();
    expect_non_empty("predicted", dims[0] * dims[1])?;
    expect_dims("target", &batch.target, dims)?;
    expect_dims("mask", &batch.mask, dims)?;
    finite_host("predicted", &batch.predicted)?;
    finite_host("target", &batch.target)?;
    let m = mask_host("mask", &batch.mask)?;
    if !m.iter().any(|&v| v > 0.0) {
        return Err(AlgoError::invalid("mask", "no rating present in the batch"));
    }
    let err = (batch.predicted.clone() - batch.target.clone()).powi_scalar(2);
    let loss = crate::ops::masked_mean(err, batch.mask.clone());
    let value = checked_loss("armo_regression", &loss)?;
    Ok(LossOutput {
        loss,
        stats: RewardStats {
            loss: value,
            accuracy: 0.0,
            margin: 0.0,
        },
    })
}

/// ArmoRM stage 2's gated scalar: `score = Σ_k softmax(g)_k · r_k` for per-objective rewards
/// `r` `[batch, k]` and gating logits `g` `[batch, k]`; returns `[batch]`. Train the gate with
/// [`bradley_terry_loss`] on the scores of chosen and rejected responses (with its `beta`).
pub fn gated_reward<B: Backend>(
    rewards: Tensor<B, 2>,
    gate_logits: Tensor<B, 2>,
) -> Result<Tensor<B, 1>> {
    let dims = rewards.dims();
    expect_non_empty("rewards", dims[0] * dims[1])?;
    expect_dims("gate_logits", &gate_logits, dims)?;
    finite_host("rewards", &rewards)?;
    finite_host("gate_logits", &gate_logits)?;
    Ok((softmax(gate_logits, 1) * rewards)
        .sum_dim(1)
        .reshape([dims[0]]))
}
