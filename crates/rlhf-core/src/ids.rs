//! Stable identities: every sample is named by (iteration, prompt id, sample index) and tagged
//! with the policy version that generated it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A policy version: 0 is the initial checkpoint, each learner update adds one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct PolicyVersion(pub u64);

impl PolicyVersion {
    /// The version after one more update.
    pub fn next(self) -> Self {
        PolicyVersion(self.0 + 1)
    }

    /// How many versions `self` lags behind `current` (0 if not behind).
    pub fn lag_behind(self, current: PolicyVersion) -> u64 {
        current.0.saturating_sub(self.0)
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The stable id of one generated sample.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SampleId {
    /// The loop iteration that leased the prompt.
    pub iteration: u64,
    /// The prompt's id in its dataset.
    pub prompt_id: String,
    /// Which of the `n` samples of that prompt (0-based).
    pub sample_index: u32,
}

impl fmt::Display for SampleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}#{}",
            self.iteration, self.prompt_id, self.sample_index
        )
    }
}

/// One chat message (`role` is usually system, user or assistant).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_ids() {
        assert_eq!(PolicyVersion(3).next(), PolicyVersion(4));
        assert_eq!(PolicyVersion(2).lag_behind(PolicyVersion(5)), 3);
        assert_eq!(PolicyVersion(7).lag_behind(PolicyVersion(5)), 0);
        let id = SampleId {
            iteration: 2,
            prompt_id: "p17".into(),
            sample_index: 3,
        };
        assert_eq!(id.to_string(), "2/p17#3");
    }
}
