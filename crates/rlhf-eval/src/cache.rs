//! The result cache that makes an evaluation resumable.
//!
//! One append-only JSONL file (`<output.dir>/cache/cache.jsonl`) of `{kind, key, value}`
//! records. The key is the SHA-256 of everything the value depends on — for a generation: the
//! policy's fingerprint, the prompt id and its rendered token ids, the sample index, the seed
//! and the sampling settings — so a changed setting misses the cache instead of returning a
//! stale result. Entries are written (and synced) after every batch, so an interrupted run
//! loses at most the batch in flight; a partial last line left by a crash is dropped.
//! Only successes are cached: a scoring failure or a judge timeout is retried on the next run.
//!
//! [`fingerprint`] identifies a checkpoint folder by content (SHA-256 of its files) or by
//! metadata (name, size, modification time).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rlhf_data::{JsonlWriter, read_jsonl};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Fingerprint;
use crate::error::EvalError;

/// The cache file's name inside the cache folder.
pub const CACHE_FILE: &str = "cache.jsonl";

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A generated sample.
    Generation,
    /// A scorer's value for a sample.
    Score,
    /// A sample's summed log-prob under the reference.
    ReferenceLogp,
    /// An LLM judge's two-order comparison of two samples.
    Comparison,
    /// A preference pair's summed log-probs under a model.
    PairLogps,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Generation => "generation",
            Kind::Score => "score",
            Kind::ReferenceLogp => "reference_logp",
            Kind::Comparison => "comparison",
            Kind::PairLogps => "pair_logps",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    kind: String,
    key: String,
    value: Value,
}

/// The cache: everything read at start-up, new entries appended.
#[derive(Debug)]
pub struct Cache {
    entries: HashMap<(String, String), Value>,
    writer: Option<JsonlWriter<Entry>>,
    path: PathBuf,
}

impl Cache {
    /// No cache: nothing is found, nothing is written.
    pub fn disabled() -> Self {
        Self {
            entries: HashMap::new(),
            writer: None,
            path: PathBuf::new(),
        }
    }

    /// Opens (creating it if needed) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
        let path = dir.join(CACHE_FILE);
        let err = |message: String| EvalError::Cache {
            path: path.clone(),
            message,
        };
        let mut entries = HashMap::new();
        if path.exists() {
            let log = read_jsonl::<Entry>(&path).map_err(|e| {
                err(format!(
                    "{e} (delete the file to start over; results will be recomputed)"
                ))
            })?;
            for e in log.records {
                entries.insert((e.kind, e.key), e.value);
            }
        }
        let writer = JsonlWriter::open(&path).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            entries,
            writer: Some(writer),
            path,
        })
    }

    /// A cached value, if there is one that parses as `T`.
    pub fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Option<T> {
        let v = self
            .entries
            .get(&(kind.as_str().to_owned(), key.to_owned()))?;
        serde_json::from_value(v.clone()).ok()
    }

    /// Records values and syncs them to disk (when enabled).
    pub fn put<T: Serialize>(
        &mut self,
        kind: Kind,
        items: &[(String, T)],
    ) -> Result<(), EvalError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut new = Vec::with_capacity(items.len());
        for (key, value) in items {
            let value = serde_json::to_value(value).map_err(|e| EvalError::Cache {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            new.push(Entry {
                kind: kind.as_str().to_owned(),
                key: key.clone(),
                value,
            });
        }
        if let Some(w) = &mut self.writer {
            w.append_batch(&new).map_err(|e| EvalError::Cache {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        }
        for e in new {
            self.entries.insert((e.kind, e.key), e.value);
        }
        Ok(())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The hex SHA-256 of a value's JSON (the cache key of whatever it describes).
pub fn key_of(parts: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(parts).unwrap_or_default();
    hex(&Sha256::digest(bytes))
}

/// Identifies a checkpoint folder: its weight, config and tokenizer files (`*.safetensors`,
/// `*.json`, `*.jinja`, top level only) by content or by metadata.
pub fn fingerprint(dir: &Path, how: Fingerprint) -> Result<String, EvalError> {
    let read = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = [".safetensors", ".json", ".jinja"]
            .iter()
            .any(|ext| name.ends_with(ext));
        if wanted && entry.path().is_file() {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for (name, path) in files {
        h.update(name.as_bytes());
        h.update([0]);
        match how {
            Fingerprint::Content => {
                let mut f = std::fs::File::open(&path).map_err(|e| EvalError::io(&path, e))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(|e| EvalError::io(&path, e))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
            Fingerprint::Metadata => {
                let meta = std::fs::metadata(&path).map_err(|e| EvalError::io(&path, e))?;
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let abs = std::fs::canonicalize(&path).unwrap_or(path);
                h.update(abs.to_string_lossy().as_bytes());
                h.update(meta.len().to_le_bytes());
                h.update(mtime.to_le_bytes());
            }
        }
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_a_reopen_and_a_torn_last_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        {
            let mut c = Cache::open(dir.path())?;
            c.put(Kind::Score, &[("k1".to_owned(), 0.25f64)])?;
            c.put(Kind::Generation, &[("k1".to_owned(), vec![1u32, 2])])?;
        }
        // A crash in the middle of a write leaves a partial line.
        let path = dir.path().join(CACHE_FILE);
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str("{\"kind\":\"score\",\"key\":\"k2\",\"val");
        std::fs::write(&path, text)?;
        let mut c = Cache::open(dir.path())?;
        assert_eq!(c.get::<f64>(Kind::Score, "k1"), Some(0.25));
        assert_eq!(c.get::<Vec<u32>>(Kind::Generation, "k1"), Some(vec![1, 2]));
        assert_eq!(c.get::<f64>(Kind::Score, "k2"), None);
        assert_eq!(
            c.get::<f64>(Kind::ReferenceLogp, "k1"),
            None,
            "kinds are separate"
        );
        c.put(Kind::Score, &[("k2".to_owned(), 1.0f64)])?;
        let c = Cache::open(dir.path())?;
        assert_eq!((c.len(), c.get::<f64>(Kind::Score, "k2")), (3, Some(1.0)));
        Ok(())
    }

    #[test]
    fn fingerprints_follow_content_and_metadata() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("config.json"), "{}")?;
        std::fs::write(dir.path().join("model.safetensors"), "weights")?;
        std::fs::write(dir.path().join("notes.txt"), "ignored")?;
        let content = fingerprint(dir.path(), Fingerprint::Content)?;
        let meta = fingerprint(dir.path(), Fingerprint::Metadata)?;
        std::fs::write(dir.path().join("notes.txt"), "changed, still ignored")?;
        assert_eq!(fingerprint(dir.path(), Fingerprint::Content)?, content);
        std::fs::write(dir.path().join("model.safetensors"), "weightz")?;
        assert_ne!(fingerprint(dir.path(), Fingerprint::Content)?, content);
        assert_ne!(meta, content);
        assert_eq!(key_of(&("a", 1)), key_of(&("a", 1)));
        assert_ne!(key_of(&("a", 1)), key_of(&("a", 2)));
        Ok(())
    }
}
