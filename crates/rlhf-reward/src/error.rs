//! Errors. [`ScoreError`] is the per-sample outcome of a score that could not be produced (a
//! missing reward is always one of these, never a silent 0); [`RewardError`] is what building a
//! scorer from its config can fail with, at start-up.

use std::fmt;

use thiserror::Error;

/// Why one sample has no score. Every variant names the scorer that failed, so that an ensemble
/// or a log line can say which member is missing.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScoreError {
    /// The scorer's deadline passed before it had an answer (a judge that did not reply in time).
    #[error("{scorer}: timed out: {message}")]
    Timeout {
        /// The scorer that failed.
        scorer: String,
        /// What happened, naming the URL or input where there is one.
        message: String,
    },
    /// The scorer's backend could not be reached (connection refused, DNS, repeated 5xx).
    #[error("{scorer}: unreachable: {message}")]
    Unreachable {
        /// The scorer that failed.
        scorer: String,
        /// What happened, naming the URL or input where there is one.
        message: String,
    },
    /// The backend refused the request for good (HTTP 4xx other than 429: bad key, bad model).
    #[error("{scorer}: rejected: {message}")]
    Rejected {
        /// The scorer that failed.
        scorer: String,
        /// What happened, naming the URL or input where there is one.
        message: String,
    },
    /// The input cannot be scored by this scorer (no `answer` for an exact-answer scorer), or the
    /// backend's reply could not be understood (malformed JSON, no rating in the text).
    #[error("{scorer}: invalid: {message}")]
    Invalid {
        /// The scorer that failed.
        scorer: String,
        /// What happened, naming the URL or input where there is one.
        message: String,
    },
    /// The scorer produced NaN or an infinity; such values are rejected, counted and never
    /// trained on.
    #[error("{scorer}: non-finite score {value}")]
    NonFinite {
        /// The scorer that failed.
        scorer: String,
        /// The rejected value.
        value: f64,
    },
    /// The scorer itself failed (a model forward pass error, a worker task that died).
    #[error("{scorer}: internal error: {message}")]
    Internal {
        /// The scorer that failed.
        scorer: String,
        /// What happened, naming the URL or input where there is one.
        message: String,
    },
    /// A member of an ensemble had no score for this sample.
    #[error("ensemble member `{member}` has no score: {source}")]
    Member {
        /// The member's name in the ensemble config.
        member: String,
        /// The member's own error.
        source: Box<ScoreError>,
    },
}

/// The kind of a [`ScoreError`], for metrics and for mapping to wire error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScoreErrorKind {
    /// [`ScoreError::Timeout`].
    Timeout,
    /// [`ScoreError::Unreachable`].
    Unreachable,
    /// [`ScoreError::Rejected`].
    Rejected,
    /// [`ScoreError::Invalid`].
    Invalid,
    /// [`ScoreError::NonFinite`].
    NonFinite,
    /// [`ScoreError::Internal`].
    Internal,
}

impl ScoreErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ScoreErrorKind; 6] = [
        ScoreErrorKind::Timeout,
        ScoreErrorKind::Unreachable,
        ScoreErrorKind::Rejected,
        ScoreErrorKind::Invalid,
        ScoreErrorKind::NonFinite,
        ScoreErrorKind::Internal,
    ];

    /// A stable snake_case name (`non_finite`), for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreErrorKind::Timeout => "timeout",
            ScoreErrorKind::Unreachable => "unreachable",
            ScoreErrorKind::Rejected => "rejected",
            ScoreErrorKind::Invalid => "invalid",
            ScoreErrorKind::NonFinite => "non_finite",
            ScoreErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ScoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ScoreError {
    /// The kind of the error; an ensemble member's error has the kind of its cause.
    pub fn kind(&self) -> ScoreErrorKind {
        match self {
            ScoreError::Timeout { .. } => ScoreErrorKind::Timeout,
            ScoreError::Unreachable { .. } => ScoreErrorKind::Unreachable,
            ScoreError::Rejected { .. } => ScoreErrorKind::Rejected,
            ScoreError::Invalid { .. } => ScoreErrorKind::Invalid,
            ScoreError::NonFinite { .. } => ScoreErrorKind::NonFinite,
            ScoreError::Internal { .. } => ScoreErrorKind::Internal,
            ScoreError::Member { source, .. } => source.kind(),
        }
    }

    /// Whether trying again later could succeed (timeouts and unreachable backends).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ScoreErrorKind::Timeout | ScoreErrorKind::Unreachable
        )
    }

    /// The name of the scorer that failed (for a member error, the member's name).
    pub fn scorer(&self) -> &str {
        match self {
            ScoreError::Timeout { scorer, .. }
            | ScoreError::Unreachable { scorer, .. }
            | ScoreError::Rejected { scorer, .. }
            | ScoreError::Invalid { scorer, .. }
            | ScoreError::NonFinite { scorer, .. }
            | ScoreError::Internal { scorer, .. } => scorer,
            ScoreError::Member { member, .. } => member,
        }
    }

    /// Shorthand for [`ScoreError::Invalid`].
    pub fn invalid(scorer: &str, message: impl Into<String>) -> Self {
        ScoreError::Invalid {
            scorer: scorer.to_owned(),
            message: message.into(),
        }
    }

    /// Shorthand for [`ScoreError::Internal`].
    pub fn internal(scorer: &str, message: impl Into<String>) -> Self {
        ScoreError::Internal {
            scorer: scorer.to_owned(),
            message: message.into(),
        }
    }
}

/// Checks that a value is finite, or names the scorer in a [`ScoreError::NonFinite`].
pub fn ensure_finite(scorer: &str, value: f64) -> Result<f64, ScoreError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ScoreError::NonFinite {
            scorer: scorer.to_owned(),
            value,
        })
    }
}

/// Building a scorer failed: a bad config field, a missing rule, a model that does not load.
#[derive(Debug, Error)]
pub enum RewardError {
    /// A config field is invalid; `field` is its path, e.g. `members[1].scorer.pattern`.
    #[error("invalid scorer config: `{field}`: {message}")]
    Config {
        /// The field's path.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The reward model could not be loaded.
    #[error("cannot load reward model: {0}")]
    Model(#[from] rlhf_model::ModelError),
    /// A task rule could not be registered.
    #[error("rule registry: {0}")]
    Rule(String),
    /// The HTTP client for a judge could not be built.
    #[error("cannot build the judge's HTTP client: {0}")]
    Http(String),
}

impl RewardError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        RewardError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let inner = ScoreError::Timeout {
            scorer: "judge".into(),
            message: "deadline of 1s passed".into(),
        };
        let err = ScoreError::Member {
            member: "helpfulness".into(),
            source: Box::new(inner),
        };
        assert_eq!(err.kind(), ScoreErrorKind::Timeout);
        assert!(err.is_transient());
        assert_eq!(err.scorer(), "helpfulness");
        assert_eq!(
            err.to_string(),
            "ensemble member `helpfulness` has no score: judge: timed out: deadline of 1s passed"
        );
        assert_eq!(
            ensure_finite("rm", f64::NAN).map_err(|e| e.kind()),
            Err(ScoreErrorKind::NonFinite)
        );
        assert_eq!(ensure_finite("rm", 1.5), Ok(1.5));
        assert_eq!(ScoreErrorKind::NonFinite.to_string(), "non_finite");
    }
}
