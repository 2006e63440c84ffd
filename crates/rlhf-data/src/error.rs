//! The crate's error type: every failure names the file, and where it can the line (JSONL) or
//! row (Parquet) and the field, so that a bad dataset is fixed from the message alone.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where in a file a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A line of a JSONL file, 1-based as editors count.
    Line(usize),
    /// A row of a Parquet file, 0-based as pandas counts, across row groups.
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// One bad record: where it is, which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The line or row of the record.
    pub location: Location,
    /// The offending field (`prompt`, `messages[1].role`, ...), when one field is to blame.
    pub field: Option<String>,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field `{field}`: {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// A problem found in a record before its location is known (the parser does not know it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub(crate) fn at(self, location: Location) -> RecordError {
        RecordError {
            location,
            field: self.field,
            message: self.message,
        }
    }
}

/// Errors of rlhf-data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record of a dataset is malformed (and `skip_malformed` is off).
    #[error("{}: {error}", .path.display())]
    Record {
        /// The dataset file.
        path: PathBuf,
        /// What is wrong, and where.
        error: RecordError,
    },
    /// A dataset holds no usable record.
    #[error("{}: dataset is empty{}", .path.display(), skipped_note(*.skipped))]
    Empty {
        /// The dataset file.
        path: PathBuf,
        /// How many malformed records were skipped (all of them, if the file was not blank).
        skipped: usize,
    },
    /// The file's extension names no supported dataset format.
    #[error("{}: unsupported dataset format (expected a .jsonl or .parquet file)", .path.display())]
    UnsupportedFormat {
        /// The dataset file.
        path: PathBuf,
    },
    /// The Parquet reader failed on the file as a whole (bad footer, unsupported codec, ...).
    #[error("{}: parquet: {message}", .path.display())]
    Parquet {
        /// The dataset file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A line of a JSONL log (audit, metrics, ledger history) cannot be read back.
    #[error("{}: line {line}: {message}", .path.display())]
    Log {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value handed to a function is out of its range (`what` names the argument).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// The argument or setting.
        what: &'static str,
        /// Why it is invalid.
        message: String,
    },
}

fn skipped_note(skipped: usize) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(" ({skipped} malformed records skipped)")
    }
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        DataError::Invalid {
            what,
            message: message.into(),
        }
    }
}
