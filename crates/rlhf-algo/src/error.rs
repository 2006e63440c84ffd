//! The error type of rlhf-algo: every loss returns `Result<_, AlgoError>` instead of panicking
//! or silently producing NaN.

use std::fmt;

/// Everything that can go wrong when computing an objective.
///
/// Messages are lowercase and name the offending input or config field.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AlgoError {
    /// An input holds NaN or ±inf; `index` is the flat (row-major) position of the first one.
    #[error("input `{input}` holds a non-finite value {value} at flat index {index}")]
    NonFinite {
        /// Which input.
        input: &'static str,
        /// Flat index of the first non-finite element.
        index: usize,
        /// The offending value (NaN or ±inf).
        value: f32,
    },
    /// The computed loss is not finite (inputs were finite, so the objective overflowed).
    #[error("objective `{objective}` produced a non-finite loss {value}")]
    NonFiniteLoss {
        /// Config name of the objective.
        objective: &'static str,
        /// The value read back.
        value: f32,
    },
    /// Two inputs disagree in shape, or an input has the wrong shape.
    #[error("input `{input}` has shape {got:?}, expected {expected:?}")]
    Shape {
        /// Which input.
        input: &'static str,
        /// Expected dimensions.
        expected: Vec<usize>,
        /// Actual dimensions.
        got: Vec<usize>,
    },
    /// An input is present but not usable (empty batch, out-of-range label, unsorted list...).
    #[error("input `{input}` is invalid: {reason}")]
    InvalidInput {
        /// Which input.
        input: &'static str,
        /// Why.
        reason: String,
    },
    /// The objective needs an input that the batch does not carry.
    #[error("objective `{objective}` needs input `{input}`, which the batch does not carry")]
    MissingInput {
        /// Config name of the objective.
        objective: &'static str,
        /// The missing input.
        input: &'static str,
    },
    /// The objective was handed the wrong kind of batch.
    #[error("objective `{objective}` needs a {expected} batch, got a {got} batch")]
    WrongBatch {
        /// Config name of the objective.
        objective: &'static str,
        /// Batch kind it needs.
        expected: &'static str,
        /// Batch kind it got.
        got: &'static str,
    },
    /// A hyperparameter is out of range; `field` is `objective.field`.
    #[error("invalid config field `{field}`: {reason}")]
    InvalidConfig {
        /// Dotted field path, e.g. `rdpo.epsilon`.
        field: String,
        /// Why.
        reason: String,
    },
    /// Reading a tensor back from the device failed.
    #[error("backend error: {0}")]
    Backend(String),
}

impl AlgoError {
    pub(crate) fn invalid(input: &'static str, reason: impl fmt::Display) -> Self {
        Self::InvalidInput {
            input,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn config(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with [`AlgoError`].
pub type Result<T, E = AlgoError> = std::result::Result<T, E>;
