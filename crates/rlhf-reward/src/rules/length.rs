//! A length reward that peaks at a target length: 1 within `tolerance` of the target, falling
//! linearly to 0 over `falloff` more units on either side.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{RewardError, ScoreError};
use crate::scorer::{Score, ScoreInput, Scorer};

/// How length is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    /// Unicode scalar values.
    #[default]
    Chars,
    /// Whitespace-separated words.
    Words,
}

/// Config of a [`LengthTargetScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthTargetConfig {
    /// The length that gets the full reward.
    pub target: usize,
    /// Characters or words.
    #[serde(default)]
    pub unit: LengthUnit,
    /// Lengths within this distance of the target also get the full reward.
    #[serde(default)]
    pub tolerance: usize,
    /// Beyond the tolerance, the reward reaches 0 after this many more units (default: the
    /// target, so an empty completion or one twice too long gets 0).
    #[serde(default)]
    pub falloff: Option<usize>,
}

impl LengthTargetConfig {
    /// Checks the fields; `at` is this config's path for error messages.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        if self.target == 0 {
            return Err(RewardError::config(
                format!("{at}target"),
                "must be at least 1",
            ));
        }
        if self.falloff == Some(0) {
            return Err(RewardError::config(
                format!("{at}falloff"),
                "must be at least 1 (leave it out to use the target)",
            ));
        }
        Ok(())
    }

    /// The reward for a completion of `len` units, in [0, 1].
    pub fn reward(&self, len: usize) -> f64 {
        let distance = len.abs_diff(self.target);
        let over = distance.saturating_sub(self.tolerance);
        let falloff = self.falloff.unwrap_or(self.target).max(1);
        (1.0 - over as f64 / falloff as f64).max(0.0)
    }
}

/// Rewards completions near a target length.
pub struct LengthTargetScorer {
    config: LengthTargetConfig,
}

impl LengthTargetScorer {
    /// Checks the config.
    pub fn new(config: &LengthTargetConfig) -> Result<Self, RewardError> {
        config.validate("")?;
        Ok(Self {
            config: config.clone(),
        })
    }

    fn score_one(&self, input: &ScoreInput) -> Score {
        let len = match self.config.unit {
            LengthUnit::Chars => input.completion.chars().count(),
            LengthUnit::Words => input.completion.split_whitespace().count(),
        };
        Score::new(self.config.reward(len), "length_target").with_component("length", len as f64)
    }
}

#[async_trait]
impl Scorer for LengthTargetScorer {
    fn name(&self) -> &str {
        "length_target"
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        inputs.iter().map(|i| Ok(self.score_one(i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_peaks_at_the_target() {
        let c = LengthTargetConfig {
            target: 10,
            unit: LengthUnit::Chars,
            tolerance: 2,
            falloff: Some(4),
        };
        let got: Vec<f64> = [0, 4, 6, 8, 10, 12, 13, 14, 16, 100]
            .iter()
            .map(|&n| c.reward(n))
            .collect();
        assert_eq!(got, [0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.75, 0.5, 0.0, 0.0]);
        let default_falloff = LengthTargetConfig {
            falloff: None,
            tolerance: 0,
            ..c
        };
        assert_eq!(default_falloff.reward(15), 0.5);
        assert_eq!(default_falloff.reward(0), 0.0);
    }

    #[tokio::test]
    async fn counts_chars_or_words() -> anyhow::Result<()> {
        let input = ScoreInput::new("p", "q", "héllo wörld  again");
        for (unit, len) in [(LengthUnit::Chars, 18.0), (LengthUnit::Words, 3.0)] {
            let scorer = LengthTargetScorer::new(&LengthTargetConfig {
                target: 3,
                unit,
                tolerance: 0,
                falloff: None,
            })?;
            let score = scorer.score(std::slice::from_ref(&input)).await.remove(0)?;
            assert_eq!(score.components["length"], len);
            assert_eq!(score.value, if len == 3.0 { 1.0 } else { 0.0 });
        }
        Ok(())
    }

    #[test]
    fn zero_target_is_rejected() {
        let c = LengthTargetConfig {
            target: 0,
            unit: LengthUnit::Words,
            tolerance: 0,
            falloff: None,
        };
        assert!(
            c.validate("x.")
                .err()
                .is_some_and(|e| e.to_string().contains("`x.target`"))
        );
    }
}
