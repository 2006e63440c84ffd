//! The coordinator's typed, strict config (the `[coordinator]`, `[data]` and `[rollout]`
//! sections of a run file). Defaults are named constants; `validate()` names the bad field.

use std::path::PathBuf;

use rlhf_algo::UnitKind;
use serde::{Deserialize, Serialize};

use crate::CoordinatorError;

/// Where prompts come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A JSONL or Parquet prompt file (`prompt` or `messages`, optional `answer`, `id`, `group`).
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// A built-in task instead of a file (`letters`, `letters-1` ... `letters-6`).
    #[serde(default)]
    pub builtin: Option<String>,
    /// Prompts generated for a built-in task.
    #[serde(default = "default_builtin_prompts")]
    pub builtin_prompts: usize,
    /// Fraction of prompts held out for evaluation (by a stable hash of the id).
    #[serde(default = "default_heldout_fraction")]
    pub heldout_fraction: f64,
    /// Skip malformed dataset lines (and count them) instead of failing.
    #[serde(default)]
    pub skip_malformed: bool,
}

fn default_builtin_prompts() -> usize {
    256
}
fn default_heldout_fraction() -> f64 {
    0.1
}

/// Sampling settings of the rollout workers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: u32,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
}

fn default_max_new_tokens() -> u32 {
    64
}
fn default_temperature() -> f32 {
    1.0
}
fn default_top_p() -> f32 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new_tokens(),
            temperature: default_temperature(),
            top_k: 0,
            top_p: default_top_p(),
        }
    }
}

/// How scored samples become training units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsConfig {
    /// Pairs: `best_vs_worst` (one pair per prompt) or `all_pairs` (every pair whose score gap
    /// is at least `margin`).
    #[serde(default)]
    pub pairs: PairStrategy,
    /// Minimum score gap of `all_pairs`.
    #[serde(default)]
    pub margin: f32,
    /// Binary labels: desirable when the score is at least this.
    #[serde(default = "default_threshold")]
    pub desirable_at_least: f32,
    /// Binary labels: undesirable when the score is below this.
    #[serde(default = "default_threshold")]
    pub undesirable_below: f32,
    /// Groups (GRPO, RLOO, ...): skip prompts whose samples all scored the same (their
    /// advantages are all zero; DAPO's dynamic sampling). Off by default, as in GRPO.
    #[serde(default)]
    pub drop_uniform_groups: bool,
}

fn default_threshold() -> f32 {
    0.5
}

impl Default for UnitsConfig {
    fn default() -> Self {
        Self {
            pairs: PairStrategy::BestVsWorst,
            margin: 0.0,
            desirable_at_least: default_threshold(),
            undesirable_below: default_threshold(),
            drop_uniform_groups: false,
        }
    }
}

/// How preference pairs are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairStrategy {
    /// The best against the worst sample of each prompt (RLHF Workflow).
    #[default]
    BestVsWorst,
    /// Every pair whose score gap reaches `margin`.
    AllPairs,
}

/// The coordinator's own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Base seed of the run (prompt order, sampling).
    #[serde(default)]
    pub seed: u64,
    /// Where metrics, samples, the ledger, checkpoints and the plot are written.
    pub output_dir: PathBuf,
    /// Loop iterations (one policy update each).
    pub iterations: u64,
    /// Prompts leased per iteration.
    #[serde(default = "default_prompts_per_iteration")]
    pub prompts_per_iteration: usize,
    /// Completions sampled per prompt.
    #[serde(default = "default_samples_per_prompt")]
    pub samples_per_prompt: u32,
    /// Sampling settings.
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// Wrap prompts in the policy's chat template.
    #[serde(default = "default_true")]
    pub chat: bool,
    /// 0: synchronous, exactly on-policy. k > 0: generation runs ahead of training and samples
    /// up to k versions old are admitted (older ones are dropped and counted).
    #[serde(default)]
    pub max_policy_lag: u64,
    /// Offline baseline: always sample from the initial policy (version 0).
    #[serde(default)]
    pub offline: bool,
    /// How units are built from scores.
    #[serde(default)]
    pub units: UnitsConfig,
    /// Save a Hugging Face checkpoint every k iterations (0: only at the end). Every checkpoint
    /// carries what a resumed run needs (`resume`).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Continue from the newest resumable checkpoint in `output_dir` (`checkpoints/iter-N/` or
    /// `final/`, the one with the most iterations done) when there is one; start afresh
    /// otherwise. Logs are cut back to that checkpoint and appended to (`rlhf run --resume`).
    #[serde(default)]
    pub resume: bool,
    /// Evaluate on held-out prompts every k iterations (0: only at start and end).
    #[serde(default)]
    pub eval_every: u64,
    /// Held-out prompts per evaluation (at most the held-out set).
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Samples per held-out prompt in an evaluation.
    #[serde(default = "default_eval_samples")]
    pub eval_samples: u32,
    /// Seconds a rollout lease may take before it is re-leased elsewhere.
    #[serde(default = "default_lease_timeout_s")]
    pub lease_timeout_s: f64,
    /// Attempts per lease before the run fails.
    #[serde(default = "default_lease_attempts")]
    pub lease_attempts: u32,
    /// Seconds scoring one iteration may take (retries included) before the run fails.
    #[serde(default = "default_score_deadline_s")]
    pub score_deadline_s: f64,
    /// Prompts per Generate request to one worker.
    #[serde(default = "default_prompts_per_lease")]
    pub prompts_per_lease: usize,
    /// `host:port` to serve Prometheus metrics at (`GET /metrics`); none: not served.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Limit on gRPC messages, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_true() -> bool {
    true
}
fn default_prompts_per_iteration() -> usize {
    16
}
fn default_samples_per_prompt() -> u32 {
    4
}
fn default_eval_prompts() -> usize {
    32
}
fn default_eval_samples() -> u32 {
    2
}
fn default_lease_timeout_s() -> f64 {
    300.0
}
fn default_lease_attempts() -> u32 {
    3
}
fn default_score_deadline_s() -> f64 {
    300.0
}
fn default_prompts_per_lease() -> usize {
    16
}
fn default_max_message_bytes() -> usize {
    rlhf_proto::DEFAULT_MAX_MESSAGE_BYTES
}

impl CoordinatorConfig {
    /// Checks the settings for an objective that needs `kind` units, naming the bad field.
    pub fn validate(&self, data: &DataConfig, kind: UnitKind) -> Result<(), CoordinatorError> {
        let bad =
            |field: &str, msg: String| Err(CoordinatorError::Config(format!("{field}: {msg}")));
        if self.iterations == 0 {
            return bad("coordinator.iterations", "must be at least 1".into());
        }
        if self.prompts_per_iteration == 0 {
            return bad(
                "coordinator.prompts_per_iteration",
                "must be at least 1".into(),
            );
        }
        if self.prompts_per_lease == 0 {
            return bad("coordinator.prompts_per_lease", "must be at least 1".into());
        }
        let min_samples = match kind {
            UnitKind::Pairs | UnitKind::Lists | UnitKind::Groups => 2,
            _ => 1,
        };
        if self.samples_per_prompt < min_samples {
            return bad(
                "coordinator.samples_per_prompt",
                format!(
                    "the objective builds {kind:?} and needs at least {min_samples} samples per prompt"
                ),
            );
        }
        if !matches!(
            kind,
            UnitKind::Pairs
                | UnitKind::Lists
                | UnitKind::Binary
                | UnitKind::Groups
                | UnitKind::Rollouts
        ) {
            return bad(
                "learner.objective",
                format!(
                    "objectives that train on {kind:?} are not supported by the online loop yet (pairs, lists, binary labels, groups and rollouts are)"
                ),
            );
        }
        let s = &self.sampling;
        if s.max_new_tokens == 0 {
            return bad(
                "coordinator.sampling.max_new_tokens",
                "must be at least 1".into(),
            );
        }
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return bad("coordinator.sampling.temperature", "must be >= 0".into());
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return bad("coordinator.sampling.top_p", "must be in (0, 1]".into());
        }
        if !(self.lease_timeout_s > 0.0 && self.lease_timeout_s.is_finite()) {
            return bad("coordinator.lease_timeout_s", "must be positive".into());
        }
        if self.lease_attempts == 0 {
            return bad("coordinator.lease_attempts", "must be at least 1".into());
        }
        if !(self.score_deadline_s > 0.0 && self.score_deadline_s.is_finite()) {
            return bad("coordinator.score_deadline_s", "must be positive".into());
        }
        if self.units.undesirable_below > self.units.desirable_at_least {
            return bad(
                "coordinator.units.undesirable_below",
                "must not exceed desirable_at_least".into(),
            );
        }
        if !self.units.margin.is_finite() || self.units.margin < 0.0 {
            return bad("coordinator.units.margin", "must be >= 0".into());
        }
        match (&data.prompts, &data.builtin) {
            (None, None) => {
                return bad(
                    "data",
                    "set `prompts` (a JSONL or Parquet file) or `builtin` (a task name)".into(),
                );
            }
            (Some(_), Some(_)) => {
                return bad("data", "set only one of `prompts` and `builtin`".into());
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&data.heldout_fraction) {
            return bad("data.heldout_fraction", "must be in [0, 1)".into());
        }
        if data.builtin.is_some() && data.builtin_prompts == 0 {
            return bad("data.builtin_prompts", "must be at least 1".into());
        }
        Ok(())
    }
}
