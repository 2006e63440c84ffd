//! rlhf-eval: did alignment work? Offline evaluation of one or more policies (Hugging Face
//! checkpoint folders) on a prompt set, written for `rlhf eval CONFIG`.
//!
//! Per policy: the mean and median reward under each scorer with a confidence interval, the
//! number scored and the number of scoring failures (never counted as 0); response lengths
//! (tokens, characters, the fraction ended by EOS); KL to a reference policy (the k1
//! Monte-Carlo estimate on the policy's own samples); ranking accuracy on a preference dataset,
//! plain and reference-adjusted (Chen et al. 2024); all of it per prompt group too. Across
//! policies: the win rate of A over B under any scorer (higher score wins) or under an LLM
//! judge that sees both orders (position bias calibrated away, agreement reported).
//!
//! - [`config`]: the strict TOML config ([`EvalConfig`]); its validation lives in `validate`.
//! - [`run`]: [`run_eval`], the orchestration.
//! - [`prompts`], [`sample`], [`scoring`], [`ranking`], [`pairwise`]: loading, generation,
//!   scoring, preference log-likelihoods and win rates.
//! - [`summary`], [`stats`]: summaries and the bootstrap confidence intervals (method in
//!   [`stats`]).
//! - [`cache`]: the JSONL result cache that makes a run resumable.
//! - [`report`], [`table`]: the report ([`EvalReport`], JSON) and its text table.
//!
//! Models run on the device `device` names (`cpu`, or `cuda:N` in builds with the `cuda`
//! feature).
//! Samples use the rollout workers' per-sample seeds (`rlhf_rollout::sample_seed`), so an eval
//! with a run's seed sees the samples the loop would.

pub mod cache;
pub mod config;
pub mod error;
pub mod model;
pub mod pairwise;
pub mod prompts;
pub mod ranking;
pub mod report;
pub mod run;
pub mod sample;
pub mod scoring;
pub mod stats;
pub mod summary;
pub mod table;
mod validate;

pub use config::{
    EvalConfig, Fingerprint, GenerationConfig, JudgeSection, NamedScorer, OutputConfig,
    PolicyConfig, PromptsConfig, RankingConfig, ReferenceConfig, SplitChoice, StatsConfig,
};
pub use error::EvalError;
pub use report::{
    Distribution, EvalReport, GroupReport, KlSummary, LengthStats, PolicyReport, RankingSummary,
    RewardSummary, Settings, WinRate, WorkCounts,
};
pub use run::run_eval;
pub use stats::Interval;
