//! The audit log: every generated and scored sample as one JSON line, so that any reward, pair
//! or training step can be traced back to the exact text and tokens the policy produced.
//!
//! Written with [`AuditWriter`] (a [`JsonlWriter`], see its durability contract), read back with
//! [`read_audit`]. Non-finite numbers (a NaN score, an infinite logprob) are kept as the strings
//! `"NaN"`, `"inf"`, `"-inf"`, never turned into `null`.

use std::collections::BTreeMap;
use std::path::Path;

use rlhf_core::{PolicyVersion, SampleId};
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::floats;
use crate::jsonlog::{JsonlLog, JsonlWriter, read_jsonl};

/// Why generation of a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The policy emitted an end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// Generation was cut short (shutdown, cancelled lease).
    Aborted,
}

/// One generated sample and how it was scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The loop iteration that leased the prompt.
    pub iteration: u64,
    /// The prompt's id in its dataset.
    pub prompt_id: String,
    /// Which of the prompt's `n` samples this is.
    pub sample_index: u32,
    /// The policy version that generated the sample.
    pub policy_version: PolicyVersion,
    /// The prompt as text (chat messages rendered by the template, or joined for display).
    pub prompt: String,
    /// The decoded completion, special tokens removed.
    pub completion: String,
    /// The completion's token ids, as generated.
    pub completion_token_ids: Vec<u32>,
    /// The sampling policy's log-probability of each completion token.
    #[serde(with = "floats::vec_f32")]
    pub logprobs: Vec<f32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Each scorer's score, by scorer name (non-finite scores are kept as they came).
    #[serde(default, with = "floats::map")]
    pub scores: BTreeMap<String, f64>,
    /// Each failed scorer's error, by scorer name: a missing score stays missing, never 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub score_errors: BTreeMap<String, String>,
    /// The combined reward the trainer used, if any (absent when scoring failed).
    #[serde(
        default,
        with = "floats::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub reward: Option<f64>,
}

impl AuditRecord {
    /// The sample's stable id.
    pub fn sample_id(&self) -> SampleId {
        SampleId {
            iteration: self.iteration,
            prompt_id: self.prompt_id.clone(),
            sample_index: self.sample_index,
        }
    }
}

/// Appends [`AuditRecord`]s to a JSONL file.
pub type AuditWriter = JsonlWriter<AuditRecord>;

/// Reads an audit log back (tolerating a crash's partial last line).
pub fn read_audit(path: impl AsRef<Path>) -> Result<JsonlLog<AuditRecord>, DataError> {
    read_jsonl(path)
}
