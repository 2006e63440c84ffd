//! Complete policy-gradient objectives: PPO (with a critic) and the critic-free GRPO,
//! Dr. GRPO, RLOO and REINFORCE++ (advantages from scored groups of samples), and SPPO (win
//! probabilities of scored groups).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::advantages::{
    DEFAULT_GAMMA, DEFAULT_GRPO_STD_EPS, DEFAULT_LAMBDA, GaeConfig, dr_grpo_advantages,
    grpo_advantages, reinforce_pp_advantages, rloo_advantages,
};
use super::kl_control::KlControl;
use super::terms::{KlEstimator, SurrogateConfig, clipped_surrogate, clipped_value_loss};
use super::{TokenBatch, check_tokens};
use crate::error::{AlgoError, Result};
use crate::ops::{
    TokenReduction, check_non_negative, check_positive, check_range, checked_loss, from_host,
};
use crate::output::{LossOutput, PolicyStats};

/// PPO's clip ε (Schulman et al. 2017).
pub const DEFAULT_CLIP_RATIO: f64 = 0.2;
/// Value clip ε_v (OpenAI baselines / TRL `cliprange_value`).
pub const DEFAULT_VALUE_CLIP: f64 = 0.2;
/// Value-loss coefficient (TRL `PPOConfig.vf_coef`).
pub const DEFAULT_VALUE_COEF: f64 = 0.1;
/// GRPO's KL coefficient β (Shao et al. 2024: 0.04).
pub const DEFAULT_GRPO_KL_COEF: f64 = 0.04;
/// REINFORCE++'s KL-in-reward coefficient. Our default, in the range Hu 2025 reports.
pub const DEFAULT_REINFORCE_PP_KL_COEF: f64 = 0.01;
/// PPO's KL-in-reward coefficient β (TRL `PPOConfig.kl_coef`).
pub const DEFAULT_PPO_KL_REWARD_COEF: f64 = 0.05;
/// SPPO's β = 1/η (the authors' `scripts/pipeline.sh`: 0.001).
pub const DEFAULT_SPPO_BETA: f64 = 0.001;
/// Truncated-IS cap for stale samples (Yao et al. 2025 use C = 2).
pub const DEFAULT_IMPORTANCE_CAP: f64 = 2.0;

/// Value-head inputs of PPO, `[batch, T]` each.
#[derive(Debug, Clone)]
pub struct ValueBatch<B: Backend> {
    /// Current value predictions (differentiable).
    pub values: Tensor<B, 2>,
    /// Values at rollout time.
    pub old_values: Tensor<B, 2>,
    /// Value targets (GAE returns).
    pub returns: Tensor<B, 2>,
}

/// PPO's input: tokens with precomputed per-token advantages (e.g. from [`super::gae`]).
#[derive(Debug, Clone)]
pub struct RolloutBatch<B: Backend> {
    /// Log-probs and mask.
    pub tokens: TokenBatch<B>,
    /// Per-token advantages `[batch, T]` (not differentiated).
    pub advantages: Tensor<B, 2>,
    /// Value-head inputs; `None` trains the policy only.
    pub values: Option<ValueBatch<B>>,
}

/// Input of the group objectives: `group_size` consecutive rows share a prompt.
#[derive(Debug, Clone)]
pub struct GroupBatch<B: Backend> {
    /// Log-probs and mask; `[groups·group_size, T]`.
    pub tokens: TokenBatch<B>,
    /// One scalar reward per row (never missing: drop unscored samples before batching).
    pub rewards: Vec<f32>,
    /// Samples per prompt.
    pub group_size: usize,
}

macro_rules! surrogate_fields {
    ($cfg:ident, $reduction:expr, $fixed:expr) => {
        impl $cfg {
            fn surrogate(&self) -> SurrogateConfig {
                SurrogateConfig {
                    clip_low: self.clip_ratio,
                    clip_high: self.clip_ratio_high.unwrap_or(self.clip_ratio),
                    reduction: $reduction(self),
                    fixed_length: $fixed(self),
                    kl_coef: self.kl_coef,
                    kl_estimator: self.kl_estimator,
                    entropy_coef: self.entropy_coef,
                    importance_cap: self.importance_cap,
                }
            }
        }
    };
}

/// Config of [`ppo_loss`] (`name = "ppo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Clip ε in `[0, 1)`.
    pub clip_ratio: f64,
    /// Upper clip ε_high (`None`: same as `clip_ratio`).
    pub clip_ratio_high: Option<f64>,
    /// Value clip ε_v (≥ 0).
    pub value_clip: f64,
    /// Value-loss coefficient (≥ 0).
    pub value_coef: f64,
    /// Entropy-bonus coefficient (≥ 0).
    pub entropy_coef: f64,
    /// In-loss KL coefficient (classic RLHF-PPO puts the KL in the reward instead: 0).
    pub kl_coef: f64,
    /// Estimator of the in-loss KL.
    pub kl_estimator: KlEstimator,
    /// Token reduction.
    pub reduction: TokenReduction,
    /// Truncated-IS cap for stale samples (≥ 1).
    pub importance_cap: f64,
    /// Rollout preparation (the learner's side): GAE discount γ in `[0, 1]`.
    pub gamma: f64,
    /// GAE trace decay λ in `[0, 1]`.
    pub lambda: f64,
    /// The per-token KL penalty in the reward, `−β (log π_old − log π_ref)` (Ouyang et al. 2022;
    /// the score is added on the last token): `{ name = "fixed", coef = 0.05 }` or
    /// `{ name = "adaptive", target = 6, ... }` (Ziegler et al. 2019).
    pub kl_reward: KlControl,
    /// Normalise the advantages of each update to mean 0, std 1 over its valid tokens.
    pub whiten_advantages: bool,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            clip_ratio: DEFAULT_CLIP_RATIO,
            clip_ratio_high: None,
            value_clip: DEFAULT_VALUE_CLIP,
            value_coef: DEFAULT_VALUE_COEF,
            entropy_coef: 0.0,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            reduction: TokenReduction::TokenMean,
            importance_cap: DEFAULT_IMPORTANCE_CAP,
            gamma: DEFAULT_GAMMA,
            lambda: DEFAULT_LAMBDA,
            kl_reward: KlControl::Fixed {
                coef: DEFAULT_PPO_KL_REWARD_COEF,
            },
            whiten_advantages: true,
        }
    }
}
surrogate_fields!(PpoConfig, |c: &PpoConfig| c.reduction, |_| None);

impl PpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.surrogate().validate("ppo")?;
        check_non_negative("ppo.value_clip", self.value_clip)?;
        check_non_negative("ppo.value_coef", self.value_coef)?;
        check_range("ppo.gamma", self.gamma, 0.0, 1.0, true, true)?;
        check_range("ppo.lambda", self.lambda, 0.0, 1.0, true, true)?;
        match self.kl_reward {
            KlControl::Fixed { coef } => check_non_negative("ppo.kl_reward.coef", coef),
            KlControl::Adaptive {
                init_coef,
                target,
                horizon,
            } => {
                for (field, v) in [
                    ("ppo.kl_reward.init_coef", init_coef),
                    ("ppo.kl_reward.target", target),
                    ("ppo.kl_reward.horizon", horizon),
                ] {
                    if !(v > 0.0 && v.is_finite()) {
                        return Err(AlgoError::config(
                            field,
                            format!("must be positive, got {v}"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// The GAE settings.
    pub fn gae(&self) -> GaeConfig {
        GaeConfig {
            gamma: self.gamma,
            lambda: self.lambda,
        }
    }
}

/// Config of [`grpo_loss`] (`name = "grpo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Clip ε in `[0, 1)`.
    pub clip_ratio: f64,
    /// Upper clip ε_high (`None`: same as `clip_ratio`).
    pub clip_ratio_high: Option<f64>,
    /// In-loss KL coefficient β (≥ 0).
    pub kl_coef: f64,
    /// KL estimator (GRPO: k3).
    pub kl_estimator: KlEstimator,
    /// Entropy-bonus coefficient (≥ 0).
    pub entropy_coef: f64,
    /// Token reduction (GRPO: per-sequence mean, then mean over sequences).
    pub reduction: TokenReduction,
    /// Epsilon added to the group std (> 0).
    pub std_eps: f64,
    /// Truncated-IS cap for stale samples (≥ 1).
    pub importance_cap: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            clip_ratio: DEFAULT_CLIP_RATIO,
            clip_ratio_high: None,
            kl_coef: DEFAULT_GRPO_KL_COEF,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
            reduction: TokenReduction::SequenceMean,
            std_eps: DEFAULT_GRPO_STD_EPS,
            importance_cap: DEFAULT_IMPORTANCE_CAP,
        }
    }
}
surrogate_fields!(GrpoConfig, |c: &GrpoConfig| c.reduction, |_| None);

impl GrpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.surrogate().validate("grpo")?;
        crate::ops::check_positive("grpo.std_eps", self.std_eps)
    }
}

/// Config of [`dr_grpo_loss`] (`name = "dr_grpo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrGrpoConfig {
    /// Clip ε in `[0, 1)`.
    pub clip_ratio: f64,
    /// Upper clip ε_high (`None`: same as `clip_ratio`).
    pub clip_ratio_high: Option<f64>,
    /// In-loss KL coefficient (Dr. GRPO drops the KL term: 0).
    pub kl_coef: f64,
    /// KL estimator, if `kl_coef > 0`.
    pub kl_estimator: KlEstimator,
    /// Entropy-bonus coefficient (≥ 0).
    pub entropy_coef: f64,
    /// The constant normaliser (generation budget); `None`: the padded length `T`.
    pub max_tokens: Option<usize>,
    /// Truncated-IS cap for stale samples (≥ 1).
    pub importance_cap: f64,
}

impl Default for DrGrpoConfig {
    fn default() -> Self {
        Self {
            clip_ratio: DEFAULT_CLIP_RATIO,
            clip_ratio_high: None,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
            max_tokens: None,
            importance_cap: DEFAULT_IMPORTANCE_CAP,
        }
    }
}
surrogate_fields!(
    DrGrpoConfig,
    |_| TokenReduction::FixedLength,
    |c: &DrGrpoConfig| c.max_tokens
);

impl DrGrpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.surrogate().validate("dr_grpo")
    }
}

/// Config of [`rloo_loss`] (`name = "rloo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlooConfig {
    /// Clip ε in `[0, 1)` (only active for multiple epochs per batch).
    pub clip_ratio: f64,
    /// Upper clip ε_high (`None`: same as `clip_ratio`).
    pub clip_ratio_high: Option<f64>,
    /// In-loss KL coefficient (RLOO puts the KL in the reward: 0).
    pub kl_coef: f64,
    /// KL estimator, if `kl_coef > 0`.
    pub kl_estimator: KlEstimator,
    /// Entropy-bonus coefficient (≥ 0).
    pub entropy_coef: f64,
    /// Token reduction (sequence-level REINFORCE: sum over tokens, mean over sequences).
    pub reduction: TokenReduction,
    /// Truncated-IS cap for stale samples (≥ 1).
    pub importance_cap: f64,
}

impl Default for RlooConfig {
    fn default() -> Self {
        Self {
            clip_ratio: DEFAULT_CLIP_RATIO,
            clip_ratio_high: None,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coef: 0.0,
            reduction: TokenReduction::SequenceSum,
            importance_cap: DEFAULT_IMPORTANCE_CAP,
        }
    }
}
surrogate_fields!(RlooConfig, |c: &RlooConfig| c.reduction, |_| None);

impl RlooConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.surrogate().validate("rloo")
    }
}

/// Config of [`sppo_loss`] (`name = "sppo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SppoConfig {
    /// β = 1/η (> 0): the log-ratio a win probability of 1 is pushed to is `1/(2β)`.
    pub beta: f64,
}

impl Default for SppoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_SPPO_BETA,
        }
    }
}

impl SppoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("sppo.beta", self.beta)
    }
}

/// Config of [`reinforce_pp_loss`] (`name = "reinforce_pp"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReinforcePpConfig {
    /// Clip ε in `[0, 1)`.
    pub clip_ratio: f64,
    /// Upper clip ε_high (`None`: same as `clip_ratio`).
    pub clip_ratio_high: Option<f64>,
    /// KL coefficient β of the per-token KL penalty in the reward (≥ 0).
    pub kl_reward_coef: f64,
    /// Discount γ in `[0, 1]`.
    pub gamma: f64,
    /// Entropy-bonus coefficient (≥ 0).
    pub entropy_coef: f64,
    /// Token reduction.
    pub reduction: TokenReduction,
    /// Truncated-IS cap for stale samples (≥ 1).
    pub importance_cap: f64,
}

impl Default for ReinforcePpConfig {
    fn default() -> Self {
        Self {
            clip_ratio: DEFAULT_CLIP_RATIO,
            clip_ratio_high: None,
            kl_reward_coef: DEFAULT_REINFORCE_PP_KL_COEF,
            gamma: 1.0,
            entropy_coef: 0.0,
            reduction: TokenReduction::TokenMean,
            importance_cap: DEFAULT_IMPORTANCE_CAP,
        }
    }
}

impl ReinforcePpConfig {
    fn surrogate(&self) -> SurrogateConfig {
        SurrogateConfig {
            clip_low: self.clip_ratio,
            clip_high: self.clip_ratio_high.unwrap_or(self.clip_ratio),
            reduction: self.reduction,
            fixed_length: None,
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K1,
            entropy_coef: self.entropy_coef,
            importance_cap: self.importance_cap,
        }
    }

    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.surrogate().validate("reinforce_pp")?;
        check_non_negative("reinforce_pp.kl_reward_coef", self.kl_reward_coef)?;
        crate::ops::check_range("reinforce_pp.gamma", self.gamma, 0.0, 1.0, true, true)
    }
}

/// PPO (Schulman et al. 2017; RLHF form of Ouyang et al. 2022): [`clipped_surrogate`] on the
/// given per-token advantages plus `value_coef·`[`clipped_value_loss`] when values are given.
pub fn ppo_loss<B: Backend>(
    batch: &RolloutBatch<B>,
    config: &PpoConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate()?;
    let mut out = clipped_surrogate(
        "ppo",
        &batch.tokens,
        batch.advantages.clone(),
        &config.surrogate(),
    )?;
    if let Some(v) = &batch.values {
        crate::ops::expect_dims("values", &v.values, batch.tokens.dims())?;
        let (vloss, vvalue, vclip) = clipped_value_loss(
            v.values.clone(),
            v.old_values.clone(),
            v.returns.clone(),
            batch.tokens.mask.clone(),
            config.value_clip,
        )?;
        out.loss = out.loss + vloss * config.value_coef;
        out.stats.loss = checked_loss("ppo", &out.loss)?;
        out.stats.value_loss = Some(vvalue);
        out.stats.value_clip_fraction = Some(vclip);
    }
    Ok(out)
}

/// Broadcasts one advantage per row to `[batch, T]`.
fn broadcast<B: Backend>(per_row: Vec<f32>, dims: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    from_host::<B, 2>(per_row, [dims[0], 1], device).repeat_dim(1, dims[1])
}

fn check_group_rows<B: Backend>(batch: &GroupBatch<B>) -> Result<()> {
    let rows = batch.tokens.dims()[0];
    if batch.rewards.len() != rows {
        return Err(AlgoError::Shape {
            input: "rewards",
            expected: vec![rows],
            got: vec![batch.rewards.len()],
        });
    }
    Ok(())
}

/// GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3–4): group-normalised advantages
/// ([`grpo_advantages`]) on every token, clipped surrogate plus `β·k3` KL to the reference,
/// averaged per sequence then over sequences.
pub fn grpo_loss<B: Backend>(
    batch: &GroupBatch<B>,
    config: &GrpoConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate()?;
    check_group_rows(batch)?;
    let adv = grpo_advantages(&batch.rewards, batch.group_size, config.std_eps)?;
    let adv = broadcast(adv, batch.tokens.dims(), &batch.tokens.logp.device());
    clipped_surrogate("grpo", &batch.tokens, adv, &config.surrogate())
}

/// Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"):
/// GRPO without the std normalisation ([`dr_grpo_advantages`]) and without length
/// normalisation: token sums divided by a constant (`max_tokens`), averaged over sequences.
pub fn dr_grpo_loss<B: Backend>(
    batch: &GroupBatch<B>,
    config: &DrGrpoConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate()?;
    check_group_rows(batch)?;
    let adv = dr_grpo_advantages(&batch.rewards, batch.group_size)?;
    let adv = broadcast(adv, batch.tokens.dims(), &batch.tokens.logp.device());
    clipped_surrogate("dr_grpo", &batch.tokens, adv, &config.surrogate())
}

/// RLOO (Ahmadian et al. 2024, "Back to Basics"): leave-one-out advantages
/// ([`rloo_advantages`]) in a REINFORCE loss over the whole sequence (the clipped surrogate
/// with ratio 1 on the first pass; the clip only matters for reused batches).
pub fn rloo_loss<B: Backend>(
    batch: &GroupBatch<B>,
    config: &RlooConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate()?;
    check_group_rows(batch)?;
    let adv = rloo_advantages(&batch.rewards, batch.group_size)?;
    let adv = broadcast(adv, batch.tokens.dims(), &batch.tokens.logp.device());
    clipped_surrogate("rloo", &batch.tokens, adv, &config.surrogate())
}

/// REINFORCE++ (Hu 2025): per-token KL-penalised returns normalised over the batch
/// ([`reinforce_pp_advantages`]) in the clipped surrogate. The KL uses `log π_old − log π_ref`
/// of the sampled tokens (`old_logp`, or the detached current log-probs); needs
/// `reference_logp` when `kl_reward_coef > 0`. `group_size` is not used (any batch works).
pub fn reinforce_pp_loss<B: Backend>(
    batch: &GroupBatch<B>,
    config: &ReinforcePpConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate()?;
    check_group_rows(batch)?;
    let host = check_tokens(&batch.tokens)?;
    let dims = host.dims;
    let kl: Vec<f32> = match &host.reference {
        Some(r) => host.old.iter().zip(r).map(|(o, r)| o - r).collect(),
        None if config.kl_reward_coef > 0.0 => {
            return Err(AlgoError::MissingInput {
                objective: "reinforce_pp",
                input: "reference_logp",
            });
        }
        None => vec![0.0; host.old.len()],
    };
    let out = reinforce_pp_advantages(
        &batch.rewards,
        &kl,
        &host.mask,
        dims[1],
        config.kl_reward_coef,
        config.gamma,
    )?;
    let adv = from_host::<B, 2>(out.advantages, dims, &batch.tokens.logp.device());
    clipped_surrogate("reinforce_pp", &batch.tokens, adv, &config.surrogate())
}

/// SPPO (Wu et al. 2024, *Self-Play Preference Optimization for Language Model Alignment*):
/// each sample's sequence log-ratio to the policy at the start of the update
/// (`old_logp`, π_t; on-policy: the detached current log-probs) regressed onto
/// `(P̂ − ½)/β`, where the sample's reward `P̂` is its estimated probability of beating the
/// policy (a win rate in [0, 1], e.g. from a pairwise judge); the mean squared error over
/// samples. Group structure is not used. No importance correction for stale samples.
pub fn sppo_loss<B: Backend>(
    batch: &GroupBatch<B>,
    config: &SppoConfig,
) -> Result<LossOutput<B, PolicyStats>> {
    config.validate()?;
    check_group_rows(batch)?;
    if let Some((k, p)) = batch
        .rewards
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        return Err(AlgoError::invalid(
            "rewards",
            format!(
                "sppo needs win probabilities in [0, 1] (a pairwise scorer's win rates); \
                 row {k} has {p}"
            ),
        ));
    }
    let host = check_tokens(&batch.tokens)?;
    let [rows, width] = host.dims;
    let device = batch.tokens.logp.device();
    let old = from_host::<B, 2>(host.old.clone(), host.dims, &device);
    let mask = batch.tokens.mask.clone();
    let log_ratio = ((batch.tokens.logp.clone() - old) * mask)
        .sum_dim(1)
        .reshape([rows]);
    let targets: Vec<f32> = batch
        .rewards
        .iter()
        .map(|p| ((f64::from(*p) - 0.5) / config.beta) as f32)
        .collect();
    let target = from_host::<B, 1>(targets.clone(), [rows], &device);
    let loss = (log_ratio - target).powi_scalar(2).mean();
    let value = checked_loss("sppo", &loss)?;
    // Token statistics against π_old, over valid tokens.
    let (mut ratio, mut kl, mut valid) = (0.0f64, 0.0f64, 0.0f64);
    for t in 0..rows * width {
        if host.mask[t] > 0.0 {
            let log_r = f64::from(host.logp[t] - host.old[t]);
            ratio += log_r.exp();
            kl += (-log_r).exp() - 1.0 + log_r;
            valid += 1.0;
        }
    }
    let stats = PolicyStats {
        loss: value,
        policy_loss: value,
        clip_fraction: 0.0,
        approx_kl: (kl / valid) as f32,
        ratio_mean: (ratio / valid) as f32,
        kl_reference: None,
        value_loss: None,
        value_clip_fraction: None,
        entropy: None,
        importance_weight: None,
        advantage_mean: targets.iter().sum::<f32>() / rows as f32,
    };
    Ok(LossOutput { loss, stats })
}
