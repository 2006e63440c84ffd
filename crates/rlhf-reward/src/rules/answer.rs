//! Exact-answer rewards for verifiable tasks: extract the answer from the completion (the whole
//! text, the last number, or a capture group), normalise it, compare it with the dataset's
//! `answer`. A sample without an `answer` is an error, not a zero.

use async_trait::async_trait;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::check_finite;
use crate::error::{RewardError, ScoreError};
use crate::scorer::{Score, ScoreInput, Scorer};

/// Default reward for a correct answer.
pub const DEFAULT_CORRECT_REWARD: f64 = 1.0;

/// A number as written in text: optional sign, digits with thousands separators, decimals.
const NUMBER: &str = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)";

/// Which part of the completion is the answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extract {
    /// The whole completion.
    #[default]
    Whole,
    /// The last number in the completion, compared numerically (`1,000` = `1000.0`). The
    /// dataset answer is read as a number too (its last number if it is not just one).
    LastNumber,
    /// The last match of this regex: its group named `answer`, else group 1, else the match.
    Capture(String),
}

/// Config of an [`ExactAnswerScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactAnswerConfig {
    /// Trim whitespace from both answers before comparing.
    #[serde(default = "yes")]
    pub trim: bool,
    /// Compare case-insensitively.
    #[serde(default)]
    pub ignore_case: bool,
    /// How to find the answer in the completion.
    #[serde(default)]
    pub extract: Extract,
    /// The reward for a correct answer.
    #[serde(default = "default_correct_reward")]
    pub correct_reward: f64,
    /// The reward for a wrong or missing answer.
    #[serde(default)]
    pub incorrect_reward: f64,
}

fn yes() -> bool {
    true
}

fn default_correct_reward() -> f64 {
    DEFAULT_CORRECT_REWARD
}

impl Default for ExactAnswerConfig {
    fn default() -> Self {
        Self {
            trim: true,
            ignore_case: false,
            extract: Extract::Whole,
            correct_reward: DEFAULT_CORRECT_REWARD,
            incorrect_reward: 0.0,
        }
    }
}

impl ExactAnswerConfig {
    /// Checks the fields; `at` is this config's path for error messages.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        if let Extract::Capture(pattern) = &self.extract {
            let re = Regex::new(pattern)
                .map_err(|e| RewardError::config(format!("{at}extract.capture"), e.to_string()))?;
            if re.captures_len() < 2 {
                return Err(RewardError::config(
                    format!("{at}extract.capture"),
                    "the regex needs a capture group (named `answer`, or the first group)",
                ));
            }
        }
        check_finite(format!("{at}correct_reward"), self.correct_reward)?;
        check_finite(format!("{at}incorrect_reward"), self.incorrect_reward)
    }
}

/// Rewards completions whose answer equals the dataset's.
pub struct ExactAnswerScorer {
    config: ExactAnswerConfig,
    capture: Option<Regex>,
    number: Regex,
}

impl ExactAnswerScorer {
    /// Compiles the extraction patterns.
    pub fn new(config: &ExactAnswerConfig) -> Result<Self, RewardError> {
        config.validate("")?;
        let capture = match &config.extract {
            Extract::Capture(p) => Some(
                Regex::new(p).map_err(|e| RewardError::config("extract.capture", e.to_string()))?,
            ),
            _ => None,
        };
        let number =
            Regex::new(NUMBER).map_err(|e| RewardError::config("extract", e.to_string()))?;
        Ok(Self {
            config: config.clone(),
            capture,
            number,
        })
    }

    fn normalise(&self, s: &str) -> String {
        let s = if self.config.trim { s.trim() } else { s };
        if self.config.ignore_case {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    }

    fn last_number(&self, s: &str) -> Option<f64> {
        let m = self.number.find_iter(s).last()?;
        m.as_str()
            .trim_end_matches(',')
            .replace(',', "")
            .parse()
            .ok()
    }

    fn captured<'a>(&self, re: &Regex, s: &'a str) -> Option<&'a str> {
        let caps = re.captures_iter(s).last()?;
        caps.name("answer")
            .or_else(|| caps.get(1))
            .or_else(|| caps.get(0))
            .map(|m| m.as_str())
    }

    /// Whether the completion's answer matches; `None` when no answer could be extracted.
    fn matches(&self, completion: &str, answer: &str) -> Result<Option<bool>, String> {
        match &self.config.extract {
            Extract::Whole => Ok(Some(self.normalise(completion) == self.normalise(answer))),
            Extract::Capture(_) => {
                let got = self
                    .capture
                    .as_ref()
                    .and_then(|re| self.captured(re, completion));
                Ok(got.map(|g| self.normalise(g) == self.normalise(answer)))
            }
            Extract::LastNumber => {
                let expected = answer
                    .trim()
                    .replace(',', "")
                    .parse::<f64>()
                    .ok()
                    .or_else(|| self.last_number(answer))
                    .ok_or_else(|| format!("the dataset answer `{answer}` has no number"))?;
                Ok(self.last_number(completion).map(|got| {
                    let scale = 1f64.max(got.abs()).max(expected.abs());
                    (got - expected).abs() <= 1e-9 * scale
                }))
            }
        }
    }

    fn score_one(&self, input: &ScoreInput) -> Result<Score, ScoreError> {
        let answer = input.answer.as_deref().ok_or_else(|| {
            ScoreError::invalid(
                self.name(),
                format!("sample {} has no `answer` to compare with", input.sample_id),
            )
        })?;
        let found = self
            .matches(&input.completion, answer)
            .map_err(|m| ScoreError::invalid(self.name(), m))?;
        let correct = found == Some(true);
        let value = if correct {
            self.config.correct_reward
        } else {
            self.config.incorrect_reward
        };
        Ok(Score::new(value, "exact_answer")
            .with_component("correct", f64::from(u8::from(correct)))
            .with_component("extracted", f64::from(u8::from(found.is_some()))))
    }
}

#[async_trait]
impl Scorer for ExactAnswerScorer {
    fn name(&self) -> &str {
        "exact_answer"
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        inputs.iter().map(|i| self.score_one(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (completion, answer, expected correctness) under one config.
    async fn check(config: ExactAnswerConfig, cases: &[(&str, &str, bool)]) -> anyhow::Result<()> {
        let scorer = ExactAnswerScorer::new(&config)?;
        let inputs: Vec<_> = cases
            .iter()
            .map(|(c, a, _)| ScoreInput::new("p", "q", *c).with_answer(*a))
            .collect();
        for (out, (c, a, want)) in scorer.score(&inputs).await.into_iter().zip(cases) {
            let got = out?.value == 1.0;
            assert_eq!(got, *want, "{config:?}: completion {c:?} answer {a:?}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn normalisation_options() -> anyhow::Result<()> {
        check(
            ExactAnswerConfig::default(),
            &[
                (" Paris\n", "Paris", true),
                ("paris", "Paris", false),
                ("Paris.", "Paris", false),
            ],
        )
        .await?;
        check(
            ExactAnswerConfig {
                ignore_case: true,
                ..Default::default()
            },
            &[("PARIS ", "paris", true)],
        )
        .await?;
        check(
            ExactAnswerConfig {
                trim: false,
                ..Default::default()
            },
            &[(" Paris", "Paris", false), ("Paris", "Paris", true)],
        )
        .await?;
        check(
            ExactAnswerConfig {
                extract: Extract::LastNumber,
                ..Default::default()
            },
            &[
                ("3 + 4 = 7, so the answer is 72.", "72", true),
                ("That is 1,000 apples", "1000", true),
                ("It costs $18.50.", "#### 18.5", true),
                ("answer: -3", "-3", true),
                ("answer: 3", "-3", false),
                ("no number here", "5", false),
            ],
        )
        .await?;
        check(
            ExactAnswerConfig {
                extract: Extract::Capture(r"\\boxed\{(?P<answer>[^}]*)\}".into()),
                ignore_case: true,
                ..Default::default()
            },
            &[
                (r"so \boxed{1} no wait \boxed{ X }", "x", true),
                (r"\boxed{2}", "3", false),
                ("no box", "3", false),
            ],
        )
        .await
    }

    #[tokio::test]
    async fn missing_answers_are_errors() -> anyhow::Result<()> {
        let scorer = ExactAnswerScorer::new(&ExactAnswerConfig {
            extract: Extract::LastNumber,
            ..Default::default()
        })?;
        let out = scorer
            .score(&[
                ScoreInput::new("p", "q", "42"),
                ScoreInput::new("p", "q", "42").with_answer("forty-two"),
            ])
            .await;
        for r in out {
            assert!(matches!(r, Err(ScoreError::Invalid { .. })), "{r:?}");
        }
        Ok(())
    }

    #[test]
    fn capture_needs_a_group() {
        let c = ExactAnswerConfig {
            extract: Extract::Capture("answer: .*".into()),
            ..Default::default()
        };
        assert!(c.validate("").err().is_some_and(|e| {
            e.to_string()
                .contains("`extract.capture`: the regex needs a capture group")
        }));
    }
}
