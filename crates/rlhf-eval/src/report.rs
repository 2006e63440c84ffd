//! The report: plain serde types (written as `report.json`), with the human-readable table in
//! [`crate::table`]. A statistic with no data is `None` (`null`, `–` in the table), never 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::GenerationConfig;
use crate::stats::Interval;

/// Everything an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// What was evaluated and how.
    pub settings: Settings,
    /// One entry per policy, in config order.
    pub policies: Vec<PolicyReport>,
    /// Win rates of A over B, per pair and judge.
    pub win_rates: Vec<WinRate>,
    /// How much was computed and how much came from the cache.
    pub work: WorkCounts,
}

impl EvalReport {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report of a policy by name.
    pub fn policy(&self, name: &str) -> Option<&PolicyReport> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The win rate of `a` over `b` under `judge` (a scorer's name, or `llm:<model>`).
    pub fn win_rate(&self, a: &str, b: &str, judge: &str) -> Option<&WinRate> {
        self.win_rates
            .iter()
            .find(|w| w.a == a && w.b == b && w.judge == judge)
    }
}

/// The settings the numbers depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Prompts sampled (0 without `[prompts]`).
    pub prompts: usize,
    /// The sampling settings.
    pub generation: GenerationConfig,
    /// The scorers, by name.
    pub scorers: Vec<String>,
    /// The reference checkpoint, if any.
    pub reference: Option<String>,
    /// The preference dataset, if any.
    pub ranking_data: Option<String>,
    /// The confidence level of every interval.
    pub ci_level: f64,
    /// How the confidence intervals were computed.
    pub ci_method: String,
    /// Caveats about these numbers (e.g. KL under tempered sampling).
    pub notes: Vec<String>,
}

/// One policy's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// The policy's name.
    pub name: String,
    /// The checkpoint folder.
    pub path: String,
    /// Its identity in cache keys.
    pub fingerprint: String,
    /// Samples drawn (prompts × samples per prompt).
    pub samples: usize,
    /// Per scorer, in config order.
    pub rewards: Vec<RewardSummary>,
    /// Response lengths (None without prompts).
    pub length: Option<LengthStats>,
    /// KL to the reference on this policy's samples (None without a reference).
    pub kl: Option<KlSummary>,
    /// Ranking accuracy (None without `[ranking]`).
    pub ranking: Option<RankingSummary>,
    /// Per prompt group, when prompts carry `group` (sorted by group).
    pub groups: Vec<GroupReport>,
}

/// The rewards one scorer gave one policy's samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSummary {
    /// The scorer's name.
    pub scorer: String,
    /// Samples with a reward.
    pub scored: usize,
    /// Samples without one (any error), never counted as 0.
    pub failed: usize,
    /// Failures by error kind (`timeout`, `invalid`, `non_finite`, ...).
    pub failures: BTreeMap<String, usize>,
    /// Mean over scored samples.
    pub mean: Option<f64>,
    /// Median over scored samples.
    pub median: Option<f64>,
    /// Confidence interval of the mean (bootstrap over prompts).
    pub ci: Option<Interval>,
}

/// Mean, median and 90th percentile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile (linear interpolation).
    pub p90: f64,
}

/// Response lengths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    /// Samples measured.
    pub samples: usize,
    /// Tokens, not counting the stop token that ended a response.
    pub tokens: Option<Distribution>,
    /// Characters of the decoded response (special tokens removed).
    pub chars: Option<Distribution>,
    /// The fraction of responses ended by a stop (EOS) token rather than the length limit.
    pub finished_by_eos: Option<f64>,
}

/// KL(π‖π_ref) estimated on the policy's own samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KlSummary {
    /// The k1 Monte-Carlo estimate: the mean over samples y ~ π of
    /// Σ_t [log π(y_t) − log π_ref(y_t)] (unbiased for the sequence KL; single samples can be
    /// negative).
    pub mean: f64,
    /// Confidence interval of the mean (bootstrap over prompts).
    pub ci: Option<Interval>,
    /// Samples used.
    pub samples: usize,
}

/// Results restricted to one prompt group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// The group label.
    pub group: String,
    /// Prompts in the group.
    pub prompts: usize,
    /// Per scorer, in config order.
    pub rewards: Vec<RewardSummary>,
    /// Response lengths in the group.
    pub length: LengthStats,
}

/// The win rate of policy A over policy B under one judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    /// Policy A.
    pub a: String,
    /// Policy B.
    pub b: String,
    /// A scorer's name (higher score wins) or `llm:<model>` (judged in both orders).
    pub judge: String,
    /// Comparisons made: sample k of A against sample k of B, for every prompt and k.
    pub compared: usize,
    /// Comparisons that could not be made (a missing score, a judge error).
    pub failed: usize,
    /// Comparisons A won (calibrated verdicts for an LLM judge).
    pub wins_a: usize,
    /// Comparisons B won.
    pub wins_b: usize,
    /// Ties (equal scores; for an LLM judge, also the two orders disagreeing).
    pub ties: usize,
    /// The mean of 1 (A wins), ½ (tie), 0 (B wins); for an LLM judge, the mean calibrated
    /// probability that A is better.
    pub win_rate_a: Option<f64>,
    /// Confidence interval of the win rate (bootstrap over prompts).
    pub ci: Option<Interval>,
    /// LLM judge only: the fraction of comparisons whose two orders agreed.
    pub position_agreement: Option<f64>,
    /// LLM judge only: how often the first-shown answer won before calibration (½ = unbiased).
    pub first_position_rate: Option<f64>,
}

/// Ranking accuracy on a preference dataset (Chen et al. 2024).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingSummary {
    /// Pairs measured.
    pub pairs: usize,
    /// Pairs skipped (a side longer than `ranking.max_len`).
    pub skipped: usize,
    /// The fraction of pairs with log π(chosen) > log π(rejected) (summed log-probs; ties ½).
    pub accuracy: Option<f64>,
    /// Confidence interval of the accuracy (bootstrap over pairs).
    pub accuracy_ci: Option<Interval>,
    /// The fraction with log π(y_c)/π_ref(y_c) > log π(y_r)/π_ref(y_r) (ties ½): the DPO
    /// implicit-reward ranking. None without a reference.
    pub reference_adjusted: Option<f64>,
    /// Its confidence interval.
    pub reference_adjusted_ci: Option<Interval>,
    /// Mean of log π(chosen) − log π(rejected).
    pub mean_margin: Option<f64>,
}

/// Work done and avoided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkCounts {
    /// Samples generated in this run.
    pub generated: u64,
    /// Samples taken from the cache.
    pub cached_generations: u64,
    /// Scorer calls' results computed (successes and failures).
    pub scored: u64,
    /// Scores taken from the cache.
    pub cached_scores: u64,
    /// Teacher-forced sequence log-probs computed (reference and ranking).
    pub computed_logps: u64,
    /// Sequence log-probs taken from the cache.
    pub cached_logps: u64,
    /// LLM judge comparisons made (each is two requests).
    pub judged: u64,
    /// Comparisons taken from the cache.
    pub cached_judgements: u64,
}
