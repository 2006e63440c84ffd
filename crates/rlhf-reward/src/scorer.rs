//! The [`Scorer`] trait every reward source implements, its input and output types, and
//! [`CheckedScorer`], the wrapper that enforces the output contract (one result per input, finite
//! values only) and counts outcomes by kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rlhf_core::{ChatMessage, SampleId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ScoreError, ScoreErrorKind};

/// One completion to score, with what the scorers may need to know about its prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreInput {
    /// The sample's stable id; results are returned in input order, the id is for logs and
    /// provenance, and lets pairwise scorers group samples of the same prompt.
    pub sample_id: SampleId,
    /// The prompt as rendered for the policy (chat template applied where there was one).
    pub prompt: String,
    /// The prompt as chat messages, when the dataset has them; reward models then apply their
    /// own chat template instead of reading `prompt`.
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// The policy's completion.
    pub completion: String,
    /// The dataset's reference answer, for verifiable tasks.
    #[serde(default)]
    pub answer: Option<String>,
    /// Any other per-prompt fields of the dataset row.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// An evaluation sample (held-out reward, `rlhf eval`), never trained on: scorers that ask
    /// people for labels leave it to their base scorer.
    #[serde(default)]
    pub evaluation: bool,
    /// The policy that generated the completion, when the coordinator says (scorers that judge
    /// with the current policy fetch its weights).
    #[serde(default)]
    pub policy: Option<PolicyRef>,
}

/// A policy version and where its weights can be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// The policy version.
    pub version: u64,
    /// The learner incarnation it belongs to (0: any).
    pub incarnation: u64,
    /// The learner's address.
    pub weights_from: String,
}

impl ScoreInput {
    /// An input with only a prompt and a completion (sample id `0/<prompt_id>#0`).
    pub fn new(
        prompt_id: impl Into<String>,
        prompt: impl Into<String>,
        completion: impl Into<String>,
    ) -> Self {
        Self {
            sample_id: SampleId {
                iteration: 0,
                prompt_id: prompt_id.into(),
                sample_index: 0,
            },
            prompt: prompt.into(),
            messages: None,
            completion: completion.into(),
            answer: None,
            metadata: Map::new(),
            evaluation: false,
            policy: None,
        }
    }

    /// Sets the reference answer.
    pub fn with_answer(mut self, answer: impl Into<String>) -> Self {
        self.answer = Some(answer.into());
        self
    }

    /// Sets the prompt's chat messages.
    pub fn with_messages(mut self, messages: Vec<ChatMessage>) -> Self {
        self.messages = Some(messages);
        self
    }

    /// Sets the sample index (which of the prompt's samples this is).
    pub fn with_sample_index(mut self, index: u32) -> Self {
        self.sample_id.sample_index = index;
        self
    }
}

/// A reward for one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The reward that training uses. Always finite.
    pub value: f64,
    /// Named parts of the reward (an ensemble's members, a judge's raw rating), for logging and
    /// analysis. Always finite.
    #[serde(default)]
    pub components: BTreeMap<String, f64>,
    /// Where the value came from: the scorer, the judge model and URL, the reward model path.
    /// Kept with the label so that later sources (humans, other judges) stay distinguishable.
    pub provenance: String,
}

impl Score {
    /// A score with no components.
    pub fn new(value: f64, provenance: impl Into<String>) -> Self {
        Self {
            value,
            components: BTreeMap::new(),
            provenance: provenance.into(),
        }
    }

    /// Adds a named component.
    pub fn with_component(mut self, name: impl Into<String>, value: f64) -> Self {
        self.components.insert(name.into(), value);
        self
    }

    /// The first non-finite number in the score (the value, then the components), if any.
    pub fn first_non_finite(&self) -> Option<f64> {
        std::iter::once(self.value)
            .chain(self.components.values().copied())
            .find(|v| !v.is_finite())
    }
}

/// A source of rewards. Implementations must return exactly one result per input, in input
/// order; a sample that cannot be scored gets an explicit [`ScoreError`].
///
/// The trait is object-safe (`Box<dyn Scorer>`); `score` may take as long as its backend needs
/// (a human labeller, a remote judge), and callers bound it with their own deadlines.
#[async_trait]
pub trait Scorer: Send + Sync {
    /// A short name for logs, metrics and ensemble components.
    fn name(&self) -> &str;

    /// Scores a batch. The result has one entry per input, in the same order.
    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>>;

    /// Outcome counters, for scorers wrapped in a [`CheckedScorer`] (what
    /// [`ScorerConfig::build`](crate::ScorerConfig::build) returns).
    fn stats(&self) -> Option<ScoreStats> {
        None
    }
}

/// Counts of scored samples by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScoreStats {
    /// Samples that got a score.
    pub scored: u64,
    /// Samples that got an error, by kind.
    pub errors: BTreeMap<ScoreErrorKind, u64>,
}

impl ScoreStats {
    /// Errors of one kind.
    pub fn errors_of(&self, kind: ScoreErrorKind) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct Counters {
    scored: AtomicU64,
    errors: [AtomicU64; ScoreErrorKind::ALL.len()],
}

/// Wraps a scorer and enforces the output contract: a result per input (a short or long answer
/// becomes an internal error for every sample), finite values and components only (others become
/// [`ScoreError::NonFinite`]). Counts every outcome by kind.
pub struct CheckedScorer {
    inner: Box<dyn Scorer>,
    counters: Arc<Counters>,
}

impl CheckedScorer {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Scorer>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    fn count(&self, result: &Result<Score, ScoreError>) {
        match result {
            Ok(_) => self.counters.scored.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                let i = ScoreErrorKind::ALL
                    .iter()
                    .position(|k| *k == e.kind())
                    .unwrap_or(0);
                self.counters.errors[i].fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[async_trait]
impl Scorer for CheckedScorer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let mut results = self.inner.score(inputs).await;
        if results.len() != inputs.len() {
            let message = format!(
                "scorer returned {} results for {} inputs",
                results.len(),
                inputs.len()
            );
            tracing::error!(scorer = self.name(), %message, "scorer broke its contract");
            results = inputs
                .iter()
                .map(|_| Err(ScoreError::internal(self.name(), message.clone())))
                .collect();
        }
        for (result, input) in results.iter_mut().zip(inputs) {
            if let Ok(score) = result
                && let Some(value) = score.first_non_finite()
            {
                tracing::warn!(scorer = self.name(), sample = %input.sample_id, value, "non-finite score rejected");
                *result = Err(ScoreError::NonFinite {
                    scorer: self.name().to_owned(),
                    value,
                });
            }
            self.count(result);
        }
        results
    }

    fn stats(&self) -> Option<ScoreStats> {
        let errors = ScoreErrorKind::ALL
            .iter()
            .zip(&self.counters.errors)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Some(ScoreStats {
            scored: self.counters.scored.load(Ordering::Relaxed),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the completion parsed as a number, or a fixed number of results.
    struct Parse {
        results: Option<usize>,
    }

    #[async_trait]
    impl Scorer for Parse {
        fn name(&self) -> &str {
            "parse"
        }
        async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
            let n = self.results.unwrap_or(inputs.len());
            inputs
                .iter()
                .cycle()
                .take(n)
                .map(|i| {
                    i.completion
                        .parse::<f64>()
                        .map(|v| Score::new(v, "parse"))
                        .map_err(|e| ScoreError::invalid("parse", e.to_string()))
                })
                .collect()
        }
    }

    fn inputs(values: &[&str]) -> Vec<ScoreInput> {
        values
            .iter()
            .map(|v| ScoreInput::new("p", "prompt", *v))
            .collect()
    }

    #[tokio::test]
    async fn rejects_and_counts_non_finite() {
        let checked = CheckedScorer::new(Box::new(Parse { results: None }));
        let out = checked.score(&inputs(&["1.5", "NaN", "inf", "x"])).await;
        assert_eq!(out[0].as_ref().map(|s| s.value), Ok(1.5));
        for r in &out[1..3] {
            assert!(matches!(r, Err(ScoreError::NonFinite { .. })), "{r:?}");
        }
        assert!(matches!(out[3], Err(ScoreError::Invalid { .. })));
        let stats = checked.stats().unwrap_or_default();
        assert_eq!(stats.scored, 1);
        assert_eq!(stats.errors_of(ScoreErrorKind::NonFinite), 2);
        assert_eq!(stats.errors_of(ScoreErrorKind::Invalid), 1);
    }

    #[tokio::test]
    async fn wrong_result_count_is_an_error_for_every_sample() {
        let checked = CheckedScorer::new(Box::new(Parse { results: Some(1) }));
        let out = checked.score(&inputs(&["1", "2"])).await;
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|r| matches!(r, Err(ScoreError::Internal { .. })))
        );
    }

    #[test]
    fn non_finite_components_are_found() {
        let s = Score::new(1.0, "x").with_component("a", f64::INFINITY);
        assert_eq!(s.first_non_finite(), Some(f64::INFINITY));
        assert_eq!(Score::new(1.0, "x").first_non_finite(), None);
    }
}
