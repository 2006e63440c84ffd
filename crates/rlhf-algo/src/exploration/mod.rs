//! Online exploration and acceleration terms for iterative preference optimisation:
//! VPO's sign-modulated value regulariser, SELM's optimism term, APO's Nesterov extrapolation.

#[cfg(test)]
mod tests;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};
use crate::ops::{
    check_non_negative, check_positive, check_range, checked_loss, expect_dims, expect_non_empty,
    finite_host,
};
use crate::output::{LossOutput, PairStats};
use crate::pairwise::{DpoConfig, PairBatch, dpo_loss};

/// VPO's regulariser weight α. The paper tunes α per task; 0.1 is our default.
pub const DEFAULT_VPO_ALPHA: f64 = 0.1;
/// SELM's α (authors' `scripts/selm_trainer.py`: `alpha = 0.001`).
pub const DEFAULT_SELM_ALPHA: f64 = 0.001;
/// APO's extrapolation weight α. Our default; He et al. 2024 study several values.
pub const DEFAULT_APO_ALPHA: f64 = 0.3;

/// Whether VPO is optimistic (online: explore) or pessimistic (offline: stay on the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VpoMode {
    /// Optimism (sign +1): pushes the likelihood of calibration samples down.
    #[default]
    Online,
    /// Pessimism (sign −1): pulls the likelihood of calibration samples up.
    Offline,
}

/// Config of [`vpo_loss`] (`name = "vpo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpoConfig {
    /// DPO's β (> 0).
    pub beta: f64,
    /// Regulariser weight α (≥ 0).
    pub alpha: f64,
    /// Optimism (online) or pessimism (offline).
    pub mode: VpoMode,
}

impl Default for VpoConfig {
    fn default() -> Self {
        Self {
            beta: DpoConfig::default().beta,
            alpha: DEFAULT_VPO_ALPHA,
            mode: VpoMode::Online,
        }
    }
}

impl VpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("vpo.beta", self.beta)?;
        check_non_negative("vpo.alpha", self.alpha)
    }
}

/// Config of [`selm_loss`] (`name = "selm"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelmConfig {
    /// DPO's β (> 0); the authors' trainer defaults to 0.1 (their recipes use 0.01).
    pub beta: f64,
    /// Optimism weight α (≥ 0).
    pub alpha: f64,
}

impl Default for SelmConfig {
    fn default() -> Self {
        Self {
            beta: DpoConfig::default().beta,
            alpha: DEFAULT_SELM_ALPHA,
        }
    }
}

impl SelmConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("selm.beta", self.beta)?;
        check_non_negative("selm.alpha", self.alpha)
    }
}

/// `mean(log π(y) − log π_ref(y))` over the calibration samples, or over the pair's chosen and
/// rejected responses when the batch carries none.
fn calibration_log_ratio<B: Backend>(
    objective: &'static str,
    batch: &PairBatch<B>,
) -> Result<Tensor<B, 1>> {
    match &batch.calibration {
        Some(cal) => {
            let m = cal.policy.dims()[0];
            expect_non_empty("calibration.policy", m)?;
            expect_dims("calibration.reference", &cal.reference, [m])?;
            finite_host("calibration.policy", &cal.policy)?;
            finite_host("calibration.reference", &cal.reference)?;
            Ok((cal.policy.clone() - cal.reference.clone()).mean())
        }
        None => {
            let (Some(rc), Some(rr)) = (&batch.reference_chosen, &batch.reference_rejected) else {
                return Err(AlgoError::MissingInput {
                    objective,
                    input: "reference_chosen",
                });
            };
            let policy = Tensor::cat(
                vec![batch.policy_chosen.clone(), batch.policy_rejected.clone()],
                0,
            );
            let reference = Tensor::cat(vec![rc.clone(), rr.clone()], 0);
            Ok((policy - reference).mean())
        }
    }
}

/// DPO plus `coef·mean(log π(y_cal) − log π_ref(y_cal))`, with the regulariser in the stats.
fn dpo_plus_value<B: Backend>(
    objective: &'static str,
    batch: &PairBatch<B>,
    beta: f64,
    coef: f64,
) -> Result<LossOutput<B, PairStats>> {
    let dpo = dpo_loss(batch, &DpoConfig { beta })?;
    let reg = calibration_log_ratio(objective, batch)? * coef;
    let reg_value = checked_loss(objective, &reg)?;
    let loss = dpo.loss + reg;
    let value = checked_loss(objective, &loss)?;
    let mut stats = dpo.stats;
    stats.loss = value;
    stats.regulariser = Some(reg_value);
    Ok(LossOutput { loss, stats })
}

/// VPO (Cen et al. 2024, "Value-Incentivized Preference Optimization: A Unified Approach to
/// Online and Offline RLHF"). The MLE reward objective is regularised by the optimal value
/// `J*(r)`, with `sign = +1` online (optimism) and `−1` offline (pessimism). Under the DPO
/// reparameterisation with the reward calibrated so that `E_{y~π_cal}[r] = 0`,
/// `J*(r) = −β·E_{x, y~π_cal}[log π(y|x)/π_ref(y|x)]`, which gives
///
/// `L = −log σ(β·h) + sign·α·β·mean_{y~π_cal}(log π(y|x) − log π_ref(y|x))`.
///
/// `π_cal` samples come from `batch.calibration`; without them the pair's own responses
/// (sampled from the current policy in online iterative DPO) are used.
pub fn vpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &VpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let sign = match config.mode {
        VpoMode::Online => 1.0,
        VpoMode::Offline => -1.0,
    };
    dpo_plus_value("vpo", batch, config.beta, sign * config.alpha * config.beta)
}

/// SELM (Zhang et al. 2024, "Self-Exploring Language Models: Active Preference Elicitation for
/// Online Alignment"; authors' `optimistic_dpo_loss`): DPO plus the optimism term
/// `α·β·mean_{y~π_ref}(log π(y|x) − log π_ref(y|x))` on responses sampled from the reference
/// (`batch.calibration`). This is VPO's online form with `π_cal = π_ref`.
pub fn selm_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &SelmConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    dpo_plus_value("selm", batch, config.beta, config.alpha * config.beta)
}

/// How the reference policy of iterative preference optimisation changes between iterations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReferenceUpdate {
    /// The reference stays the initial (SFT) model.
    #[default]
    Fixed,
    /// Iterative DPO: the reference becomes the last iterate `θ_t`.
    Iterate,
    /// APO (He et al. 2024, "Accelerated Preference Optimization for Large Language Model
    /// Alignment"): the reference becomes the Nesterov extrapolation
    /// `θ_t + α·(θ_t − θ_{t−1})`; see [`nesterov_extrapolate`].
    Apo {
        /// Extrapolation weight α in `[0, 1)`.
        #[serde(default = "default_apo_alpha")]
        alpha: f64,
    },
}

fn default_apo_alpha() -> f64 {
    DEFAULT_APO_ALPHA
}

impl ReferenceUpdate {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        match self {
            ReferenceUpdate::Apo { alpha } => {
                check_range("apo.alpha", *alpha, 0.0, 1.0, true, false)
            }
            _ => Ok(()),
        }
    }
}

/// APO's extrapolation on host parameters: `θ̂ = θ_t + α·(θ_t − θ_{t−1})` element-wise.
pub fn nesterov_extrapolate(current: &[f32], previous: &[f32], alpha: f64) -> Result<Vec<f32>> {
    check_range("apo.alpha", alpha, 0.0, 1.0, true, false)?;
    if current.len() != previous.len() {
        return Err(AlgoError::Shape {
            input: "previous",
            expected: vec![current.len()],
            got: vec![previous.len()],
        });
    }
    crate::ops::check_finite_host("current", current)?;
    crate::ops::check_finite_host("previous", previous)?;
    Ok(current
        .iter()
        .zip(previous)
        .map(|(&c, &p)| (f64::from(c) + alpha * (f64::from(c) - f64::from(p))) as f32)
        .collect())
}

/// APO's extrapolation on a parameter set (tensors matched by position, same shapes).
/// The results are detached: the extrapolated point is a new reference, not a graph node.
pub fn nesterov_extrapolate_tensors<B: Backend, const D: usize>(
    current: &[Tensor<B, D>],
    previous: &[Tensor<B, D>],
    alpha: f64,
) -> Result<Vec<Tensor<B, D>>> {
    check_range("apo.alpha", alpha, 0.0, 1.0, true, false)?;
    if current.len() != previous.len() {
        return Err(AlgoError::Shape {
            input: "previous",
            expected: vec![current.len()],
            got: vec![previous.len()],
        });
    }
    current
        .iter()
        .zip(previous)
        .map(|(c, p)| {
            expect_dims("previous", p, c.dims())?;
            finite_host("current", c)?;
            finite_host("previous", p)?;
            Ok((c.clone() + (c.clone() - p.clone()) * alpha).detach())
        })
        .collect()
}
