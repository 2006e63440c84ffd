//! The DPO-family losses over [`PairBatch`]es, each with its typed config.
//!
//! Notation: `h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))` with summed
//! log-probs, `σ` the logistic function, `|y|` the response length in tokens.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{
    Needs, PairBatch, check, finish, host_rewards, log_ratio_margin, required, smoothed_sigmoid,
};
use crate::error::Result;
use crate::ops::{check_non_negative, check_positive, check_range, checked_loss};
use crate::output::{LossOutput, PairStats};

/// DPO's β (Rafailov et al. 2023 use 0.1 for most experiments; TRL's default).
pub const DEFAULT_DPO_BETA: f64 = 0.1;
/// IPO's τ (TRL's default `beta` for `loss_type = "ipo"`; the paper tunes τ).
pub const DEFAULT_IPO_TAU: f64 = 0.1;
/// cDPO / rDPO label-flip rate ε. Neither paper fixes one; 0.1 is our default.
pub const DEFAULT_FLIP_RATE: f64 = 0.1;
/// LN-DPO's β. Per-token log-ratios are ~|y| times smaller than summed ones, so β is larger
/// than DPO's; 1.0 is our default (Saeidi et al. 2024 sweep β).
pub const DEFAULT_LN_DPO_BETA: f64 = 1.0;
/// SimPO's β (princeton-nlp/SimPO `scripts/simpo_config.py`: `beta = 2.0`).
pub const DEFAULT_SIMPO_BETA: f64 = 2.0;
/// SimPO's γ/β (same file: `gamma_beta_ratio = 0.25`, i.e. γ = 0.5 with β = 2).
pub const DEFAULT_SIMPO_GAMMA_BETA_RATIO: f64 = 0.25;
/// RPO's NLL weight α (Pang et al. 2024 use α = 1; TRL's recommended `rpo_alpha`).
pub const DEFAULT_RPO_ALPHA: f64 = 1.0;

macro_rules! beta_config {
    ($(#[$doc:meta])* $name:ident, $default:expr, $obj:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Inverse temperature β (> 0).
            pub beta: f64,
        }
        impl Default for $name {
            fn default() -> Self {
                Self { beta: $default }
            }
        }
        impl $name {
            /// Checks the hyperparameters; the error names the field.
            pub fn validate(&self) -> Result<()> {
                check_positive(concat!($obj, ".beta"), self.beta)
            }
        }
    };
}

beta_config!(
    /// Config of [`dpo_loss`] (`name = "dpo"`).
    DpoConfig, DEFAULT_DPO_BETA, "dpo"
);
beta_config!(
    /// Config of [`ipo_loss`] (`name = "ipo"`); `beta` is the paper's τ.
    IpoConfig, DEFAULT_IPO_TAU, "ipo"
);
beta_config!(
    /// Config of [`ln_dpo_loss`] (`name = "ln_dpo"`).
    LnDpoConfig, DEFAULT_LN_DPO_BETA, "ln_dpo"
);
beta_config!(
    /// Config of [`soft_dpo_loss`] (`name = "soft_dpo"`).
    SoftDpoConfig, DEFAULT_DPO_BETA, "soft_dpo"
);

/// Config of [`cdpo_loss`] (`name = "cdpo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdpoConfig {
    /// Inverse temperature β (> 0).
    pub beta: f64,
    /// Assumed label-flip probability ε in `[0, 0.5)`.
    pub label_smoothing: f64,
}

impl Default for CdpoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_DPO_BETA,
            label_smoothing: DEFAULT_FLIP_RATE,
        }
    }
}

impl CdpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("cdpo.beta", self.beta)?;
        check_range(
            "cdpo.label_smoothing",
            self.label_smoothing,
            0.0,
            0.5,
            true,
            false,
        )
    }
}

/// Config of [`rdpo_loss`] (`name = "rdpo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RdpoConfig {
    /// Inverse temperature β (> 0).
    pub beta: f64,
    /// Label-flip rate ε in `[0, 0.5)` (the loss divides by `1 − 2ε`).
    pub epsilon: f64,
}

impl Default for RdpoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_DPO_BETA,
            epsilon: DEFAULT_FLIP_RATE,
        }
    }
}

impl RdpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("rdpo.beta", self.beta)?;
        check_range("rdpo.epsilon", self.epsilon, 0.0, 0.5, true, false)
    }
}

/// Config of [`simpo_loss`] (`name = "simpo"`), parameterised like the authors' code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimpoConfig {
    /// Reward scale β (> 0).
    pub beta: f64,
    /// Target margin over β, `γ/β` (≥ 0); the margin is `γ = β·gamma_beta_ratio`.
    pub gamma_beta_ratio: f64,
}

impl Default for SimpoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_SIMPO_BETA,
            gamma_beta_ratio: DEFAULT_SIMPO_GAMMA_BETA_RATIO,
        }
    }
}

impl SimpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("simpo.beta", self.beta)?;
        check_non_negative("simpo.gamma_beta_ratio", self.gamma_beta_ratio)
    }
}

/// Config of [`rpo_loss`] (`name = "rpo"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpoConfig {
    /// DPO's β (> 0).
    pub beta: f64,
    /// Weight α (≥ 0) of the per-token NLL of the chosen response.
    pub alpha: f64,
}

impl Default for RpoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_DPO_BETA,
            alpha: DEFAULT_RPO_ALPHA,
        }
    }
}

impl RpoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("rpo.beta", self.beta)?;
        check_non_negative("rpo.alpha", self.alpha)
    }
}

const WITH_REF: Needs = Needs {
    reference: true,
    tokens: false,
    preference: false,
};

/// Shared body of the losses that are a function of `β·h` plus reference rewards.
fn reference_loss<B: Backend>(
    objective: &'static str,
    batch: &PairBatch<B>,
    beta: f64,
    needs: Needs,
    per_pair: impl FnOnce(burn::tensor::Tensor<B, 1>) -> burn::tensor::Tensor<B, 1>,
) -> Result<LossOutput<B, PairStats>> {
    let host = check(objective, batch, needs)?;
    let ones = vec![1.0; batch.len()];
    let rc = host_rewards(&host.policy_chosen, &host.reference_chosen, &ones, beta);
    let rr = host_rewards(&host.policy_rejected, &host.reference_rejected, &ones, beta);
    let h = log_ratio_margin(batch)?;
    finish(objective, per_pair(h), None, &rc, &rr)
}

/// DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):
/// `L = −log σ(β·h)`.
pub fn dpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &DpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let beta = config.beta;
    reference_loss("dpo", batch, beta, WITH_REF, |h| {
        smoothed_sigmoid(h * beta, 0.0)
    })
}

/// IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
/// Preferences", eq. 17): `L = (h − 1/(2τ))²`, minimised at `h = 1/(2τ)`.
///
/// `h` uses whatever log-probs are passed; TRL passes length-averaged ones for IPO.
pub fn ipo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &IpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let target = 1.0 / (2.0 * config.beta);
    reference_loss("ipo", batch, config.beta, WITH_REF, |h| {
        (h - target).powi_scalar(2)
    })
}

/// Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"; TRL
/// `label_smoothing`): `L = −(1−ε)·log σ(β·h) − ε·log σ(−β·h)`. `ε = 0` is DPO.
pub fn cdpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &CdpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let (beta, eps) = (config.beta, config.label_smoothing);
    reference_loss("cdpo", batch, beta, WITH_REF, |h| {
        smoothed_sigmoid(h * beta, eps)
    })
}

/// Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"), unbiased when labels flip
/// with probability ε: `L = [(1−ε)·(−log σ(β·h)) − ε·(−log σ(−β·h))] / (1 − 2ε)`. `ε = 0` is DPO.
pub fn rdpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &RdpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let (beta, eps) = (config.beta, config.epsilon);
    reference_loss("rdpo", batch, beta, WITH_REF, |h| {
        let z = h * beta;
        let pos = log_sigmoid(z.clone()).neg() * (1.0 - eps);
        let neg = log_sigmoid(z.neg()).neg() * eps;
        (pos - neg) / (1.0 - 2.0 * eps)
    })
}

/// Soft-label DPO: binary cross-entropy of `σ(β·h)` against a preference strength `p ∈ [0,1]`,
/// `L = −p·log σ(β·h) − (1−p)·log σ(−β·h)` (the per-pair form of cDPO with `ε = 1 − p`; soft
/// preference labels as discussed by Furuta et al. 2024, "Geometric-Averaged Preference
/// Optimization for Soft Preference Labels"). `p = 1` is DPO. Needs `preference`.
pub fn soft_dpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &SoftDpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let beta = config.beta;
    let needs = Needs {
        preference: true,
        ..WITH_REF
    };
    let p = required("soft_dpo", "preference", &batch.preference)?.clone();
    reference_loss("soft_dpo", batch, beta, needs, move |h| {
        let z = h * beta;
        let pos = log_sigmoid(z.clone()).neg() * p.clone();
        let neg = log_sigmoid(z.neg()).neg() * p.neg().add_scalar(1.0);
        pos + neg
    })
}

/// LN-DPO (Saeidi et al. 2024, "Insights into Alignment: Evaluating DPO and its Variants" /
/// "The Hitchhiker's Guide to Human Alignment with *PO"): DPO on per-token log-ratios,
/// `L = −log σ(β·[(log π(y_c) − log π_ref(y_c))/|y_c| − (log π(y_r) − log π_ref(y_r))/|y_r|])`.
/// Needs token counts.
pub fn ln_dpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &LnDpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let needs = Needs {
        tokens: true,
        ..WITH_REF
    };
    let host = check("ln_dpo", batch, needs)?;
    let beta = config.beta;
    let rc = host_rewards(
        &host.policy_chosen,
        &host.reference_chosen,
        &host.chosen_tokens,
        beta,
    );
    let rr = host_rewards(
        &host.policy_rejected,
        &host.reference_rejected,
        &host.rejected_tokens,
        beta,
    );
    let ref_c = required("ln_dpo", "reference_chosen", &batch.reference_chosen)?;
    let ref_r = required("ln_dpo", "reference_rejected", &batch.reference_rejected)?;
    let nc = required("ln_dpo", "chosen_tokens", &batch.chosen_tokens)?;
    let nr = required("ln_dpo", "rejected_tokens", &batch.rejected_tokens)?;
    let chosen = (batch.policy_chosen.clone() - ref_c.clone()) / nc.clone();
    let rejected = (batch.policy_rejected.clone() - ref_r.clone()) / nr.clone();
    let per_pair = smoothed_sigmoid((chosen - rejected) * beta, 0.0);
    finish("ln_dpo", per_pair, None, &rc, &rr)
}

/// SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
/// Reward", eq. 6): `L = −log σ(β/|y_c|·log π(y_c) − β/|y_r|·log π(y_r) − γ)` with
/// `γ = β·gamma_beta_ratio`. Reference-free; needs token counts. Rewards are `β·log π/|y|`.
pub fn simpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &SimpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let needs = Needs {
        tokens: true,
        ..Needs::default()
    };
    let host = check("simpo", batch, needs)?;
    let beta = config.beta;
    let zeros = vec![0.0; batch.len()];
    let rc = host_rewards(&host.policy_chosen, &zeros, &host.chosen_tokens, beta);
    let rr = host_rewards(&host.policy_rejected, &zeros, &host.rejected_tokens, beta);
    let nc = required("simpo", "chosen_tokens", &batch.chosen_tokens)?;
    let nr = required("simpo", "rejected_tokens", &batch.rejected_tokens)?;
    let avg_c = batch.policy_chosen.clone() / nc.clone();
    let avg_r = batch.policy_rejected.clone() / nr.clone();
    let z = (avg_c - avg_r).sub_scalar(config.gamma_beta_ratio) * beta;
    finish("simpo", smoothed_sigmoid(z, 0.0), None, &rc, &rr)
}

/// RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): DPO plus a
/// per-token NLL of the chosen response, `L = −log σ(β·h) − α·log π(y_c)/|y_c|`.
/// Needs reference and token counts (only `chosen_tokens` is read).
pub fn rpo_loss<B: Backend>(
    batch: &PairBatch<B>,
    config: &RpoConfig,
) -> Result<LossOutput<B, PairStats>> {
    config.validate()?;
    let host = check("rpo", batch, WITH_REF)?;
    let nc = required("rpo", "chosen_tokens", &batch.chosen_tokens)?;
    let counts = super::checked_1d("chosen_tokens", nc, batch.len())?;
    super::positive_counts("chosen_tokens", &counts)?;
    let ones = vec![1.0; batch.len()];
    let rc = host_rewards(
        &host.policy_chosen,
        &host.reference_chosen,
        &ones,
        config.beta,
    );
    let rr = host_rewards(
        &host.policy_rejected,
        &host.reference_rejected,
        &ones,
        config.beta,
    );
    let nll = (batch.policy_chosen.clone() / nc.clone()).neg().mean();
    let nll_value = checked_loss("rpo", &nll)?;
    let per_pair = smoothed_sigmoid(log_ratio_margin(batch)? * config.beta, 0.0);
    let mut out = finish("rpo", per_pair, Some(nll * config.alpha), &rc, &rr)?;
    out.stats.nll = Some(nll_value);
    Ok(out)
}
