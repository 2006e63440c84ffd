//! Resuming a run (`coordinator.resume`, `rlhf run --resume`).
//!
//! Every checkpoint the coordinator asks for (`checkpoints/iter-N/` and `final/`) carries the
//! learner's training state (`learner-state/`, see `rlhf_learner::resume`) and, written last,
//! the coordinator's own `resume.json`: iterations done, policy version, the prompt cursor,
//! counters, held-out rewards, and the byte length of each log at that moment. Resuming picks
//! the checkpoint with the most iterations done that has a `resume.json`, cuts every log back to
//! its recorded length (whatever a crash or a later iteration appended is dropped and redone),
//! removes from `ledger.jsonl` the events of later iterations that were in flight when the
//! checkpoint was taken (pipelined mode; they are redone), rebuilds the sample ledger from it,
//! asks the learner to restore its state, and continues the loop at the next iteration. A synchronous run resumed this way writes the same metrics, samples and
//! weights as one that never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rlhf_data::{CursorState, Ledger, PromptCursor, PromptRecord};
use serde::{Deserialize, Serialize};

use crate::{CoordinatorConfig, CoordinatorError};

/// The coordinator's state file inside a checkpoint folder.
pub const FILE: &str = "resume.json";

/// The logs cut back on resume.
pub const LOGS: [&str; 4] = [
    "metrics.jsonl",
    "timings.jsonl",
    "samples.jsonl",
    "ledger.jsonl",
];

/// The `resume.json` format this build writes and reads.
pub const FORMAT: u32 = 1;

/// What the coordinator needs to continue a run from a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    pub format: u32,
    /// Iterations completed (the next one to run).
    pub iterations_done: u64,
    pub policy_version: u64,
    /// The prompt cursor after the last completed iteration's batch.
    pub cursor: CursorState,
    pub samples_trained: u64,
    pub dropped: BTreeMap<String, u64>,
    pub initial_heldout_reward: Option<f64>,
    pub heldout_rewards: Vec<(u64, f64)>,
    /// Byte length of each log (by file name) when the checkpoint was taken.
    pub logs: BTreeMap<String, u64>,
    /// Checked on resume: a different seed or sample count is another run.
    pub seed: u64,
    pub samples_per_prompt: u32,
}

fn io(path: &Path, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Io(format!("{}: {e}", path.display()))
}

/// The current byte length of each log in `out`.
pub fn log_lengths(out: &Path) -> Result<BTreeMap<String, u64>, CoordinatorError> {
    let mut logs = BTreeMap::new();
    for name in LOGS {
        let path = out.join(name);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(&path, e)),
        };
        logs.insert(name.to_string(), len);
    }
    Ok(logs)
}

/// Writes `resume.json` into a checkpoint folder, atomically.
pub fn write(dir: &Path, state: &RunState) -> Result<(), CoordinatorError> {
    let path = dir.join(FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| io(&path, e))?;
    write_atomic(&path, &text)
}

/// Replaces `path` with `text` atomically: written beside it (`<name>.tmp`), then renamed, so
/// a reader (or a resume after a crash) sees the old file or the new one, never half of one.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<(), CoordinatorError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// The checkpoint folders of `out` that may hold a `resume.json`.
fn candidates(out: &Path) -> Result<Vec<PathBuf>, CoordinatorError> {
    let mut candidates = vec![out.join("final")];
    let dir = out.join("checkpoints");
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            candidates.push(entry.map_err(|e| io(&dir, e))?.path());
        }
    }
    Ok(candidates)
}

/// A fresh run replaces the logs, so earlier checkpoints in `out` can no longer be resumed
/// from: their `resume.json` goes (the checkpoints themselves stay).
pub fn forget(out: &Path) -> Result<(), CoordinatorError> {
    for c in candidates(out)? {
        let path = c.join(FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
    }
    Ok(())
}

/// The resumable checkpoint with the most iterations done in `out`, if any.
pub fn latest(out: &Path) -> Result<Option<(PathBuf, RunState)>, CoordinatorError> {
    let mut best: Option<(PathBuf, RunState)> = None;
    for c in candidates(out)? {
        let path = c.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path, e)),
        };
        let state: RunState = serde_json::from_str(&text).map_err(|e| io(&path, e))?;
        if state.format != FORMAT {
            return Err(io(
                &path,
                format!("format {} (this build reads {FORMAT})", state.format),
            ));
        }
        if best
            .as_ref()
            .is_none_or(|(_, b)| state.iterations_done > b.iterations_done)
        {
            best = Some((c, state));
        }
    }
    Ok(best)
}

/// What a resumed run starts from.
pub(crate) struct Restored {
    /// The prompt cursor after the checkpoint's last iteration.
    pub cursor: PromptCursor,
    /// The sample ledger rebuilt from `ledger.jsonl`.
    pub ledger: Ledger,
    /// How many of the ledger's events are already in `ledger.jsonl`.
    pub on_disk: usize,
    /// Samples still unfinished before the checkpoint, abandoned (none, normally).
    pub abandoned: usize,
}

/// Prepares `out` and the loop's state to continue from the checkpoint `dir` with `state`:
/// checks the run's identity, cuts the logs back, drops later iterations' in-flight events
/// from the ledger, and rebuilds the cursor (over the `train` prompts) and the ledger.
pub(crate) fn restore(
    out: &Path,
    config: &CoordinatorConfig,
    train: Vec<PromptRecord>,
    dir: &Path,
    state: &RunState,
) -> Result<Restored, CoordinatorError> {
    if state.seed != config.seed || state.samples_per_prompt != config.samples_per_prompt {
        return Err(CoordinatorError::Config(format!(
            "resume: {} was written with coordinator.seed = {} and samples_per_prompt = {}; this \
             run has {} and {}",
            dir.display(),
            state.seed,
            state.samples_per_prompt,
            config.seed,
            config.samples_per_prompt
        )));
    }
    truncate_logs(out, &state.logs)?;
    let cursor = PromptCursor::resume(train, state.cursor)
        .map_err(|e| CoordinatorError::Data(format!("resume from {}: {e}", dir.display())))?;
    let history = rlhf_data::read_history(out.join("ledger.jsonl"))
        .map_err(|e| CoordinatorError::Ledger(e.to_string()))?
        .records;
    // Work of later iterations that was in flight (pipelined mode) is redone: its events leave
    // the ledger as if it had never been leased.
    let recorded = history.len();
    let history = rlhf_data::history_before(history, state.iterations_done);
    if history.len() < recorded {
        rewrite_history(out, &history)?;
    }
    let mut ledger = Ledger::replay(config.samples_per_prompt, history)
        .map_err(|e| CoordinatorError::Ledger(format!("resume: {e}")))?;
    let on_disk = ledger.history().len();
    // Nothing should be unfinished before the checkpoint; if it is, it is not redone.
    let abandoned = ledger
        .abandon_unfinished("resumed")
        .map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
    tracing::info!(
        from = %dir.display(),
        iterations_done = state.iterations_done,
        policy_version = state.policy_version,
        abandoned,
        "resuming"
    );
    Ok(Restored {
        cursor,
        ledger,
        on_disk,
        abandoned,
    })
}

/// Cuts each log back to its recorded length. A log shorter than recorded means the outputs
/// were changed by hand or by another run: an error, not a guess.
pub fn truncate_logs(out: &Path, logs: &BTreeMap<String, u64>) -> Result<(), CoordinatorError> {
    for (name, &len) in logs {
        let path = out.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(len == 0)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let now = file.metadata().map_err(|e| io(&path, e))?.len();
        if now < len {
            return Err(io(
                &path,
                format!(
                    "{now} bytes, shorter than the {len} bytes the checkpoint recorded: cannot \
                     resume"
                ),
            ));
        }
        if now > len {
            file.set_len(len).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// Replaces `ledger.jsonl` with `history` (atomically: written beside it, then renamed).
pub fn rewrite_history(
    out: &Path,
    history: &[rlhf_data::LedgerEvent],
) -> Result<(), CoordinatorError> {
    let path = out.join("ledger.jsonl");
    let tmp = out.join("ledger.jsonl.resume-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut w = rlhf_data::HistoryWriter::open(&tmp).map_err(|e| io(&tmp, e))?;
    w.append_batch(history.iter()).map_err(|e| io(&tmp, e))?;
    drop(w);
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
}
