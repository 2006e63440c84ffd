//! JSONL prompt datasets: one JSON object per line; blank lines are ignored (but still counted,
//! so line numbers and default ids match what an editor shows).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use crate::dataset::{Collector, LoadOptions, LoadReport};
use crate::error::{DataError, Location, RecordError};
use crate::record::kind;

/// Loads a JSONL dataset (see [`crate::load_prompts`] for the record rules).
pub fn load_jsonl(path: &Path, options: LoadOptions) -> Result<LoadReport, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut collector = Collector::new(path, options);
    let mut reader = BufReader::new(file);
    let mut buffer = Vec::new();
    let mut index = 0usize;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|e| DataError::io(path, e))?;
        if read == 0 {
            break;
        }
        let location = Location::Line(index + 1);
        let this_index = index;
        index += 1;
        let Ok(line) = std::str::from_utf8(&buffer) else {
            collector.reject(whole(location, "not valid UTF-8".into()))?;
            continue;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => collector.push_object(location, this_index, object)?,
            Ok(other) => collector.reject(whole(
                location,
                format!("expected a JSON object, found {}", kind(&other)),
            ))?,
            Err(e) => collector.reject(whole(location, format!("malformed JSON: {e}")))?,
        }
    }
    collector.finish()
}

fn whole(location: Location, message: String) -> RecordError {
    RecordError {
        location,
        field: None,
        message,
    }
}
