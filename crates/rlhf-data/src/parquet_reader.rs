//! Parquet prompt datasets, read with the `parquet` crate's row API (no arrow, to keep build
//! times short).
//!
//! Each row is converted to a JSON object and parsed with the same rules as a JSONL line. String
//! columns map to strings, integer columns to integers, `messages` as written by pandas/pyarrow
//! from a list-of-dicts column (`list<element: struct<role: string, content: string>>`) maps to a
//! list of objects; a list of `map<string, string>` works too. pandas' index columns
//! (`__index_level_N__`) are dropped. Only snappy-compressed and uncompressed files are supported
//! (pandas' default is snappy); other codecs are reported as an error naming the file.

use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use crate::dataset::{Collector, LoadOptions, LoadReport};
use crate::error::{DataError, FieldError, Location};

/// The columns read as strings; a binary column holding UTF-8 text is accepted for them.
const STRING_COLUMNS: [&str; 4] = ["id", "prompt", "answer", "group"];

/// Loads a Parquet dataset (see [`crate::load_prompts`] for the record rules).
pub fn load_parquet(path: &Path, options: LoadOptions) -> Result<LoadReport, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let parquet_error = |message: String| DataError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(e.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| parquet_error(e.to_string()))?;
    let mut collector = Collector::new(path, options);
    for (index, row) in rows.enumerate() {
        // A failure here is in the file's pages (codec, corruption), not one record: fatal.
        let row = row.map_err(|e| parquet_error(with_hint(format!("row {index}: {e}"))))?;
        let location = Location::Row(index);
        match row_to_object(row) {
            Ok(object) => collector.push_object(location, index, object)?,
            Err(error) => collector.reject(error.at(location))?,
        }
    }
    collector.finish()
}

/// Adds what to do when the file uses a codec this build leaves out.
fn with_hint(message: String) -> String {
    if message.contains("Disabled feature at compile time") {
        format!(
            "{message} (this build reads snappy-compressed or uncompressed Parquet; rewrite the file with compression=\"snappy\")"
        )
    } else {
        message
    }
}

fn row_to_object(row: Row) -> Result<Map<String, Value>, FieldError> {
    let mut object = Map::new();
    for (name, field) in row.into_columns() {
        if name.starts_with("__index_level_") {
            continue;
        }
        let value = match field {
            Field::Bytes(bytes) if STRING_COLUMNS.contains(&name.as_str()) => {
                match std::str::from_utf8(bytes.data()) {
                    Ok(text) => Value::String(text.to_owned()),
                    Err(_) => return Err(FieldError::new(name, "binary value is not UTF-8 text")),
                }
            }
            other => other.to_json_value(),
        };
        object.insert(name, value);
    }
    Ok(object)
}
