//! Pairwise preference objectives (the DPO family): inputs are per-sequence summed log-probs of
//! a chosen and a rejected response under the policy and (for most) a frozen reference.
//!
//! - [`losses`]: DPO, IPO, cDPO, rDPO, LN-DPO, SimPO, soft-label DPO, RPO.
//! - VPO and SELM (DPO plus an exploration term) live in [`crate::exploration`].
//!
//! All losses average over the pairs of the batch.

pub mod losses;
#[cfg(test)]
mod tests;

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;

use crate::error::{AlgoError, Result};
use crate::ops::{checked_loss, expect_dims, expect_non_empty, finite_host, host_mean};
use crate::output::{LossOutput, PairStats};

pub use losses::{
    CdpoConfig, DpoConfig, IpoConfig, LnDpoConfig, RdpoConfig, RpoConfig, SimpoConfig,
    SoftDpoConfig, cdpo_loss, dpo_loss, ipo_loss, ln_dpo_loss, rdpo_loss, rpo_loss, simpo_loss,
    soft_dpo_loss,
};

/// Log-probs of extra samples used by the exploration terms (VPO's `π_cal`, SELM's `y ~ π_ref`).
///
/// Its batch size may differ from the pair batch; the term averages over its own batch.
#[derive(Debug, Clone)]
pub struct CalibrationBatch<B: Backend> {
    /// Summed log-probs of the samples under the policy (differentiable), `[m]`.
    pub policy: Tensor<B, 1>,
    /// Summed log-probs of the same samples under the reference, `[m]`.
    pub reference: Tensor<B, 1>,
}

/// A batch of preference pairs, one entry per pair (`[batch]` each).
///
/// Log-probs are summed over the response tokens (`Σ_t log π(y_t | x, y_<t)`); token counts are
/// floats so they can be passed as tensors next to the log-probs.
#[derive(Debug, Clone)]
pub struct PairBatch<B: Backend> {
    /// `log π(y_c|x)` under the policy (differentiable).
    pub policy_chosen: Tensor<B, 1>,
    /// `log π(y_r|x)` under the policy (differentiable).
    pub policy_rejected: Tensor<B, 1>,
    /// `log π_ref(y_c|x)`; needed by every reference-based loss.
    pub reference_chosen: Option<Tensor<B, 1>>,
    /// `log π_ref(y_r|x)`.
    pub reference_rejected: Option<Tensor<B, 1>>,
    /// `|y_c|` (response tokens); needed by LN-DPO, SimPO and RPO.
    pub chosen_tokens: Option<Tensor<B, 1>>,
    /// `|y_r|`; needed by LN-DPO and SimPO.
    pub rejected_tokens: Option<Tensor<B, 1>>,
    /// Soft preference strength `p = P(y_c ≻ y_r)` in `[0, 1]`; needed by soft-label DPO.
    pub preference: Option<Tensor<B, 1>>,
    /// Extra samples for VPO / SELM.
    pub calibration: Option<CalibrationBatch<B>>,
}

impl<B: Backend> PairBatch<B> {
    /// A batch with policy log-probs only (enough for SimPO once token counts are added).
    pub fn new(policy_chosen: Tensor<B, 1>, policy_rejected: Tensor<B, 1>) -> Self {
        Self {
            policy_chosen,
            policy_rejected,
            reference_chosen: None,
            reference_rejected: None,
            chosen_tokens: None,
            rejected_tokens: None,
            preference: None,
            calibration: None,
        }
    }

    /// Adds the reference log-probs.
    pub fn with_reference(mut self, chosen: Tensor<B, 1>, rejected: Tensor<B, 1>) -> Self {
        self.reference_chosen = Some(chosen);
        self.reference_rejected = Some(rejected);
        self
    }

    /// Adds response token counts.
    pub fn with_token_counts(mut self, chosen: Tensor<B, 1>, rejected: Tensor<B, 1>) -> Self {
        self.chosen_tokens = Some(chosen);
        self.rejected_tokens = Some(rejected);
        self
    }

    /// Adds soft preference labels.
    pub fn with_preference(mut self, preference: Tensor<B, 1>) -> Self {
        self.preference = Some(preference);
        self
    }

    /// Adds calibration samples for VPO / SELM.
    pub fn with_calibration(mut self, policy: Tensor<B, 1>, reference: Tensor<B, 1>) -> Self {
        self.calibration = Some(CalibrationBatch { policy, reference });
        self
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.policy_chosen.dims()[0]
    }

    /// Whether the batch holds no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which optional inputs a loss needs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Needs {
    pub reference: bool,
    pub tokens: bool,
    pub preference: bool,
}

/// Host copies of the checked inputs (used for statistics, never for gradients).
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub policy_chosen: Vec<f32>,
    pub policy_rejected: Vec<f32>,
    pub reference_chosen: Vec<f32>,
    pub reference_rejected: Vec<f32>,
    pub chosen_tokens: Vec<f32>,
    pub rejected_tokens: Vec<f32>,
}

pub(crate) fn required<'a, B: Backend>(
    objective: &'static str,
    input: &'static str,
    tensor: &'a Option<Tensor<B, 1>>,
) -> Result<&'a Tensor<B, 1>> {
    tensor
        .as_ref()
        .ok_or(AlgoError::MissingInput { objective, input })
}

pub(crate) fn checked_1d<B: Backend>(
    input: &'static str,
    t: &Tensor<B, 1>,
    n: usize,
) -> Result<Vec<f32>> {
    expect_dims(input, t, [n])?;
    finite_host(input, t)
}

pub(crate) fn positive_counts(input: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|&v| v <= 0.0) {
        None => Ok(()),
        Some(i) => Err(AlgoError::invalid(
            input,
            format!("token counts must be positive, found {} at {i}", values[i]),
        )),
    }
}

/// Checks shapes, finiteness and ranges of what `needs` asks for; returns host copies.
pub(crate) fn check<B: Backend>(
    objective: &'static str,
    batch: &PairBatch<B>,
    needs: Needs,
) -> Result<Checked> {
    let n = batch.len();
    expect_non_empty("policy_chosen", n)?;
    let mut out = Checked {
        policy_chosen: checked_1d("policy_chosen", &batch.policy_chosen, n)?,
        policy_rejected: checked_1d("policy_rejected", &batch.policy_rejected, n)?,
        reference_chosen: vec![0.0; n],
        reference_rejected: vec![0.0; n],
        chosen_tokens: vec![1.0; n],
        rejected_tokens: vec![1.0; n],
    };
    if needs.reference {
        let rc = required(objective, "reference_chosen", &batch.reference_chosen)?;
        let rr = required(objective, "reference_rejected", &batch.reference_rejected)?;
        out.reference_chosen = checked_1d("reference_chosen", rc, n)?;
        out.reference_rejected = checked_1d("reference_rejected", rr, n)?;
    }
    if needs.tokens {
        let nc = required(objective, "chosen_tokens", &batch.chosen_tokens)?;
        let nr = required(objective, "rejected_tokens", &batch.rejected_tokens)?;
        out.chosen_tokens = checked_1d("chosen_tokens", nc, n)?;
        out.rejected_tokens = checked_1d("rejected_tokens", nr, n)?;
        positive_counts("chosen_tokens", &out.chosen_tokens)?;
        positive_counts("rejected_tokens", &out.rejected_tokens)?;
    }
    if needs.preference {
        let p = required(objective, "preference", &batch.preference)?;
        let host = checked_1d("preference", p, n)?;
        if let Some(i) = host.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(AlgoError::invalid(
                "preference",
                format!("must lie in [0, 1], found {} at {i}", host[i]),
            ));
        }
    }
    Ok(out)
}

/// `h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))` (reference inputs checked).
pub(crate) fn log_ratio_margin<B: Backend>(batch: &PairBatch<B>) -> Result<Tensor<B, 1>> {
    let rc = required("pairwise", "reference_chosen", &batch.reference_chosen)?;
    let rr = required("pairwise", "reference_rejected", &batch.reference_rejected)?;
    Ok((batch.policy_chosen.clone() - rc.clone()) - (batch.policy_rejected.clone() - rr.clone()))
}

/// `−(1−ε)·log σ(z) − ε·log σ(−z)` per pair; `ε = 0` is the DPO sigmoid loss.
pub(crate) fn smoothed_sigmoid<B: Backend>(z: Tensor<B, 1>, epsilon: f64) -> Tensor<B, 1> {
    let pos = log_sigmoid(z.clone()).neg();
    if epsilon == 0.0 {
        return pos;
    }
    pos * (1.0 - epsilon) - log_sigmoid(z.neg()) * epsilon
}

/// Implicit rewards `scale·(policy − reference)/tokens` per pair on the host.
pub(crate) fn host_rewards(
    policy: &[f32],
    reference: &[f32],
    tokens: &[f32],
    scale: f64,
) -> Vec<f32> {
    policy
        .iter()
        .zip(reference)
        .zip(tokens)
        .map(|((&p, &r), &n)| (scale * (f64::from(p) - f64::from(r)) / f64::from(n)) as f32)
        .collect()
}

/// Averages per-pair losses, checks the value and assembles [`PairStats`].
pub(crate) fn finish<B: Backend>(
    objective: &'static str,
    per_pair: Tensor<B, 1>,
    extra: Option<Tensor<B, 1>>,
    reward_chosen: &[f32],
    reward_rejected: &[f32],
) -> Result<LossOutput<B, PairStats>> {
    let mut loss = per_pair.mean();
    if let Some(extra) = extra {
        loss = loss + extra;
    }
    let value = checked_loss(objective, &loss)?;
    let margins: Vec<f32> = reward_chosen
        .iter()
        .zip(reward_rejected)
        .map(|(c, r)| c - r)
        .collect();
    let wins: Vec<f32> = margins
        .iter()
        .map(|&m| f32::from(u8::from(m > 0.0)))
        .collect();
    Ok(LossOutput {
        loss,
        stats: PairStats {
            loss: value,
            reward_chosen: host_mean(reward_chosen),
            reward_rejected: host_mean(reward_rejected),
            margin: host_mean(&margins),
            accuracy: host_mean(&wins),
            nll: None,
            regulariser: None,
        },
    })
}
