//! Regular-expression rewards: a fixed reward for matching (or not matching) a pattern, or a
//! reward per match (format rewards: "has a `<think>` block", "cites sources", ...).

use async_trait::async_trait;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::check_finite;
use crate::error::{RewardError, ScoreError};
use crate::scorer::{Score, ScoreInput, Scorer};

/// Default reward for a match in [`RegexMode::Match`].
pub const DEFAULT_MATCH_REWARD: f64 = 1.0;
/// Default reward per match in [`RegexMode::Count`].
pub const DEFAULT_PER_MATCH: f64 = 1.0;

/// What a [`RegexScorer`] rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegexMode {
    /// `match_reward` if the pattern matches anywhere, else `no_match_reward`.
    #[default]
    Match,
    /// `per_match` times the number of non-overlapping matches (capped by `max_matches`).
    Count,
}

/// Config of a [`RegexScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexConfig {
    /// The pattern (Rust `regex` syntax; `(?s)`, `(?i)` flags inline).
    pub pattern: String,
    /// Reward a match, or count matches.
    #[serde(default)]
    pub mode: RegexMode,
    /// The reward when the pattern matches (match mode).
    #[serde(default = "default_match_reward")]
    pub match_reward: f64,
    /// The reward when it does not (match mode).
    #[serde(default)]
    pub no_match_reward: f64,
    /// The reward per match (count mode).
    #[serde(default = "default_per_match")]
    pub per_match: f64,
    /// At most this many matches are rewarded (count mode), so that repetition does not pay.
    #[serde(default)]
    pub max_matches: Option<usize>,
}

fn default_match_reward() -> f64 {
    DEFAULT_MATCH_REWARD
}

fn default_per_match() -> f64 {
    DEFAULT_PER_MATCH
}

impl RegexConfig {
    /// A match-mode config with the default rewards (1 for a match, 0 otherwise).
    pub fn matching(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            mode: RegexMode::Match,
            match_reward: DEFAULT_MATCH_REWARD,
            no_match_reward: 0.0,
            per_match: DEFAULT_PER_MATCH,
            max_matches: None,
        }
    }

    /// Checks the fields; `at` is this config's path for error messages.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        Regex::new(&self.pattern)
            .map_err(|e| RewardError::config(format!("{at}pattern"), e.to_string()))?;
        check_finite(format!("{at}match_reward"), self.match_reward)?;
        check_finite(format!("{at}no_match_reward"), self.no_match_reward)?;
        check_finite(format!("{at}per_match"), self.per_match)?;
        if self.max_matches == Some(0) {
            return Err(RewardError::config(
                format!("{at}max_matches"),
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        Ok(())
    }
}

/// Rewards completions that match a pattern.
pub struct RegexScorer {
    config: RegexConfig,
    regex: Regex,
    provenance: String,
}

impl RegexScorer {
    /// Compiles the pattern.
    pub fn new(config: &RegexConfig) -> Result<Self, RewardError> {
        config.validate("")?;
        let regex = Regex::new(&config.pattern)
            .map_err(|e| RewardError::config("pattern", e.to_string()))?;
        Ok(Self {
            provenance: format!("regex:{}", config.pattern),
            config: config.clone(),
            regex,
        })
    }

    fn score_one(&self, input: &ScoreInput) -> Score {
        let c = &self.config;
        match c.mode {
            RegexMode::Match => {
                let hit = self.regex.is_match(&input.completion);
                let value = if hit {
                    c.match_reward
                } else {
                    c.no_match_reward
                };
                Score::new(value, &self.provenance)
                    .with_component("matched", f64::from(u8::from(hit)))
            }
            RegexMode::Count => {
                let limit = c.max_matches.unwrap_or(usize::MAX);
                let n = self.regex.find_iter(&input.completion).take(limit).count();
                Score::new(c.per_match * n as f64, &self.provenance)
                    .with_component("matches", n as f64)
            }
        }
    }
}

#[async_trait]
impl Scorer for RegexScorer {
    fn name(&self) -> &str {
        "regex"
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        inputs.iter().map(|i| Ok(self.score_one(i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn values(config: RegexConfig, completions: &[&str]) -> anyhow::Result<Vec<f64>> {
        let scorer = RegexScorer::new(&config)?;
        let inputs: Vec<_> = completions
            .iter()
            .map(|c| ScoreInput::new("p", "q", *c))
            .collect();
        let out = scorer.score(&inputs).await;
        Ok(out
            .into_iter()
            .map(|r| r.map(|s| s.value))
            .collect::<Result<_, _>>()?)
    }

    #[tokio::test]
    async fn match_and_count_modes() -> anyhow::Result<()> {
        let think = RegexConfig {
            no_match_reward: -1.0,
            ..RegexConfig::matching(r"(?s)^<think>.*</think>")
        };
        assert_eq!(
            values(think, &["<think>a\nb</think> 4", "4"]).await?,
            [1.0, -1.0]
        );

        let count = RegexConfig {
            mode: RegexMode::Count,
            per_match: 0.5,
            max_matches: Some(3),
            ..RegexConfig::matching(r"\[\d+\]")
        };
        assert_eq!(
            values(count, &["none", "see [1] and [2]", "[1][2][3][4][5]"]).await?,
            [0.0, 1.0, 1.5]
        );
        Ok(())
    }

    #[test]
    fn bad_configs_name_the_field() {
        let bad = |c: RegexConfig| c.validate("scorer.").err().map(|e| e.to_string());
        assert!(
            bad(RegexConfig::matching("(unclosed"))
                .is_some_and(|m| m.starts_with("invalid scorer config: `scorer.pattern`: "))
        );
        let nan = RegexConfig {
            match_reward: f64::NAN,
            ..RegexConfig::matching("x")
        };
        assert_eq!(
            bad(nan).as_deref(),
            Some("invalid scorer config: `scorer.match_reward`: must be finite, got NaN")
        );
        let zero = RegexConfig {
            max_matches: Some(0),
            ..RegexConfig::matching("x")
        };
        assert!(bad(zero).is_some_and(|m| m.contains("`scorer.max_matches`")));
    }
}
