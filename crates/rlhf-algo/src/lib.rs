//! rlhf-algo: RLHF objectives as pure functions over burn tensors.
//!
//! Every loss is generic over `B: Backend`, takes policy (and reference) log-probs as tensors,
//! returns `Result<LossOutput<B, _>, AlgoError>` — a differentiable scalar loss plus host
//! statistics — and rejects non-finite inputs with an error instead of panicking or training on
//! NaN. Formulas and papers are on each function; `docs/algorithms.md` has the overview table.
//!
//! - [`pairwise`]: DPO, IPO, cDPO, rDPO, LN-DPO, SimPO, soft-label DPO, RPO.
//! - [`listwise`]: PRO, LiPO-λ.
//! - [`binary`]: KTO, BCO.
//! - [`exploration`]: VPO, SELM, APO's Nesterov extrapolation of the reference.
//! - [`policy`]: PPO, GRPO, Dr. GRPO, RLOO, REINFORCE++, GAE, KL estimators and controllers,
//!   entropy, truncated importance sampling.
//! - [`reward_model`]: Bradley–Terry (with margin), ArmoRM-style multi-objective regression
//!   and gating, constrained combination of reward models.
//! - [`units`]: building pairs, rankings, binary labels and groups from scored samples.
//! - [`objective`]: the serde [`Objective`] enum, [`UnitKind`] and [`compute_loss`].

pub mod binary;
pub mod error;
pub mod exploration;
pub mod listwise;
pub mod objective;
pub mod ops;
pub mod output;
pub mod pairwise;
pub mod policy;
pub mod reward_model;
pub mod units;

#[cfg(test)]
pub(crate) mod testutil;

pub use error::{AlgoError, Result};
pub use objective::{Objective, ObjectiveInput, ObjectiveState, UnitKind, compute_loss};
pub use ops::TokenReduction;
pub use output::{BinaryStats, ListStats, LossOutput, PairStats, PolicyStats, RewardStats, Stats};
