//! rlhf-data: everything the loop reads and writes that is not a tensor.
//!
//! - **Prompt datasets** ([`load_prompts`]): JSONL or Parquet files of [`PromptRecord`]s, with
//!   errors that name the file, the line or row, and the field; a deterministic held-out
//!   [`split()`] by id; and a [`PromptCursor`] that hands out batches in a seeded epoch order and
//!   checkpoints as a small [`CursorState`].
//! - **Built-in tasks** ([`builtin_task`], [`builtin_reward`]): prompt sets generated in code
//!   with a rule reward, for the CPU quickstart (see [`task`] for the `letters` task and why it
//!   suits a tiny random-initialised model).
//! - **Logs**: the [`audit`] log of every generated and scored sample, the [`metrics`] log of
//!   every step, both append-only JSONL that lose at most a crash's partial last line
//!   ([`JsonlWriter`]).
//! - **The sample [`ledger`]**: the state machine leased → generated → scored → trained (or
//!   dropped with a reason), its event history, and the validator that checks a history for
//!   samples trained twice or lost.
//!
//! Architecture invariant: the rules for what a valid prompt record is, and for which sample
//! transitions are legal, live here and only here.

pub mod audit;
pub mod cursor;
pub mod dataset;
pub mod error;
mod floats;
mod hash;
pub mod jsonl;
pub mod jsonlog;
pub mod ledger;
pub mod metrics;
pub mod parquet_reader;
pub mod record;
pub mod split;
pub mod task;

pub use audit::{AuditRecord, AuditWriter, FinishReason, read_audit};
pub use cursor::{CursorState, PromptCursor};
pub use dataset::{LoadOptions, LoadReport, load_prompts};
pub use error::{DataError, Location, RecordError};
pub use jsonlog::{JsonlLog, JsonlWriter, read_jsonl};
pub use ledger::{
    DropReason, Expect, HistoryWriter, LeaseId, Ledger, LedgerError, LedgerEvent, SampleState,
    ValidationReport, Violation, ViolationKind, history_before, read_history, validate,
};
pub use metrics::{MetricsRecord, MetricsWriter, read_metrics};
pub use record::{Prompt, PromptRecord};
pub use split::{is_held_out, split};
pub use task::{BuiltinTask, builtin_reward, builtin_task};
