//! Rule scorers: cheap, deterministic functions of the completion (and the dataset's answer).
//!
//! - [`regex`]: rewards for matching (or counting matches of) a regular expression.
//! - [`answer`]: exact-answer match against the dataset's `answer`, with normalisation.
//! - [`length`]: a reward that peaks at a target length.
//! - [`RuleRegistry`] and [`RuleScorer`]: task functions registered by name (the "builtin task"
//!   hook; the task functions themselves live with the datasets).

pub mod answer;
pub mod length;
pub mod regex;

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{RewardError, ScoreError, ensure_finite};
use crate::scorer::{Score, ScoreInput, Scorer};

pub use answer::{ExactAnswerConfig, ExactAnswerScorer, Extract};
pub use length::{LengthTargetConfig, LengthTargetScorer, LengthUnit};
pub use regex::{RegexConfig, RegexMode, RegexScorer};

/// A task's reward function: `(completion, dataset answer) -> reward`. Must be pure.
pub type RuleFn = Arc<dyn Fn(&str, Option<&str>) -> f64 + Send + Sync>;

/// Task reward functions by name: the way to add rule scorers without touching this crate. The
/// dataset crate registers its tasks (`gsm8k`, ...), configs name them (`type = "rule"`).
#[derive(Clone, Default)]
pub struct RuleRegistry {
    rules: BTreeMap<String, RuleFn>,
}

impl fmt::Debug for RuleRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleRegistry")
            .field("rules", &self.rules.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RuleRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `rule` under `name`; a name can be registered once.
    pub fn register<F>(&mut self, name: impl Into<String>, rule: F) -> Result<(), RewardError>
    where
        F: Fn(&str, Option<&str>) -> f64 + Send + Sync + 'static,
    {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(RewardError::Rule("a rule name cannot be empty".into()));
        }
        if self.rules.contains_key(&name) {
            return Err(RewardError::Rule(format!(
                "a rule named `{name}` is already registered"
            )));
        }
        self.rules.insert(name, Arc::new(rule));
        Ok(())
    }

    /// The rule registered under `name`.
    pub fn get(&self, name: &str) -> Option<RuleFn> {
        self.rules.get(name).cloned()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.rules.keys().map(String::as_str).collect()
    }
}

/// Config of a [`RuleScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The name the task function was registered under.
    pub name: String,
}

impl RuleConfig {
    /// Checks the fields; `at` is this config's path for error messages.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        if self.name.trim().is_empty() {
            return Err(RewardError::config(
                format!("{at}name"),
                "the rule name is empty",
            ));
        }
        Ok(())
    }
}

/// Scores with a registered task function.
pub struct RuleScorer {
    name: String,
    rule: RuleFn,
}

impl RuleScorer {
    /// Looks `config.name` up in `registry`.
    pub fn new(
        config: &RuleConfig,
        registry: &RuleRegistry,
        at: &str,
    ) -> Result<Self, RewardError> {
        let rule = registry.get(&config.name).ok_or_else(|| {
            let known = registry.names();
            RewardError::config(
                format!("{at}name"),
                if known.is_empty() {
                    format!("no rule named `{}` (no rules are registered)", config.name)
                } else {
                    format!(
                        "no rule named `{}` (registered: {})",
                        config.name,
                        known.join(", ")
                    )
                },
            )
        })?;
        Ok(Self {
            name: format!("rule:{}", config.name),
            rule,
        })
    }

    fn score_one(&self, input: &ScoreInput) -> Result<Score, ScoreError> {
        let rule = AssertUnwindSafe(&self.rule);
        let value = catch_unwind(|| rule(&input.completion, input.answer.as_deref()))
            .map_err(|_| ScoreError::internal(&self.name, "the rule function panicked"))?;
        Ok(Score::new(ensure_finite(&self.name, value)?, &self.name))
    }
}

#[async_trait]
impl Scorer for RuleScorer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        inputs.iter().map(|i| self.score_one(i)).collect()
    }
}

/// Checks that a configured reward is finite.
pub(crate) fn check_finite(field: String, value: f64) -> Result<(), RewardError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(RewardError::config(
            field,
            format!("must be finite, got {value}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains_answer(completion: &str, answer: Option<&str>) -> f64 {
        match answer {
            Some(a) if completion.contains(a) => 1.0,
            Some(_) => 0.0,
            None => f64::NAN,
        }
    }

    #[tokio::test]
    async fn registered_rules_score_by_name() -> anyhow::Result<()> {
        let mut registry = RuleRegistry::new();
        registry.register("contains", contains_answer)?;
        registry.register("panics", |_: &str, _: Option<&str>| -> f64 {
            panic!("boom")
        })?;
        assert!(registry.register("contains", contains_answer).is_err());
        assert_eq!(registry.names(), ["contains", "panics"]);

        let scorer = RuleScorer::new(
            &RuleConfig {
                name: "contains".into(),
            },
            &registry,
            "",
        )?;
        assert_eq!(scorer.name(), "rule:contains");
        let out = scorer
            .score(&[
                ScoreInput::new("p", "q", "it is 42").with_answer("42"),
                ScoreInput::new("p", "q", "it is 41").with_answer("42"),
                ScoreInput::new("p", "q", "no answer"),
            ])
            .await;
        assert_eq!(out[0].as_ref().map(|s| s.value), Ok(1.0));
        assert_eq!(out[1].as_ref().map(|s| s.value), Ok(0.0));
        assert!(matches!(out[2], Err(ScoreError::NonFinite { .. })));

        let panics = RuleScorer::new(
            &RuleConfig {
                name: "panics".into(),
            },
            &registry,
            "",
        )?;
        let out = panics.score(&[ScoreInput::new("p", "q", "x")]).await;
        assert!(matches!(out[0], Err(ScoreError::Internal { .. })));
        Ok(())
    }

    #[test]
    fn unknown_rule_names_the_registered_ones() -> anyhow::Result<()> {
        let mut registry = RuleRegistry::new();
        registry.register("gsm8k", contains_answer)?;
        let err = RuleScorer::new(
            &RuleConfig {
                name: "math".into(),
            },
            &registry,
            "members[0].scorer.",
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "invalid scorer config: `members[0].scorer.name`: no rule named `math` (registered: gsm8k)"
            )
        );
        Ok(())
    }
}
