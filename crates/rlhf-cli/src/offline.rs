//! What the offline training commands (`rlhf sft`, `rlhf rm`) share: their optimisation
//! defaults and checks, and the per-step JSONL log with progress lines.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub fn default_lr() -> f64 {
    1e-4
}
pub fn default_clip() -> f64 {
    1.0
}
pub fn default_batch() -> usize {
    8
}
pub fn default_epochs() -> usize {
    1
}
pub fn default_max_len() -> usize {
    1024
}

/// Checks the optimisation settings of section `section` of the file `at`, naming the field.
pub fn check_optim(
    at: &Path,
    section: &str,
    lr: f64,
    batch_size: usize,
    epochs: usize,
    max_len: usize,
) -> Result<()> {
    let at = at.display();
    if !(lr > 0.0 && lr.is_finite()) {
        bail!("{at}: {section}.lr must be a positive number");
    }
    if batch_size == 0 || epochs == 0 || max_len < 2 {
        bail!(
            "{at}: {section}.batch_size and {section}.epochs must be at least 1, {section}.max_len at least 2"
        );
    }
    Ok(())
}

/// `{command}_log.jsonl` in the output folder (one JSON object per step), and a progress line
/// on stderr at the first, every tenth and the last step. A write error is reported by
/// [`StepLog::finish`], not lost.
pub struct StepLog {
    command: &'static str,
    file: std::fs::File,
    path: PathBuf,
    error: Option<std::io::Error>,
}

impl StepLog {
    /// Creates `dir` and the log in it.
    pub fn create(dir: &Path, command: &'static str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let path = dir.join(format!("{command}_log.jsonl"));
        let file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        Ok(Self {
            command,
            file,
            path,
            error: None,
        })
    }

    /// Logs `record` for step `step` of `total`; `progress` follows the step count on stderr.
    pub fn step(&mut self, step: u64, total: u64, record: serde_json::Value, progress: &str) {
        if let Err(e) = writeln!(self.file, "{record}") {
            self.error.get_or_insert(e);
        }
        if step == 1 || step == total || step.is_multiple_of(10) {
            eprintln!("{}: step {step}/{total} {progress}", self.command);
        }
    }

    /// The first write error, if any.
    pub fn finish(self) -> Result<()> {
        match self.error {
            Some(e) => bail!("{}: {e}", self.path.display()),
            None => Ok(()),
        }
    }
}
