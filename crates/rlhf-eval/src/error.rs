//! [`EvalError`]: what an evaluation can fail with. Config errors name the field
//! (`policies[1].path`), data errors the file and line, so a bad run fails at start-up with one
//! line that says what to fix.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// An evaluation that could not run or finish.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A config field is invalid; `field` is its path, e.g. `generation.top_p`.
    #[error("invalid eval config: `{field}`: {message}")]
    Config {
        /// The field's path.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A dataset (prompts or preference pairs) could not be read.
    #[error("data: {0}")]
    Data(String),
    /// A policy or reference checkpoint could not be loaded or run.
    #[error("model `{name}`: {message}")]
    Model {
        /// The policy's name (or `reference`).
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A scorer or the judge could not be built.
    #[error(transparent)]
    Reward(#[from] rlhf_reward::RewardError),
    /// The result cache could not be read or written.
    #[error("cache {}: {message}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A worker task died (a panic in a forward pass).
    #[error("internal: {0}")]
    Internal(String),
}

impl EvalError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        EvalError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An I/O error naming `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A model error naming the policy.
    pub fn model(name: &str, message: impl ToString) -> Self {
        EvalError::Model {
            name: name.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Turns a failed blocking task into an [`EvalError::Internal`].
pub(crate) fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, EvalError> {
    r.map_err(|e| EvalError::Internal(format!("a worker task failed: {e}")))
}
