//! The history validator: replays a recorded history — possibly stitched together from several
//! coordinators (a failover) or processes — through the ledger's state machine, and lists every
//! violation instead of stopping at the first.

use std::fmt;

use rlhf_core::SampleId;
use serde::Serialize;

use super::state::LedgerState;
use super::{LedgerEvent, SampleState, ViolationKind};

/// What the end of the history should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The run finished: every leased sample must be trained or dropped (else it is `Lost`).
    Finished,
    /// The run is still going (or was killed): samples in flight are fine.
    Running,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The index of the offending event; `None` for end-of-history findings (`Lost`).
    pub event_index: Option<usize>,
    /// What rule was broken.
    pub kind: ViolationKind,
    /// The sample or lease involved, and what happened.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.event_index {
            Some(i) => write!(f, "event {i}: {}: {}", self.kind, self.message),
            None => write!(f, "at end: {}: {}", self.kind, self.message),
        }
    }
}

/// The outcome of [`validate`]: counts, and the violations (empty when the history is sound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ValidationReport {
    /// Events replayed.
    pub events: usize,
    /// Distinct (iteration, prompt) pairs leased.
    pub prompts: usize,
    /// Leases issued, and how many of them expired.
    pub leases: usize,
    /// Leases that expired.
    pub leases_expired: usize,
    /// Samples trained on.
    pub trained: usize,
    /// Samples dropped with a reason.
    pub dropped: usize,
    /// Samples neither trained nor dropped at the end (in flight, or lost when finished).
    pub unfinished: usize,
    /// Every broken rule, in history order, then end-of-history findings.
    pub violations: Vec<Violation>,
}

impl ValidationReport {
    /// Whether the history broke no rule.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations' kinds, in order (handy in tests).
    pub fn kinds(&self) -> Vec<ViolationKind> {
        self.violations.iter().map(|v| v.kind).collect()
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events, {} prompts, {} leases ({} expired), {} trained, {} dropped, {} unfinished: ",
            self.events,
            self.prompts,
            self.leases,
            self.leases_expired,
            self.trained,
            self.dropped,
            self.unfinished
        )?;
        if self.violations.is_empty() {
            return write!(f, "ok");
        }
        write!(f, "{} violations", self.violations.len())?;
        for violation in &self.violations {
            write!(f, "\n  {violation}")?;
        }
        Ok(())
    }
}

/// Checks a recorded history: every leased prompt's samples generated, scored and trained exactly
/// once per iteration (unless dropped with a reason), under a live lease of the right prompt;
/// no sample trained twice; none lost (when `expect` is [`Expect::Finished`]).
pub fn validate(history: &[LedgerEvent], expect: Expect) -> ValidationReport {
    let mut state = LedgerState::default();
    let mut report = ValidationReport {
        events: history.len(),
        ..ValidationReport::default()
    };
    for (index, event) in history.iter().enumerate() {
        if let Err(error) = state.check(event) {
            report.violations.push(Violation {
                event_index: Some(index),
                kind: error.kind,
                message: error.message,
            });
        }
        state.commit(event);
        match event {
            LedgerEvent::Leased { .. } => report.leases += 1,
            LedgerEvent::Expired { .. } => report.leases_expired += 1,
            _ => {}
        }
    }
    report.prompts = state.prompts.len();
    for ((iteration, prompt_id), slot) in &state.prompts {
        for sample_index in 0..slot.samples {
            let sample = SampleId {
                iteration: *iteration,
                prompt_id: prompt_id.clone(),
                sample_index,
            };
            let what = match state.sample_state(&sample) {
                Some(SampleState::Trained) => {
                    report.trained += 1;
                    continue;
                }
                Some(SampleState::Dropped(_)) => {
                    report.dropped += 1;
                    continue;
                }
                Some(SampleState::Pending) | None => "leased but never generated",
                Some(SampleState::Generated { .. }) => "generated but never scored",
                Some(SampleState::Scored) => "scored but neither trained nor dropped",
            };
            report.unfinished += 1;
            if expect == Expect::Finished {
                report.violations.push(Violation {
                    event_index: None,
                    kind: ViolationKind::Lost,
                    message: format!("sample {sample} {what}"),
                });
            }
        }
    }
    report
}
