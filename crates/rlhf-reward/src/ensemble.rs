//! An ensemble of scorers, scored concurrently. `aggregate` says how the members' values
//! become one reward:
//! - `weighted_sum` (default): `value = Σ weightᵢ · valueᵢ` (a multi-objective reward);
//! - `worst_case`: `min weightᵢ · valueᵢ`, worst-case optimisation over a reward-model ensemble
//!   (Coste et al. 2024, *Reward Model Ensembles Help Mitigate Overoptimization*), also the
//!   egalitarian per-sample form of MaxMin alignment over per-group rewards;
//! - `uncertainty_weighted`: `mean − λ · variance` of the `weightᵢ · valueᵢ` (population
//!   variance), uncertainty-weighted optimisation from the same paper, `λ` =
//!   `uncertainty_coef`;
//! - `max_min`: MaxMin-RLHF (Chakraborty et al. 2024, *MaxMin-RLHF: Alignment with Diverse
//!   Human Preferences*) over members that are per-group reward models: in each scoring request
//!   the member (group) whose weighted mean over the request's samples is lowest is chosen, and
//!   every sample gets that member's `weightᵢ · valueᵢ` — the policy is improved for the group
//!   it serves worst. A sample the chosen member could not score gets its error.
//!
//! By default a sample that any member cannot score has no ensemble score (the error names the
//! member); with `on_missing = "skip"` the present members are used (a weighted sum rescaled by
//! `Σ all weights / Σ present weights`).

use std::collections::BTreeSet;

use async_trait::async_trait;
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use crate::config::ScorerConfig;
use crate::error::{RewardError, ScoreError};
use crate::scorer::{CheckedScorer, Score, ScoreInput, Scorer};

/// What to do when a member has no score for a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// The sample gets an error naming the member.
    #[default]
    Error,
    /// Leave the member out and renormalise over the members present.
    Skip,
}

/// How an ensemble turns its members' values into one reward (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// `Σ weightᵢ · valueᵢ`.
    #[default]
    WeightedSum,
    /// `min weightᵢ · valueᵢ`.
    WorstCase,
    /// `mean − λ · variance` of the `weightᵢ · valueᵢ`.
    UncertaintyWeighted,
    /// The member with the lowest batch mean of `weightᵢ · valueᵢ`, for every sample.
    MaxMin,
}

/// One member of an ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleMember {
    /// The member's name in components and errors (default: its scorer's name, e.g. `regex`).
    #[serde(default)]
    pub name: Option<String>,
    /// The member's weight.
    pub weight: f64,
    /// The member's scorer.
    pub scorer: ScorerConfig,
}

impl EnsembleMember {
    /// The name used in components and errors.
    pub fn effective_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.scorer.default_name())
    }
}

/// Config of an [`EnsembleScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// The members, with their weights.
    pub members: Vec<EnsembleMember>,
    /// Error (default) or skip when a member has no score.
    #[serde(default)]
    pub on_missing: OnMissing,
    /// `weighted_sum` (default), `worst_case`, `uncertainty_weighted` or `max_min`.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// λ of `uncertainty_weighted` (required there, ≥ 0; refused elsewhere).
    #[serde(default)]
    pub uncertainty_coef: Option<f64>,
}

impl EnsembleConfig {
    /// Checks the members recursively; `at` is this config's path for error messages.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        if self.members.is_empty() {
            return Err(RewardError::config(
                format!("{at}members"),
                "an ensemble needs at least one member",
            ));
        }
        let mut names = BTreeSet::new();
        for (k, m) in self.members.iter().enumerate() {
            let here = format!("{at}members[{k}].");
            if !m.weight.is_finite() || (self.on_missing == OnMissing::Skip && m.weight <= 0.0) {
                return Err(RewardError::config(
                    format!("{here}weight"),
                    match self.on_missing {
                        OnMissing::Skip => format!(
                            "must be positive with on_missing = \"skip\", got {}",
                            m.weight
                        ),
                        OnMissing::Error => format!("must be finite, got {}", m.weight),
                    },
                ));
            }
            let name = m.effective_name();
            if name.trim().is_empty() {
                return Err(RewardError::config(
                    format!("{here}name"),
                    "the member name is empty",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(RewardError::config(
                    format!("{here}name"),
                    format!(
                        "another member is already named `{name}`: give each member a distinct `name`"
                    ),
                ));
            }
            m.scorer.validate_at(&format!("{here}scorer."))?;
        }
        if self.members.iter().all(|m| m.weight == 0.0) {
            return Err(RewardError::config(
                format!("{at}members"),
                "all weights are zero",
            ));
        }
        match (self.aggregate, self.uncertainty_coef) {
            (Aggregate::UncertaintyWeighted, None) => Err(RewardError::config(
                format!("{at}uncertainty_coef"),
                "required with aggregate = \"uncertainty_weighted\" (λ in mean − λ·variance)",
            )),
            (Aggregate::UncertaintyWeighted, Some(l)) if !l.is_finite() || l < 0.0 => {
                Err(RewardError::config(
                    format!("{at}uncertainty_coef"),
                    format!("must be finite and at least 0, got {l}"),
                ))
            }
            (Aggregate::WeightedSum | Aggregate::WorstCase | Aggregate::MaxMin, Some(_)) => {
                Err(RewardError::config(
                    format!("{at}uncertainty_coef"),
                    "only used with aggregate = \"uncertainty_weighted\"",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A built member.
struct Member {
    name: String,
    weight: f64,
    scorer: CheckedScorer,
}

/// Combines several scorers.
pub struct EnsembleScorer {
    members: Vec<Member>,
    on_missing: OnMissing,
    aggregate: Aggregate,
    uncertainty_coef: f64,
}

impl EnsembleScorer {
    /// An ensemble of already-built scorers: `(name, weight, scorer)`, summed with their weights.
    /// Each member is wrapped in a [`CheckedScorer`], so a member's non-finite value is that
    /// member's error.
    pub fn new(members: Vec<(String, f64, Box<dyn Scorer>)>, on_missing: OnMissing) -> Self {
        Self {
            members: members
                .into_iter()
                .map(|(name, weight, scorer)| Member {
                    name,
                    weight,
                    scorer: CheckedScorer::new(scorer),
                })
                .collect(),
            on_missing,
            aggregate: Aggregate::WeightedSum,
            uncertainty_coef: 0.0,
        }
    }

    /// The same members aggregated by `aggregate` (`uncertainty_coef`: λ of
    /// `uncertainty_weighted`).
    pub fn aggregated(mut self, aggregate: Aggregate, uncertainty_coef: f64) -> Self {
        self.aggregate = aggregate;
        self.uncertainty_coef = uncertainty_coef;
        self
    }

    /// The member names, in order.
    pub fn member_names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// One sample's score from its members' results; `chosen`: the member `max_min` chose for
    /// the batch.
    fn combine(
        &self,
        results: Vec<Result<Score, ScoreError>>,
        chosen: Option<usize>,
    ) -> Result<Score, ScoreError> {
        let missing = |m: &Member, e: ScoreError| ScoreError::Member {
            member: m.name.clone(),
            source: Box::new(e),
        };
        let mut value = 0.0;
        let mut weighted = Vec::with_capacity(self.members.len());
        let mut total_weight = 0.0;
        let mut present_weight = 0.0;
        let mut first_error = None;
        let mut present = 0usize;
        let mut provenance = Vec::new();
        let mut score = Score::new(0.0, "");
        let mut max_min = None;
        for (k, (m, r)) in self.members.iter().zip(results).enumerate() {
            total_weight += m.weight;
            match r {
                Ok(s) => {
                    if chosen == Some(k) {
                        max_min = Some(m.weight * s.value);
                    }
                    value += m.weight * s.value;
                    weighted.push(m.weight * s.value);
                    present_weight += m.weight;
                    present += 1;
                    score.components.insert(m.name.clone(), s.value);
                    for (k, v) in s.components {
                        score.components.insert(format!("{}.{k}", m.name), v);
                    }
                    provenance.push(format!("{}={}", m.name, s.provenance));
                }
                Err(e) => {
                    if self.on_missing == OnMissing::Error || chosen == Some(k) {
                        return Err(missing(m, e));
                    }
                    first_error.get_or_insert_with(|| missing(m, e));
                    provenance.push(format!("{}=missing", m.name));
                }
            }
        }
        if present_weight <= 0.0 {
            return Err(first_error.unwrap_or_else(|| {
                ScoreError::internal("ensemble", "no member has a positive weight")
            }));
        }
        if present < self.members.len() {
            value *= total_weight / present_weight;
            score
                .components
                .insert("members_present".into(), present as f64);
        }
        let n = weighted.len() as f64;
        let mean = weighted.iter().sum::<f64>() / n;
        let variance = weighted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        score.value = match self.aggregate {
            Aggregate::WeightedSum => value,
            Aggregate::WorstCase => weighted.iter().copied().fold(f64::INFINITY, f64::min),
            Aggregate::UncertaintyWeighted => {
                score.components.insert("ensemble_mean".into(), mean);
                score
                    .components
                    .insert("ensemble_variance".into(), variance);
                mean - self.uncertainty_coef * variance
            }
            Aggregate::MaxMin => {
                let k = chosen.unwrap_or(0);
                score.components.insert("max_min_member".into(), k as f64);
                max_min.unwrap_or(f64::NAN)
            }
        };
        let how = match self.aggregate {
            Aggregate::WeightedSum => "ensemble",
            Aggregate::WorstCase => "ensemble_min",
            Aggregate::UncertaintyWeighted => "ensemble_uwo",
            Aggregate::MaxMin => "ensemble_maxmin",
        };
        score.provenance = format!("{how}({})", provenance.join(", "));
        Ok(score)
    }
}

#[async_trait]
impl Scorer for EnsembleScorer {
    fn name(&self) -> &str {
        "ensemble"
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let per_member = join_all(self.members.iter().map(|m| m.scorer.score(inputs))).await;
        let chosen = (self.aggregate == Aggregate::MaxMin).then(|| self.worst_served(&per_member));
        let mut columns: Vec<_> = per_member.into_iter().map(Vec::into_iter).collect();
        (0..inputs.len())
            .map(|_| {
                let row = columns
                    .iter_mut()
                    .map(|c| {
                        // Members are checked scorers: they always return one result per input.
                        c.next().unwrap_or_else(|| {
                            Err(ScoreError::internal("ensemble", "member result missing"))
                        })
                    })
                    .collect();
                self.combine(row, chosen)
            })
            .collect()
    }
}

impl EnsembleScorer {
    /// The member (with a positive weight) whose mean `weight · value` over the samples it
    /// scored is lowest; ties go to the first.
    fn worst_served(&self, per_member: &[Vec<Result<Score, ScoreError>>]) -> usize {
        let mut worst = (0, f64::INFINITY);
        for (k, (m, results)) in self.members.iter().zip(per_member).enumerate() {
            if m.weight <= 0.0 {
                continue;
            }
            let values: Vec<f64> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|s| m.weight * s.value))
                .collect();
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            if mean < worst.1 {
                worst = (k, mean);
            }
        }
        worst.0
    }
}
