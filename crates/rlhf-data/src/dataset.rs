//! Loading prompt datasets: the entry point [`load_prompts`], its options and report, and the
//! checks both formats share (duplicate ids, empty datasets, skipping malformed records).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, FieldError, Location, RecordError};
use crate::record::PromptRecord;

/// How to load a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Skip malformed records (bad JSON, missing prompt, wrong types, duplicate ids) and list
    /// them in [`LoadReport::skipped`] instead of failing on the first one.
    pub skip_malformed: bool,
}

/// A loaded dataset and what was left out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The file that was read.
    pub path: PathBuf,
    /// The records, in file order.
    pub records: Vec<PromptRecord>,
    /// The malformed records that were skipped (empty unless `skip_malformed` is on).
    pub skipped: Vec<RecordError>,
}

/// Loads a prompt dataset, choosing the format by extension: `.jsonl` (also `.ndjson`) or
/// `.parquet` (also `.pq`).
///
/// Record rules, shared by both formats: `prompt` (a non-empty string) or `messages` (a non-empty
/// list of `{role, content}`), exactly one of them; optional `answer` and `group` (strings);
/// optional `id` (a string or an integer; by default the 0-based line or row number as a string);
/// every other field is kept in [`PromptRecord::metadata`]. `null` counts as absent. Ids must be
/// unique. A dataset with no record is an error.
pub fn load_prompts(path: impl AsRef<Path>, options: LoadOptions) -> Result<LoadReport, DataError> {
    let path = path.as_ref();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("jsonl" | "ndjson") => crate::jsonl::load_jsonl(path, options),
        Some("parquet" | "pq") => crate::parquet_reader::load_parquet(path, options),
        _ => Err(DataError::UnsupportedFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// Collects records of one file: parses, checks ids, applies `skip_malformed`.
pub(crate) struct Collector {
    path: PathBuf,
    options: LoadOptions,
    records: Vec<PromptRecord>,
    skipped: Vec<RecordError>,
    /// Where each id was first seen, to name both places of a duplicate.
    seen: HashMap<String, Location>,
}

impl Collector {
    pub(crate) fn new(path: &Path, options: LoadOptions) -> Self {
        Collector {
            path: path.to_path_buf(),
            options,
            records: Vec::new(),
            skipped: Vec::new(),
            seen: HashMap::new(),
        }
    }

    /// Records a problem: fails the load, or notes it and goes on.
    pub(crate) fn reject(&mut self, error: RecordError) -> Result<(), DataError> {
        if self.options.skip_malformed {
            self.skipped.push(error);
            Ok(())
        } else {
            Err(DataError::Record {
                path: self.path.clone(),
                error,
            })
        }
    }

    /// Parses one record given as a JSON object; `index` is its 0-based line or row number
    /// (the default id).
    pub(crate) fn push_object(
        &mut self,
        location: Location,
        index: usize,
        object: Map<String, Value>,
    ) -> Result<(), DataError> {
        let record = match PromptRecord::from_json(object, Some(index.to_string())) {
            Ok(record) => record,
            Err(error) => return self.reject(error.at(location)),
        };
        if let Some(first) = self.seen.get(&record.id) {
            let error = FieldError::new(
                "id",
                format!("duplicate id {:?} (first at {first})", record.id),
            );
            return self.reject(error.at(location));
        }
        self.seen.insert(record.id.clone(), location);
        self.records.push(record);
        Ok(())
    }

    /// Ends the load: an empty result is an error naming the file.
    pub(crate) fn finish(self) -> Result<LoadReport, DataError> {
        if self.records.is_empty() {
            return Err(DataError::Empty {
                path: self.path,
                skipped: self.skipped.len(),
            });
        }
        Ok(LoadReport {
            path: self.path,
            records: self.records,
            skipped: self.skipped,
        })
    }
}
