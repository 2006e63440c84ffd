//! The error type of this crate: every variant names the file (and where it applies the field)
//! that caused it, so that a user can fix a checkpoint folder from the message alone.

use std::path::PathBuf;

/// Errors raised while loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration field is missing, has the wrong type, or holds an unsupported value.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A safetensors file is malformed, truncated or misses a tensor.
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    /// A tensor exists but has the wrong shape for the configuration.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// The tokenizer could not be loaded or used.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// The chat template could not be parsed or rendered.
    #[error("{path}: chat template: {message}")]
    ChatTemplate { path: PathBuf, message: String },
    /// Bad arguments to a model call (empty batch, ids out of range, ...).
    #[error("{0}")]
    Input(String),
    /// A tensor held NaN or infinite values where finite ones were required.
    #[error("non-finite values in {0}")]
    NonFinite(String),
    /// A burn tensor could not be converted to host data.
    #[error("tensor data: {0}")]
    Data(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Weights {
            path: path.into(),
            message: message.into(),
        }
    }
}
