//! rlhf-reward: the reward scorers of the online loop.
//!
//! Every reward source implements the async, object-safe [`Scorer`] trait: a batch of
//! [`ScoreInput`]s in, one `Result<`[`Score`]`, `[`ScoreError`]`>` per input out. A missing
//! reward is an explicit error with a kind (timeout, unreachable, invalid, non-finite, ...),
//! never a silent 0.
//!
//! - [`scorer`]: the trait, its types, and [`CheckedScorer`] (rejects and counts non-finite
//!   values).
//! - [`rules`]: regex, exact-answer and length-target rewards, and task functions registered by
//!   name in a [`RuleRegistry`].
//! - [`reward_model`]: a Hugging Face sequence-classification reward model on the CPU.
//! - [`follow_up`]: follow-up likelihood under a causal LM as reward.
//! - [`judge`]: an LLM judge over the OpenAI chat-completions API, pointwise or pairwise with
//!   position-bias calibration, with deadlines and retries.
//! - [`lm_judge`]: a local causal LM, or the policy being trained (self-rewarding), as judge
//!   through its next-token probabilities, pointwise or as a pairwise preference model.
//! - [`ensemble`]: a weighted combination of scorers.
//! - [`human`]: people label a base scorer's uncertain pairs on a web page, with deadlines and
//!   provenance per label.
//! - [`config`]: the typed, strict [`ScorerConfig`] that validates and builds all of the above.
//! - [`error`]: [`ScoreError`] (per sample) and [`RewardError`] (building).

#![warn(missing_docs)]

pub mod config;
pub mod ensemble;
pub mod error;
pub mod follow_up;
pub mod human;
pub mod judge;
pub mod lm_judge;
mod local_model;
pub mod reward_model;
pub mod rules;
pub mod scorer;
pub mod service;

pub use config::ScorerConfig;
pub use ensemble::{EnsembleConfig, EnsembleMember, EnsembleScorer, OnMissing};
pub use error::{RewardError, ScoreError, ScoreErrorKind};
pub use follow_up::{FollowUpConfig, FollowUpScorer};
pub use human::{HumanConfig, HumanScorer, HumanStats, OnTimeout, Route};
pub use judge::{
    Comparison, JudgeConfig, JudgeMode, JudgeScorer, PairwiseSummary, Verdict, pairwise::PairJudge,
};
pub use lm_judge::{LmJudgeConfig, LmJudgeScorer};
pub use reward_model::{RewardModelConfig, RewardModelScorer};
pub use rules::{
    ExactAnswerConfig, ExactAnswerScorer, Extract, LengthTargetConfig, LengthTargetScorer,
    LengthUnit, RegexConfig, RegexMode, RegexScorer, RuleConfig, RuleFn, RuleRegistry, RuleScorer,
};
pub use scorer::{CheckedScorer, PolicyRef, Score, ScoreInput, ScoreStats, Scorer};
pub use service::{RewardService, ScorerServiceConfig, builtin_rules, run};
