//! Append-only JSONL logs (audit, metrics, ledger history): a writer that loses at most the last
//! partial line on a crash, and a reader that tolerates that partial line.
//!
//! Durability contract of [`JsonlWriter`]:
//! - [`JsonlWriter::append`] serialises the record to one line and hands it to the OS in a single
//!   `write` on a file opened for appending: once it returns, the line survives a crash of this
//!   process (kill -9, panic, OOM).
//! - [`JsonlWriter::append_batch`] writes a whole batch with one `write`, then `fdatasync`s:
//!   once it returns, the batch also survives a machine crash or power loss.
//!   [`JsonlWriter::flush`] does the sync alone.
//! - A crash in the middle of a write leaves at most one partial last line. Opening the file
//!   again truncates it (reported by [`JsonlWriter::repaired_bytes`]), and the reader skips it
//!   (reported by [`JsonlLog::truncated_tail`]). Complete lines are never touched.
//!
//! One writer per file: two processes appending to one log is not supported.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DataError;

/// An append-only JSONL file of `T` records.
#[derive(Debug)]
pub struct JsonlWriter<T> {
    path: PathBuf,
    file: File,
    /// A reused buffer: lines are built here and written in one call.
    line: Vec<u8>,
    repaired_bytes: u64,
    _records: PhantomData<fn(&T)>,
}

impl<T: Serialize> JsonlWriter<T> {
    /// Opens (creating it and its parent folders if needed) a log for appending, truncating a
    /// partial last line left by a crash.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let io = |e| DataError::io(&path, e);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let repaired_bytes = truncate_partial_line(&mut file).map_err(io)?;
        Ok(JsonlWriter {
            path,
            file,
            line: Vec::new(),
            repaired_bytes,
            _records: PhantomData,
        })
    }

    /// Appends one record as one line (visible to readers, and safe from a crash of this
    /// process, when this returns).
    pub fn append(&mut self, record: &T) -> Result<(), DataError> {
        self.line.clear();
        self.encode(record)?;
        self.write_buffer()
    }

    /// Appends records with one write, then syncs them to disk.
    pub fn append_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a T>,
    ) -> Result<(), DataError>
    where
        T: 'a,
    {
        self.line.clear();
        for record in records {
            self.encode(record)?;
        }
        self.write_buffer()?;
        self.flush()
    }

    /// Syncs everything appended so far to disk (`fdatasync`).
    pub fn flush(&mut self) -> Result<(), DataError> {
        self.file
            .sync_data()
            .map_err(|e| DataError::io(&self.path, e))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bytes of a partial last line were cut off when the log was opened (0 normally).
    pub fn repaired_bytes(&self) -> u64 {
        self.repaired_bytes
    }

    fn encode(&mut self, record: &T) -> Result<(), DataError> {
        serde_json::to_writer(&mut self.line, record).map_err(|e| {
            DataError::invalid(
                "log record",
                format!("cannot serialise a record for {}: {e}", self.path.display()),
            )
        })?;
        self.line.push(b'\n');
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), DataError> {
        if self.line.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.line)
            .map_err(|e| DataError::io(&self.path, e))
    }
}

/// Cuts the file back to just after its last newline; returns how many bytes were removed.
fn truncate_partial_line(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buffer = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    // No newline at all: the whole file is one partial line.
    file.set_len(0)?;
    Ok(len)
}

/// The records of a JSONL log, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlLog<T> {
    /// The complete records, in order.
    pub records: Vec<T>,
    /// Whether an unparsable last line without a newline (a write cut by a crash) was skipped.
    pub truncated_tail: bool,
}

/// Reads a whole JSONL log. Blank lines are skipped; a malformed complete line is an error
/// naming the file and line; a malformed last line without a newline is a crash's partial
/// write and is skipped (see [`JsonlLog::truncated_tail`]).
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<JsonlLog<T>, DataError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut buffer = Vec::new();
    let mut line_no = 0usize;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|e| DataError::io(path, e))?;
        if read == 0 {
            break;
        }
        line_no += 1;
        let complete = buffer.last() == Some(&b'\n');
        let parsed = std::str::from_utf8(&buffer)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                let text = text.trim();
                if text.is_empty() {
                    Ok(None)
                } else {
                    serde_json::from_str::<T>(text)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
            });
        match parsed {
            Ok(Some(record)) => records.push(record),
            Ok(None) => {}
            Err(_) if !complete => {
                return Ok(JsonlLog {
                    records,
                    truncated_tail: true,
                });
            }
            Err(message) => {
                return Err(DataError::Log {
                    path: path.to_path_buf(),
                    line: line_no,
                    message,
                });
            }
        }
    }
    Ok(JsonlLog {
        records,
        truncated_tail: false,
    })
}
