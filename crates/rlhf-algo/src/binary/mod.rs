//! Binary-feedback objectives: each sample is a single response labelled desirable or
//! undesirable (thumbs up/down, a verifier's pass/fail). KTO and BCO.

#[cfg(test)]
mod tests;

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};
use crate::ops::{
    check_finite_host, check_non_negative, check_positive, checked_loss, expect_dims,
    expect_non_empty, finite_host, from_host, host_mean,
};
use crate::output::{BinaryStats, LossOutput};

/// KTO's β (Ethayarajh et al. 2024; TRL `KTOConfig.beta`).
pub const DEFAULT_KTO_BETA: f64 = 0.1;
/// KTO's λ_D and λ_U (paper and TRL default 1.0; the paper advises
/// `λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]`).
pub const DEFAULT_KTO_WEIGHT: f64 = 1.0;
/// BCO's β (TRL `BCOConfig.beta`).
pub const DEFAULT_BCO_BETA: f64 = 0.1;

/// A batch of labelled single responses (`[batch]` each).
#[derive(Debug, Clone)]
pub struct BinaryBatch<B: Backend> {
    /// Summed `log π(y|x)` (differentiable).
    pub policy: Tensor<B, 1>,
    /// Summed `log π_ref(y|x)`.
    pub reference: Tensor<B, 1>,
    /// `true` for desirable, `false` for undesirable; one per sample.
    pub desirable: Vec<bool>,
    /// KTO: policy log-probs of mismatched completions `(x, y')` for the KL reference point
    /// (`y'` from another prompt of the batch, as in TRL). `None`: use the batch's own samples.
    pub kl_policy: Option<Tensor<B, 1>>,
    /// KTO: reference log-probs of the same mismatched completions.
    pub kl_reference: Option<Tensor<B, 1>>,
    /// BCO: per-sample weights on undesirable samples from underlying-distribution matching
    /// (a density-ratio classifier run by the caller); ignored on desirable samples.
    pub weights: Option<Tensor<B, 1>>,
}

impl<B: Backend> BinaryBatch<B> {
    /// A batch without KL samples or weights.
    pub fn new(policy: Tensor<B, 1>, reference: Tensor<B, 1>, desirable: Vec<bool>) -> Self {
        Self {
            policy,
            reference,
            desirable,
            kl_policy: None,
            kl_reference: None,
            weights: None,
        }
    }

    /// Adds KTO's mismatched completions.
    pub fn with_kl_samples(mut self, policy: Tensor<B, 1>, reference: Tensor<B, 1>) -> Self {
        self.kl_policy = Some(policy);
        self.kl_reference = Some(reference);
        self
    }

    /// `+1` for desirable samples, `−1` for undesirable ones, `[n]`.
    fn signs(&self) -> Tensor<B, 1> {
        let sign: Vec<f32> = self
            .desirable
            .iter()
            .map(|&d| if d { 1.0 } else { -1.0 })
            .collect();
        let n = sign.len();
        from_host::<B, 1>(sign, [n], &self.policy.device())
    }

    /// Adds BCO's underlying-distribution-matching weights.
    pub fn with_weights(mut self, weights: Tensor<B, 1>) -> Self {
        self.weights = Some(weights);
        self
    }
}

/// Config of [`kto_loss`] (`name = "kto"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoConfig {
    /// β (> 0).
    pub beta: f64,
    /// λ_D, weight of desirable samples (≥ 0).
    pub desirable_weight: f64,
    /// λ_U, weight of undesirable samples (≥ 0).
    pub undesirable_weight: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_KTO_BETA,
            desirable_weight: DEFAULT_KTO_WEIGHT,
            undesirable_weight: DEFAULT_KTO_WEIGHT,
        }
    }
}

impl KtoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("kto.beta", self.beta)?;
        check_non_negative("kto.desirable_weight", self.desirable_weight)?;
        check_non_negative("kto.undesirable_weight", self.undesirable_weight)
    }
}

/// Config of [`bco_loss`] (`name = "bco"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BcoConfig {
    /// β (> 0).
    pub beta: f64,
}

impl Default for BcoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_BCO_BETA,
        }
    }
}

impl BcoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("bco.beta", self.beta)
    }
}

/// Exact running mean of every reward seen so far: BCO's reward shift `δ` (TRL's
/// `RunningMoments`). Serialisable so it can live in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RunningMean {
    /// Number of values seen.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
}

impl RunningMean {
    /// Folds `values` in; non-finite values are rejected and leave the state unchanged.
    pub fn update(&mut self, values: &[f32]) -> Result<()> {
        check_finite_host("rewards", values)?;
        if values.is_empty() {
            return Ok(());
        }
        let n = values.len() as u64;
        let batch_mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let total = self.count + n;
        self.mean += (batch_mean - self.mean) * n as f64 / total as f64;
        self.count = total;
        Ok(())
    }
}

struct Checked {
    policy: Vec<f32>,
    reference: Vec<f32>,
}

fn check<B: Backend>(batch: &BinaryBatch<B>) -> Result<Checked> {
    let n = batch.policy.dims()[0];
    expect_non_empty("policy", n)?;
    expect_dims("reference", &batch.reference, [n])?;
    if batch.desirable.len() != n {
        return Err(AlgoError::Shape {
            input: "desirable",
            expected: vec![n],
            got: vec![batch.desirable.len()],
        });
    }
    Ok(Checked {
        policy: finite_host("policy", &batch.policy)?,
        reference: finite_host("reference", &batch.reference)?,
    })
}

/// Desirable / undesirable reward means and counts on the host.
fn split_stats(rewards: &[f32], desirable: &[bool]) -> (f32, f32, usize, usize) {
    let mut d = Vec::new();
    let mut u = Vec::new();
    for (&r, &is_d) in rewards.iter().zip(desirable) {
        if is_d { d.push(r) } else { u.push(r) }
    }
    (host_mean(&d), host_mean(&u), d.len(), u.len())
}

/// KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
/// TRL `kto_loss`). With `r = log π(y|x) − log π_ref(y|x)` and the reference point
/// `z0 = max(0, mean(log π(y'|x) − log π_ref(y'|x)))` (detached; mismatched `y'` if given,
/// else the batch's own samples):
///
/// desirable: `λ_D·(1 − σ(β·(r − z0)))`, undesirable: `λ_U·(1 − σ(β·(z0 − r)))`,
/// averaged over all samples of the batch.
pub fn kto_loss<B: Backend>(
    batch: &BinaryBatch<B>,
    config: &KtoConfig,
) -> Result<LossOutput<B, BinaryStats>> {
    config.validate()?;
    let host = check(batch)?;
    let n = host.policy.len();
    let z0 = match (&batch.kl_policy, &batch.kl_reference) {
        (Some(p), Some(r)) => {
            let m = p.dims()[0];
            expect_non_empty("kl_policy", m)?;
            expect_dims("kl_reference", r, [m])?;
            let p = finite_host("kl_policy", p)?;
            let r = finite_host("kl_reference", r)?;
            let diff: Vec<f32> = p.iter().zip(&r).map(|(a, b)| a - b).collect();
            host_mean(&diff)
        }
        (None, None) => {
            let diff: Vec<f32> = host
                .policy
                .iter()
                .zip(&host.reference)
                .map(|(a, b)| a - b)
                .collect();
            host_mean(&diff)
        }
        (Some(_), None) => {
            return Err(AlgoError::MissingInput {
                objective: "kto",
                input: "kl_reference",
            });
        }
        (None, Some(_)) => {
            return Err(AlgoError::MissingInput {
                objective: "kto",
                input: "kl_policy",
            });
        }
    }
    .max(0.0);
    let device = batch.policy.device();
    let weight: Vec<f32> = batch
        .desirable
        .iter()
        .map(|&d| if d { config.desirable_weight } else { config.undesirable_weight } as f32)
        .collect();
    let r = batch.policy.clone() - batch.reference.clone();
    // desirable: 1 − σ(β(r − z0)); undesirable: 1 − σ(β(z0 − r)) = 1 − σ(−β(r − z0)).
    let z = (r.sub_scalar(z0) * config.beta) * batch.signs();
    let per_sample = sigmoid(z).neg().add_scalar(1.0) * from_host::<B, 1>(weight, [n], &device);
    let loss = per_sample.mean();
    let value = checked_loss("kto", &loss)?;
    let rewards: Vec<f32> = host
        .policy
        .iter()
        .zip(&host.reference)
        .map(|(p, r)| (config.beta * f64::from(p - r)) as f32)
        .collect();
    let (rd, ru, nd, nu) = split_stats(&rewards, &batch.desirable);
    Ok(LossOutput {
        loss,
        stats: BinaryStats {
            loss: value,
            reward_desirable: rd,
            reward_undesirable: ru,
            reference_point: z0,
            desirable: nd,
            undesirable: nu,
        },
    })
}

/// BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
/// TRL `bco_loss`): a logistic classifier on the implicit reward `r = β·(log π − log π_ref)`
/// shifted by `δ`, the running mean of all rewards (updated with this batch first):
///
/// desirable: `−log σ(r − δ)`, undesirable: `w·(−log σ(−(r − δ)))`, averaged over the batch,
///
/// where `w` are the optional underlying-distribution-matching weights (1 without them).
/// `running` is updated in place (pass the same state every step, keep it in checkpoints).
pub fn bco_loss<B: Backend>(
    batch: &BinaryBatch<B>,
    config: &BcoConfig,
    running: &mut RunningMean,
) -> Result<LossOutput<B, BinaryStats>> {
    config.validate()?;
    let host = check(batch)?;
    let n = host.policy.len();
    let weights = match &batch.weights {
        Some(w) => {
            expect_dims("weights", w, [n])?;
            let values = finite_host("weights", w)?;
            if let Some(i) = values.iter().position(|&v| v < 0.0) {
                return Err(AlgoError::invalid(
                    "weights",
                    format!("must be non-negative, found {} at {i}", values[i]),
                ));
            }
            values
        }
        None => vec![1.0; n],
    };
    let rewards: Vec<f32> = host
        .policy
        .iter()
        .zip(&host.reference)
        .map(|(p, r)| (config.beta * f64::from(p - r)) as f32)
        .collect();
    let mut updated = *running;
    updated.update(&rewards)?;
    let delta = updated.mean;
    let device = batch.policy.device();
    let weight: Vec<f32> = batch
        .desirable
        .iter()
        .zip(&weights)
        .map(|(&d, &w)| if d { 1.0 } else { w })
        .collect();
    let r = (batch.policy.clone() - batch.reference.clone()) * config.beta;
    let z = r.sub_scalar(delta) * batch.signs();
    let per_sample = log_sigmoid(z).neg() * from_host::<B, 1>(weight, [n], &device);
    let loss = per_sample.mean();
    let value = checked_loss("bco", &loss)?;
    *running = updated;
    let (rd, ru, nd, nu) = split_stats(&rewards, &batch.desirable);
    Ok(LossOutput {
        loss,
        stats: BinaryStats {
            loss: value,
            reward_desirable: rd,
            reward_undesirable: ru,
            reference_point: delta as f32,
            desirable: nd,
            undesirable: nu,
        },
    })
}
