//! The typed scorer config: one `type`-tagged table per scorer, strict (unknown fields and types
//! are errors), validated at start-up with messages that name the field, and built into a
//! [`Scorer`].
//!
//! ```toml
//! type = "ensemble"
//! [[members]]
//! weight = 1.0
//! scorer = { type = "exact_answer", extract = "last_number" }
//! [[members]]
//! name = "format"
//! weight = 0.2
//! scorer = { type = "regex", pattern = "^<think>" }
//! ```

use serde::{Deserialize, Serialize};

use crate::ensemble::{EnsembleConfig, EnsembleScorer};
use crate::error::RewardError;
use crate::follow_up::{FollowUpConfig, FollowUpScorer};
use crate::human::{HumanConfig, HumanScorer};
use crate::judge::{JudgeConfig, JudgeScorer};
use crate::lm_judge::{LmJudgeConfig, LmJudgeScorer};
use crate::reward_model::{RewardModelConfig, RewardModelScorer};
use crate::rules::{
    ExactAnswerConfig, ExactAnswerScorer, LengthTargetConfig, LengthTargetScorer, RegexConfig,
    RegexScorer, RuleConfig, RuleRegistry, RuleScorer,
};
use crate::scorer::{CheckedScorer, Scorer};
use rlhf_proto::security::Tls;

/// A scorer, as configured. The `type` field picks the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerConfig {
    /// Match or count a regular expression ([`RegexScorer`]).
    Regex(RegexConfig),
    /// Compare with the dataset's answer ([`ExactAnswerScorer`]).
    ExactAnswer(ExactAnswerConfig),
    /// Peak reward at a target length ([`LengthTargetScorer`]).
    LengthTarget(LengthTargetConfig),
    /// A task function from the [`RuleRegistry`] ([`RuleScorer`]).
    Rule(RuleConfig),
    /// A Hugging Face reward model ([`RewardModelScorer`]).
    RewardModel(RewardModelConfig),
    /// An LLM judge over HTTP ([`JudgeScorer`]).
    Judge(JudgeConfig),
    /// A weighted combination of scorers ([`EnsembleScorer`]).
    Ensemble(EnsembleConfig),
    /// Follow-up likelihood under a causal LM ([`FollowUpScorer`]).
    FollowUp(FollowUpConfig),
    /// People label a base scorer's uncertain pairs on a web page ([`HumanScorer`]).
    Human(HumanConfig),
    /// A local causal LM, or the policy itself, as judge through its next-token probabilities
    /// ([`LmJudgeScorer`]).
    LmJudge(LmJudgeConfig),
}

impl ScorerConfig {
    /// The `type` tag of this variant.
    pub fn kind(&self) -> &'static str {
        match self {
            ScorerConfig::Regex(_) => "regex",
            ScorerConfig::ExactAnswer(_) => "exact_answer",
            ScorerConfig::LengthTarget(_) => "length_target",
            ScorerConfig::Rule(_) => "rule",
            ScorerConfig::RewardModel(_) => "reward_model",
            ScorerConfig::Judge(_) => "judge",
            ScorerConfig::Ensemble(_) => "ensemble",
            ScorerConfig::FollowUp(_) => "follow_up",
            ScorerConfig::Human(_) => "human",
            ScorerConfig::LmJudge(_) => "lm_judge",
        }
    }

    /// The name a scorer built from this config reports (`rule:<name>` for rules, else the
    /// type), which is also an ensemble member's default name.
    pub fn default_name(&self) -> String {
        match self {
            ScorerConfig::Rule(r) => format!("rule:{}", r.name),
            other => other.kind().to_owned(),
        }
    }

    /// Checks every field (recursively for ensembles) without loading models or reading
    /// environment variables. Errors name the field, e.g. `members[1].scorer.pattern`.
    pub fn validate(&self) -> Result<(), RewardError> {
        self.validate_at("")
    }

    /// [`validate`](Self::validate) with the fields' paths under `at` (`""` or ending in `.`).
    pub fn validate_at(&self, at: &str) -> Result<(), RewardError> {
        match self {
            ScorerConfig::Regex(c) => c.validate(at),
            ScorerConfig::ExactAnswer(c) => c.validate(at),
            ScorerConfig::LengthTarget(c) => c.validate(at),
            ScorerConfig::Rule(c) => c.validate(at),
            ScorerConfig::RewardModel(c) => c.validate(at),
            ScorerConfig::Judge(c) => c.validate(at),
            ScorerConfig::Ensemble(c) => c.validate(at),
            ScorerConfig::FollowUp(c) => c.validate(at),
            ScorerConfig::Human(c) => c.validate(at),
            ScorerConfig::LmJudge(c) => c.validate(at),
        }
    }

    /// Calls `f` on this config and every config inside it (an ensemble's members, a human
    /// scorer's base), parents first.
    pub fn for_each_mut(&mut self, f: &mut dyn FnMut(&mut ScorerConfig)) {
        f(self);
        match self {
            ScorerConfig::Ensemble(c) => {
                for m in &mut c.members {
                    m.scorer.for_each_mut(f);
                }
            }
            ScorerConfig::Human(c) => c.base.for_each_mut(f),
            _ => {}
        }
    }

    /// The longest `deadline_s` of a human scorer in this config (an ensemble's members and a
    /// human scorer's base included): the coordinator's `score_deadline_s` must exceed it.
    pub fn human_deadline_s(&self) -> Option<f64> {
        match self {
            ScorerConfig::Human(c) => Some(
                c.base
                    .human_deadline_s()
                    .map_or(c.deadline_s, |d| d.max(c.deadline_s)),
            ),
            ScorerConfig::Ensemble(c) => c
                .members
                .iter()
                .filter_map(|m| m.scorer.human_deadline_s())
                .reduce(f64::max),
            _ => None,
        }
    }

    /// Validates and builds the scorer: compiles patterns, looks rules up in `registry`, loads
    /// reward models, reads judge API keys. The result is a [`CheckedScorer`]: it rejects and
    /// counts non-finite values, and reports counts through [`Scorer::stats`].
    pub fn build(&self, registry: &RuleRegistry) -> Result<Box<dyn Scorer>, RewardError> {
        self.build_with(registry, None)
    }

    /// [`build`](Self::build) in a cluster whose roles talk TLS: scorers that call other roles
    /// (an `lm_judge` with `policy = true` fetches weights from the learner) use `tls`.
    pub fn build_with(
        &self,
        registry: &RuleRegistry,
        tls: Option<&Tls>,
    ) -> Result<Box<dyn Scorer>, RewardError> {
        self.validate()?;
        Ok(Box::new(CheckedScorer::new(
            self.build_at(registry, tls, "")?,
        )))
    }

    fn build_at(
        &self,
        registry: &RuleRegistry,
        tls: Option<&Tls>,
        at: &str,
    ) -> Result<Box<dyn Scorer>, RewardError> {
        let prefixed = |e: RewardError| match e {
            RewardError::Config { field, message } => RewardError::Config {
                field: format!("{at}{field}"),
                message,
            },
            other => other,
        };
        Ok(match self {
            ScorerConfig::Regex(c) => Box::new(RegexScorer::new(c).map_err(prefixed)?),
            ScorerConfig::ExactAnswer(c) => Box::new(ExactAnswerScorer::new(c).map_err(prefixed)?),
            ScorerConfig::LengthTarget(c) => {
                Box::new(LengthTargetScorer::new(c).map_err(prefixed)?)
            }
            ScorerConfig::Rule(c) => Box::new(RuleScorer::new(c, registry, at)?),
            ScorerConfig::RewardModel(c) => Box::new(RewardModelScorer::load_at(c, at)?),
            ScorerConfig::Judge(c) => Box::new(JudgeScorer::from_config(c, at)?),
            ScorerConfig::FollowUp(c) => Box::new(FollowUpScorer::load_at(c, at)?),
            ScorerConfig::LmJudge(c) => Box::new(LmJudgeScorer::load_at(c, tls, at)?),
            ScorerConfig::Human(c) => {
                let base = c.base.build_at(registry, tls, &format!("{at}base."))?;
                Box::new(HumanScorer::start(c, base, at)?)
            }
            ScorerConfig::Ensemble(c) => {
                let mut members = Vec::with_capacity(c.members.len());
                for (k, m) in c.members.iter().enumerate() {
                    let scorer =
                        m.scorer
                            .build_at(registry, tls, &format!("{at}members[{k}].scorer."))?;
                    members.push((m.effective_name(), m.weight, scorer));
                }
                Box::new(
                    EnsembleScorer::new(members, c.on_missing)
                        .aggregated(c.aggregate, c.uncertainty_coef.unwrap_or(0.0)),
                )
            }
        })
    }
}
