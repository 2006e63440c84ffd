//! The metrics log: one JSON object per training step or loop iteration, for plots, regression
//! checks and the quickstart's "reward went up" assertion.
//!
//! Typed fields are optional because not every step knows every metric (a generation-only
//! iteration has no loss); absent means unknown, never 0. Other numbers go in `extra`.
//! Non-finite values (a NaN loss) are kept as `"NaN"`, `"inf"`, `"-inf"`.

use std::collections::BTreeMap;
use std::path::Path;

use rlhf_core::PolicyVersion;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::floats;
use crate::jsonlog::{JsonlLog, JsonlWriter, read_jsonl};

/// One line of the metrics log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// The loop iteration.
    pub iteration: u64,
    /// The learner's optimizer step, when the line is per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// The policy version after this step or iteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<PolicyVersion>,
    /// Seconds since the run started.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub elapsed_s: Option<f64>,
    /// Mean reward of the iteration's scored samples.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub reward_mean: Option<f64>,
    /// Standard deviation of those rewards.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub reward_std: Option<f64>,
    /// Mean implicit-reward margin (chosen minus rejected) of the preference pairs.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub margin: Option<f64>,
    /// Estimated KL divergence of the policy from the reference.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub kl: Option<f64>,
    /// The training loss.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub loss: Option<f64>,
    /// Generated tokens per second.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub tokens_per_s: Option<f64>,
    /// Mean policy lag (versions) of the samples trained on.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub staleness: Option<f64>,
    /// Fraction of wall time the learner waited for data.
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub learner_idle_fraction: Option<f64>,
    /// Any other metric, by name.
    #[serde(
        default,
        with = "floats::map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub extra: BTreeMap<String, f64>,
}

impl MetricsRecord {
    /// An empty record for an iteration (every metric unknown).
    pub fn new(iteration: u64) -> Self {
        MetricsRecord {
            iteration,
            ..Self::default()
        }
    }
}

/// Appends [`MetricsRecord`]s to a JSONL file.
pub type MetricsWriter = JsonlWriter<MetricsRecord>;

/// Reads a metrics log back (tolerating a crash's partial last line).
pub fn read_metrics(path: impl AsRef<Path>) -> Result<JsonlLog<MetricsRecord>, DataError> {
    read_jsonl(path)
}
