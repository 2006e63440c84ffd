//! Per-token building blocks of the policy-gradient losses: clipped surrogate, clipped value
//! loss, entropy, KL estimators and truncated importance weights.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{TokenBatch, check_tokens};
use crate::error::{AlgoError, Result};
use crate::ops::{
    TokenReduction, check_non_negative, check_range, checked_loss, expect_dims, finite_host,
    mask_host, masked_mean, reduce_tokens,
};
use crate::output::{LossOutput, PolicyStats};

/// Bound on `|log r|` inside the k3 estimator so `exp` cannot overflow (as verl clamps k3).
const K3_LOG_RATIO_BOUND: f64 = 20.0;

/// Per-token estimators of `KL(π ‖ π_ref)` from samples of `π` (Schulman 2020, "Approximating
/// KL Divergence"), with `log r = log π_ref − log π`:
/// `k1 = −log r` (unbiased, high variance), `k2 = ½(log r)²` (biased, low variance),
/// `k3 = (r − 1) − log r` (unbiased, low variance, always ≥ 0; GRPO's choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `log π − log π_ref`.
    K1,
    /// `½ (log π_ref − log π)²`.
    K2,
    /// `exp(log π_ref − log π) − 1 − (log π_ref − log π)`.
    #[default]
    K3,
}

impl KlEstimator {
    /// The estimator on host values.
    pub fn host(self, logp: f32, reference_logp: f32) -> f32 {
        let log_r = f64::from(reference_logp) - f64::from(logp);
        (match self {
            KlEstimator::K1 => -log_r,
            KlEstimator::K2 => 0.5 * log_r * log_r,
            KlEstimator::K3 => {
                let l = log_r.clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND);
                l.exp() - 1.0 - l
            }
        }) as f32
    }
}

/// Per-token KL estimate `[batch, T]` (unmasked; reduce it with the mask).
/// k3 clamps `log r` to ±20 before exponentiating.
pub fn kl_estimate<B: Backend>(
    logp: Tensor<B, 2>,
    reference_logp: Tensor<B, 2>,
    estimator: KlEstimator,
) -> Tensor<B, 2> {
    let log_r = reference_logp - logp;
    match estimator {
        KlEstimator::K1 => log_r.neg(),
        KlEstimator::K2 => log_r.powi_scalar(2) * 0.5,
        KlEstimator::K3 => {
            let l = log_r.clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND);
            l.clone().exp().sub_scalar(1.0) - l
        }
    }
}

/// Per-token entropy `H = −Σ_v p_v log p_v` from logits `[batch, T, V]`, returned as `[batch, T]`.
pub fn entropy_from_logits<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, t, _] = logits.dims();
    let logp = log_softmax(logits, 2);
    (logp.clone().exp() * logp).sum_dim(2).reshape([b, t]).neg()
}

/// Statistics of [`truncated_importance_weights`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ImportanceStats {
    /// Mean weight over valid tokens.
    pub mean: f32,
    /// Fraction of valid tokens whose weight hit the cap.
    pub truncated_fraction: f32,
}

/// Truncated importance weights `w_t = min(π(y_t)/μ(y_t), cap)` for tokens sampled by a stale
/// behaviour policy `μ` (IMPALA's `ρ̄`, Espeholt et al. 2018; truncated IS for mismatched
/// rollouts, Yao et al. 2025, cap 2). Detached, zero on masked positions, `[batch, T]`.
pub fn truncated_importance_weights<B: Backend>(
    target_logp: Tensor<B, 2>,
    behaviour_logp: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    cap: f64,
) -> Result<(Tensor<B, 2>, ImportanceStats)> {
    check_range("importance_cap", cap, 1.0, f64::INFINITY, true, false)?;
    let dims = target_logp.dims();
    expect_dims("behaviour_logp", &behaviour_logp, dims)?;
    expect_dims("mask", &mask, dims)?;
    let target = finite_host("target_logp", &target_logp)?;
    let behaviour = finite_host("behaviour_logp", &behaviour_logp)?;
    let m = mask_host("mask", &mask)?;
    let log_cap = cap.ln();
    let (mut sum, mut truncated, mut count) = (0.0f64, 0.0f64, 0.0f64);
    for ((t, b), m) in target.iter().zip(&behaviour).zip(&m) {
        if *m > 0.0 {
            let lr = f64::from(t - b);
            sum += lr.min(log_cap).exp();
            truncated += f64::from(u8::from(lr > log_cap));
            count += 1.0;
        }
    }
    let weights = ((target_logp - behaviour_logp).clamp_max(log_cap).exp() * mask).detach();
    let denom = count.max(1.0);
    Ok((
        weights,
        ImportanceStats {
            mean: (sum / denom) as f32,
            truncated_fraction: (truncated / denom) as f32,
        },
    ))
}

/// Hyperparameters of [`clipped_surrogate`], shared by every policy-gradient objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurrogateConfig {
    /// Lower clip ε_low: the ratio is clipped at `1 − ε_low`.
    pub clip_low: f64,
    /// Upper clip ε_high: the ratio is clipped at `1 + ε_high` (DAPO's clip-higher when larger).
    pub clip_high: f64,
    /// How per-token terms are reduced.
    pub reduction: TokenReduction,
    /// The constant `L` of [`TokenReduction::FixedLength`]; `None` uses the padded length `T`.
    pub fixed_length: Option<usize>,
    /// Weight of the per-token KL to the reference inside the loss (0 disables it).
    pub kl_coef: f64,
    /// Which KL estimator the in-loss penalty uses.
    pub kl_estimator: KlEstimator,
    /// Weight of the entropy bonus (subtracted from the loss; 0 disables it).
    pub entropy_coef: f64,
    /// Cap of the truncated importance weights, used when behaviour log-probs are present.
    pub importance_cap: f64,
}

impl SurrogateConfig {
    /// Checks the hyperparameters; `prefix` names the objective in error fields.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        check_range(
            &format!("{prefix}.clip_ratio"),
            self.clip_low,
            0.0,
            1.0,
            true,
            false,
        )?;
        check_non_negative(&format!("{prefix}.clip_ratio_high"), self.clip_high)?;
        check_non_negative(&format!("{prefix}.kl_coef"), self.kl_coef)?;
        check_non_negative(&format!("{prefix}.entropy_coef"), self.entropy_coef)?;
        check_range(
            &format!("{prefix}.importance_cap"),
            self.importance_cap,
            1.0,
            f64::INFINITY,
            true,
            false,
        )?;
        if self.fixed_length == Some(0) {
            return Err(AlgoError::config(
                format!("{prefix}.max_tokens"),
                "must be positive, got 0",
            ));
        }
        Ok(())
    }
}

/// PPO's clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
/// eq. 7) per token, with the optional in-loss KL penalty, entropy bonus and truncated
/// importance weights, reduced over valid tokens:
///
/// `ℓ_t = −w_t·min(ρ_t·A_t, clip(ρ_t, 1−ε_low, 1+ε_high)·A_t) + c_KL·k(π, π_ref)_t`,
/// `ρ_t = exp(log π_t − log π_old,t)`, `L = reduce(ℓ) − c_H·reduce(H)`,
///
/// where `w_t` are [`truncated_importance_weights`] of `π_old/μ` (1 without behaviour log-probs).
/// `advantages` is `[batch, T]` (broadcast sequence advantages before calling). With ratio 1
/// (on-policy) the surrogate is `−A_t`, whose gradient is the REINFORCE gradient.
pub fn clipped_surrogate<B: Backend>(
    objective: &'static str,
    batch: &TokenBatch<B>,
    advantages: Tensor<B, 2>,
    config: &SurrogateConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate(objective)?;
    let host = check_tokens(batch)?;
    let dims = host.dims;
    expect_dims("advantages", &advantages, dims)?;
    let adv_host = finite_host("advantages", &advantages)?;
    let mask = batch.mask.clone();
    let old = batch
        .old_logp
        .clone()
        .unwrap_or_else(|| batch.logp.clone().detach());

    let ratio = (batch.logp.clone() - old.clone()).exp();
    let clipped = ratio
        .clone()
        .clamp(1.0 - config.clip_low, 1.0 + config.clip_high);
    let mut per_token = (ratio * advantages.clone())
        .min_pair(clipped * advantages)
        .neg();
    let mut importance = None;
    if let Some(behaviour) = &batch.behaviour_logp {
        let (w, stats) = truncated_importance_weights(
            old,
            behaviour.clone(),
            mask.clone(),
            config.importance_cap,
        )?;
        per_token = per_token * w;
        importance = Some(stats.mean);
    }
    let fixed = config.fixed_length.unwrap_or(dims[1]);
    let policy_loss = reduce_tokens(per_token.clone(), mask.clone(), config.reduction, fixed);
    let policy_value = checked_loss(objective, &policy_loss)?;

    let mut kl_reference = None;
    if let (Some(reference), Some(ref_host)) = (&batch.reference_logp, &host.reference) {
        kl_reference = Some(
            host.masked_mean(
                host.logp
                    .iter()
                    .zip(ref_host)
                    .map(|(&l, &r)| config.kl_estimator.host(l, r)),
            ),
        );
        if config.kl_coef > 0.0 {
            let kl = kl_estimate(batch.logp.clone(), reference.clone(), config.kl_estimator);
            per_token = per_token + kl * config.kl_coef;
        }
    } else if config.kl_coef > 0.0 {
        return Err(AlgoError::MissingInput {
            objective,
            input: "reference_logp",
        });
    }
    let mut loss = reduce_tokens(per_token, mask.clone(), config.reduction, fixed);
    let mut entropy = None;
    if let (Some(ent), Some(ent_host)) = (&batch.entropy, &host.entropy) {
        entropy = Some(host.masked_mean(ent_host.iter().copied()));
        if config.entropy_coef > 0.0 {
            let bonus = reduce_tokens(ent.clone(), mask, config.reduction, fixed);
            loss = loss - bonus * config.entropy_coef;
        }
    } else if config.entropy_coef > 0.0 {
        return Err(AlgoError::MissingInput {
            objective,
            input: "entropy",
        });
    }
    let value = checked_loss(objective, &loss)?;

    let log_ratio: Vec<f32> = host
        .logp
        .iter()
        .zip(&host.old)
        .map(|(l, o)| l - o)
        .collect();
    let (lo, hi) = (1.0 - config.clip_low, 1.0 + config.clip_high);
    let stats = PolicyStats {
        loss: value,
        policy_loss: policy_value,
        clip_fraction: host.masked_mean(log_ratio.iter().map(|&lr| {
            let r = f64::from(lr).exp();
            f32::from(u8::from(r < lo || r > hi))
        })),
        approx_kl: host.masked_mean(
            log_ratio
                .iter()
                .map(|&lr| (f64::from(lr).exp() - 1.0 - f64::from(lr)) as f32),
        ),
        ratio_mean: host.masked_mean(log_ratio.iter().map(|&lr| lr.exp())),
        kl_reference,
        value_loss: None,
        value_clip_fraction: None,
        entropy,
        importance_weight: importance,
        advantage_mean: host.masked_mean(adv_host.into_iter()),
    };
    Ok(LossOutput { loss, stats })
}

/// PPO's clipped value loss (OpenAI baselines `ppo2`; TRL `PPOTrainer`), per token:
/// `½·max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)`, masked token mean.
///
/// Returns the loss, its value and the fraction of valid tokens where the clipped branch was
/// strictly larger.
pub fn clipped_value_loss<B: Backend>(
    values: Tensor<B, 2>,
    old_values: Tensor<B, 2>,
    returns: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    clip: f64,
) -> Result<(Tensor<B, 1>, f32, f32)> {
    check_non_negative("value_clip", clip)?;
    let dims = values.dims();
    for (name, t) in [
        ("old_values", &old_values),
        ("returns", &returns),
        ("mask", &mask),
    ] {
        expect_dims(name, t, dims)?;
    }
    let v = finite_host("values", &values)?;
    let ov = finite_host("old_values", &old_values)?;
    let ret = finite_host("returns", &returns)?;
    let m = mask_host("mask", &mask)?;
    if !m.iter().any(|&x| x > 0.0) {
        return Err(AlgoError::invalid("mask", "no valid token in the batch"));
    }
    let clipped = old_values.clone() + (values.clone() - old_values).clamp(-clip, clip);
    let unclipped_err = (values - returns.clone()).powi_scalar(2);
    let clipped_err = (clipped - returns).powi_scalar(2);
    let loss = masked_mean(unclipped_err.max_pair(clipped_err) * 0.5, mask);
    let value = checked_loss("value", &loss)?;
    let (mut hits, mut count) = (0.0f32, 0.0f32);
    for i in 0..v.len() {
        if m[i] > 0.0 {
            let vc = ov[i] + (v[i] - ov[i]).clamp(-clip as f32, clip as f32);
            hits += f32::from(u8::from((vc - ret[i]).powi(2) > (v[i] - ret[i]).powi(2)));
            count += 1.0;
        }
    }
    Ok((loss, value, hits / count))
}
