//! The selection API: a serde-deserialisable [`Objective`] (config name + typed
//! hyperparameters with the papers' defaults), what training units it needs ([`UnitKind`]),
//! and [`compute_loss`], which dispatches a common [`ObjectiveInput`] to the right loss.
//!
//! ```
//! use rlhf_algo::{Objective, UnitKind};
//! let o: Objective = serde_json::from_str(r#"{"name": "ipo", "beta": 0.1}"#).expect("parses");
//! assert_eq!(o.kind(), UnitKind::Pairs);
//! o.validate().expect("valid");
//! ```

mod dispatch;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::binary::{BcoConfig, KtoConfig};
use crate::error::Result;
use crate::exploration::{SelmConfig, VpoConfig};
use crate::listwise::{LipoConfig, ProConfig};
use crate::pairwise::{
    CdpoConfig, DpoConfig, IpoConfig, LnDpoConfig, RdpoConfig, RpoConfig, SimpoConfig,
    SoftDpoConfig,
};
use crate::policy::{
    DrGrpoConfig, GrpoConfig, KlControl, PpoConfig, ReinforcePpConfig, RlooConfig, SppoConfig,
};
use crate::reward_model::BradleyTerryConfig;

pub use dispatch::{ObjectiveInput, ObjectiveState, compute_loss};

/// The training units an objective consumes (what the coordinator must build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// Preference pairs (chosen, rejected) per prompt.
    Pairs,
    /// Ranked lists of several responses per prompt.
    Lists,
    /// Single responses labelled desirable / undesirable.
    Binary,
    /// Groups of `G` scored samples per prompt (critic-free policy gradient).
    Groups,
    /// Scored samples with per-token advantages and values (PPO with a critic).
    Rollouts,
    /// Per-objective ratings (multi-objective reward-model regression).
    Ratings,
}

/// An objective and its hyperparameters, as written in a config file.
///
/// `{"name": "dpo", "beta": 0.1}`; omitted fields take the defaults documented on each config
/// type; unknown names and fields are rejected at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Objective {
    /// [`crate::pairwise::dpo_loss`].
    Dpo(DpoConfig),
    /// [`crate::pairwise::ipo_loss`].
    Ipo(IpoConfig),
    /// [`crate::pairwise::cdpo_loss`].
    Cdpo(CdpoConfig),
    /// [`crate::pairwise::rdpo_loss`].
    Rdpo(RdpoConfig),
    /// [`crate::pairwise::ln_dpo_loss`].
    LnDpo(LnDpoConfig),
    /// [`crate::pairwise::simpo_loss`].
    Simpo(SimpoConfig),
    /// [`crate::pairwise::soft_dpo_loss`].
    SoftDpo(SoftDpoConfig),
    /// [`crate::pairwise::rpo_loss`].
    Rpo(RpoConfig),
    /// [`crate::exploration::vpo_loss`].
    Vpo(VpoConfig),
    /// [`crate::exploration::selm_loss`].
    Selm(SelmConfig),
    /// [`crate::listwise::pro_loss`].
    Pro(ProConfig),
    /// [`crate::listwise::lipo_lambda_loss`].
    LipoLambda(LipoConfig),
    /// [`crate::binary::kto_loss`].
    Kto(KtoConfig),
    /// [`crate::binary::bco_loss`].
    Bco(BcoConfig),
    /// [`crate::policy::ppo_loss`].
    Ppo(PpoConfig),
    /// [`crate::policy::grpo_loss`].
    Grpo(GrpoConfig),
    /// [`crate::policy::dr_grpo_loss`].
    DrGrpo(DrGrpoConfig),
    /// [`crate::policy::rloo_loss`].
    Rloo(RlooConfig),
    /// [`crate::policy::reinforce_pp_loss`].
    ReinforcePp(ReinforcePpConfig),
    /// [`crate::policy::sppo_loss`].
    Sppo(SppoConfig),
    /// [`crate::reward_model::bradley_terry_loss`].
    BradleyTerry(BradleyTerryConfig),
    /// [`crate::reward_model::multi_objective_regression_loss`].
    ArmoRegression(ArmoRegressionConfig),
}

/// Config of the ArmoRM regression stage (`name = "armo_regression"`; no hyperparameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmoRegressionConfig {}

impl Objective {
    /// Every config name, in declaration order.
    pub const NAMES: [&'static str; 22] = [
        "dpo",
        "ipo",
        "cdpo",
        "rdpo",
        "ln_dpo",
        "simpo",
        "soft_dpo",
        "rpo",
        "vpo",
        "selm",
        "pro",
        "lipo_lambda",
        "kto",
        "bco",
        "ppo",
        "grpo",
        "dr_grpo",
        "rloo",
        "reinforce_pp",
        "sppo",
        "bradley_terry",
        "armo_regression",
    ];

    /// The config name (`"dpo"`, `"lipo_lambda"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Dpo(_) => "dpo",
            Objective::Ipo(_) => "ipo",
            Objective::Cdpo(_) => "cdpo",
            Objective::Rdpo(_) => "rdpo",
            Objective::LnDpo(_) => "ln_dpo",
            Objective::Simpo(_) => "simpo",
            Objective::SoftDpo(_) => "soft_dpo",
            Objective::Rpo(_) => "rpo",
            Objective::Vpo(_) => "vpo",
            Objective::Selm(_) => "selm",
            Objective::Pro(_) => "pro",
            Objective::LipoLambda(_) => "lipo_lambda",
            Objective::Kto(_) => "kto",
            Objective::Bco(_) => "bco",
            Objective::Ppo(_) => "ppo",
            Objective::Grpo(_) => "grpo",
            Objective::DrGrpo(_) => "dr_grpo",
            Objective::Rloo(_) => "rloo",
            Objective::ReinforcePp(_) => "reinforce_pp",
            Objective::Sppo(_) => "sppo",
            Objective::BradleyTerry(_) => "bradley_terry",
            Objective::ArmoRegression(_) => "armo_regression",
        }
    }

    /// What training units the objective needs.
    pub fn kind(&self) -> UnitKind {
        match self {
            Objective::Dpo(_)
            | Objective::Ipo(_)
            | Objective::Cdpo(_)
            | Objective::Rdpo(_)
            | Objective::LnDpo(_)
            | Objective::Simpo(_)
            | Objective::SoftDpo(_)
            | Objective::Rpo(_)
            | Objective::Vpo(_)
            | Objective::Selm(_)
            | Objective::BradleyTerry(_) => UnitKind::Pairs,
            Objective::Pro(_) | Objective::LipoLambda(_) => UnitKind::Lists,
            Objective::Kto(_) | Objective::Bco(_) => UnitKind::Binary,
            Objective::Grpo(_)
            | Objective::DrGrpo(_)
            | Objective::Rloo(_)
            | Objective::ReinforcePp(_)
            | Objective::Sppo(_) => UnitKind::Groups,
            Objective::Ppo(_) => UnitKind::Rollouts,
            Objective::ArmoRegression(_) => UnitKind::Ratings,
        }
    }

    /// Whether computing this objective's loss needs reference-model log-probs, so the learner
    /// can skip the reference forward pass when it does not. (PPO and RLOO with the KL in the
    /// reward still need them to build the rewards; that is the caller's side.)
    pub fn needs_reference(&self) -> bool {
        match self {
            Objective::Simpo(_) | Objective::Pro(_) | Objective::Sppo(_) => false,
            Objective::BradleyTerry(_) | Objective::ArmoRegression(_) => false,
            Objective::Ppo(c) => c.kl_coef > 0.0 || c.kl_reward != KlControl::Fixed { coef: 0.0 },
            Objective::Rloo(c) => c.kl_coef > 0.0,
            Objective::Grpo(c) => c.kl_coef > 0.0,
            Objective::DrGrpo(c) => c.kl_coef > 0.0,
            Objective::ReinforcePp(c) => c.kl_reward_coef > 0.0,
            _ => true,
        }
    }

    /// Checks every hyperparameter; the error names the offending field (`rdpo.epsilon`).
    pub fn validate(&self) -> Result<()> {
        match self {
            Objective::Dpo(c) => c.validate(),
            Objective::Ipo(c) => c.validate(),
            Objective::Cdpo(c) => c.validate(),
            Objective::Rdpo(c) => c.validate(),
            Objective::LnDpo(c) => c.validate(),
            Objective::Simpo(c) => c.validate(),
            Objective::SoftDpo(c) => c.validate(),
            Objective::Rpo(c) => c.validate(),
            Objective::Vpo(c) => c.validate(),
            Objective::Selm(c) => c.validate(),
            Objective::Pro(c) => c.validate(),
            Objective::LipoLambda(c) => c.validate(),
            Objective::Kto(c) => c.validate(),
            Objective::Bco(c) => c.validate(),
            Objective::Ppo(c) => c.validate(),
            Objective::Grpo(c) => c.validate(),
            Objective::DrGrpo(c) => c.validate(),
            Objective::Rloo(c) => c.validate(),
            Objective::ReinforcePp(c) => c.validate(),
            Objective::Sppo(c) => c.validate(),
            Objective::BradleyTerry(c) => c.validate(),
            Objective::ArmoRegression(_) => Ok(()),
        }
    }
}
