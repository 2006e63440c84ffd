//! KL-penalty coefficient controllers: fixed, and the adaptive proportional controller of
//! Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences").

use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};
use crate::ops::{check_non_negative, check_positive};

/// Initial KL coefficient (TRL `PPOConfig.init_kl_coef`, from OpenAI's lm-human-preferences).
pub const DEFAULT_INIT_KL_COEF: f64 = 0.2;
/// Target KL in nats per sequence (lm-human-preferences / TRL `target = 6`).
pub const DEFAULT_KL_TARGET: f64 = 6.0;
/// Horizon in samples (lm-human-preferences / TRL `horizon = 10000`).
pub const DEFAULT_KL_HORIZON: f64 = 10_000.0;
/// Ziegler et al.'s clip of the proportional error.
pub const KL_ERROR_CLIP: f64 = 0.2;

/// Serialisable choice of KL controller (`{"name": "fixed", "coef": 0.05}` or
/// `{"name": "adaptive", ...}`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum KlControl {
    /// A constant coefficient.
    Fixed {
        /// β (≥ 0).
        coef: f64,
    },
    /// Ziegler et al.'s adaptive controller.
    Adaptive {
        /// Initial β (> 0).
        #[serde(default = "default_init")]
        init_coef: f64,
        /// Target KL (> 0).
        #[serde(default = "default_target")]
        target: f64,
        /// Horizon `H` in samples (> 0): `K_β = n_steps / H`.
        #[serde(default = "default_horizon")]
        horizon: f64,
    },
}

fn default_init() -> f64 {
    DEFAULT_INIT_KL_COEF
}
fn default_target() -> f64 {
    DEFAULT_KL_TARGET
}
fn default_horizon() -> f64 {
    DEFAULT_KL_HORIZON
}

impl Default for KlControl {
    fn default() -> Self {
        KlControl::Adaptive {
            init_coef: DEFAULT_INIT_KL_COEF,
            target: DEFAULT_KL_TARGET,
            horizon: DEFAULT_KL_HORIZON,
        }
    }
}

impl KlControl {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        match *self {
            KlControl::Fixed { coef } => check_non_negative("kl_control.coef", coef),
            KlControl::Adaptive {
                init_coef,
                target,
                horizon,
            } => {
                check_positive("kl_control.init_coef", init_coef)?;
                check_positive("kl_control.target", target)?;
                check_positive("kl_control.horizon", horizon)
            }
        }
    }

    /// Builds the controller.
    pub fn build(&self) -> Result<KlController> {
        self.validate()?;
        Ok(match *self {
            KlControl::Fixed { coef } => KlController::Fixed(coef),
            KlControl::Adaptive {
                init_coef,
                target,
                horizon,
            } => KlController::Adaptive(AdaptiveKlController {
                coef: init_coef,
                target,
                horizon,
            }),
        })
    }
}

/// Ziegler et al.'s controller: `e = clip(KL/target − 1, −0.2, 0.2)`,
/// `β ← β·(1 + e·n_steps/horizon)`. Serialisable for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKlController {
    /// Current β.
    pub coef: f64,
    /// Target KL.
    pub target: f64,
    /// Horizon in samples.
    pub horizon: f64,
}

impl AdaptiveKlController {
    /// Updates β from the KL observed over the last `n_steps` samples and returns it.
    /// A non-finite KL is rejected and leaves β unchanged.
    pub fn update(&mut self, observed_kl: f64, n_steps: u64) -> Result<f64> {
        if !observed_kl.is_finite() {
            return Err(AlgoError::NonFinite {
                input: "observed_kl",
                index: 0,
                value: observed_kl as f32,
            });
        }
        let error = (observed_kl / self.target - 1.0).clamp(-KL_ERROR_CLIP, KL_ERROR_CLIP);
        self.coef *= 1.0 + error * n_steps as f64 / self.horizon;
        Ok(self.coef)
    }
}

/// A KL coefficient that may adapt (the state the learner keeps between steps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum KlController {
    /// Constant β.
    Fixed(f64),
    /// Adaptive β.
    Adaptive(AdaptiveKlController),
}

impl KlController {
    /// The current coefficient.
    pub fn coef(&self) -> f64 {
        match self {
            KlController::Fixed(c) => *c,
            KlController::Adaptive(a) => a.coef,
        }
    }

    /// Feeds an observed KL; fixed controllers only validate it.
    pub fn update(&mut self, observed_kl: f64, n_steps: u64) -> Result<f64> {
        match self {
            KlController::Fixed(c) => {
                if observed_kl.is_finite() {
                    Ok(*c)
                } else {
                    Err(AlgoError::NonFinite {
                        input: "observed_kl",
                        index: 0,
                        value: observed_kl as f32,
                    })
                }
            }
            KlController::Adaptive(a) => a.update(observed_kl, n_steps),
        }
    }
}
