//! The ledger's state machine, shared by [`super::Ledger`] (which refuses illegal transitions)
//! and [`super::validate`] (which reports them and carries on).
//!
//! Every event is first checked ([`LedgerState::check`]) and then committed
//! ([`LedgerState::commit`]). `commit` is total: it applies the event's effect as far as it
//! makes sense even when `check` failed, so that a validator replaying a bad history reports
//! each violation once instead of a cascade.

use std::collections::{BTreeMap, HashMap};

use rlhf_core::SampleId;

use super::{DropReason, LeaseId, LedgerError, LedgerEvent, SampleState, ViolationKind};

/// What became of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseStatus {
    /// The worker holds it and may submit samples.
    Active,
    /// It timed out: submissions under it are refused (fencing).
    Expired,
    /// Every sample of its prompt was generated or dropped.
    Fulfilled,
}

impl LeaseStatus {
    fn name(self) -> &'static str {
        match self {
            LeaseStatus::Active => "active",
            LeaseStatus::Expired => "expired",
            LeaseStatus::Fulfilled => "fulfilled",
        }
    }
}

/// What the ledger remembers of a lease.
#[derive(Debug, Clone)]
pub(crate) struct LeaseRecord {
    pub(crate) iteration: u64,
    pub(crate) prompt_id: String,
    /// Named in messages, so that a zombie worker can be found.
    pub(crate) worker: String,
    pub(crate) status: LeaseStatus,
}

/// One (iteration, prompt) slot.
#[derive(Debug, Clone)]
pub(crate) struct PromptSlot {
    /// How many samples the prompt needs (from its first lease).
    pub(crate) samples: u32,
    /// The lease currently held, if any.
    pub(crate) active: Option<LeaseId>,
}

/// The replayable state of a ledger.
#[derive(Debug, Clone, Default)]
pub(crate) struct LedgerState {
    pub(crate) leases: HashMap<LeaseId, LeaseRecord>,
    /// Ordered, so that reports list prompts deterministically.
    pub(crate) prompts: BTreeMap<(u64, String), PromptSlot>,
    /// Samples past `Pending`; a leased sample that is absent here is pending.
    pub(crate) samples: HashMap<SampleId, SampleState>,
}

fn err(kind: ViolationKind, message: String) -> Result<(), LedgerError> {
    Err(LedgerError { kind, message })
}

impl LedgerState {
    /// The state of a sample of a leased prompt (`None` if its prompt was never leased or the
    /// index is out of range).
    pub(crate) fn sample_state(&self, sample: &SampleId) -> Option<SampleState> {
        let slot = self
            .prompts
            .get(&(sample.iteration, sample.prompt_id.clone()))?;
        if sample.sample_index >= slot.samples {
            return None;
        }
        Some(
            self.samples
                .get(sample)
                .cloned()
                .unwrap_or(SampleState::Pending),
        )
    }

    /// Whether the event is a legal transition from this state.
    pub(crate) fn check(&self, event: &LedgerEvent) -> Result<(), LedgerError> {
        match event {
            LedgerEvent::Leased {
                lease,
                iteration,
                prompt_id,
                ..
            } => {
                if self.leases.contains_key(lease) {
                    return err(
                        ViolationKind::LeaseIdReused,
                        format!("lease {lease} issued twice"),
                    );
                }
                let Some(slot) = self.prompts.get(&(*iteration, prompt_id.clone())) else {
                    return Ok(());
                };
                if let Some(active) = slot.active {
                    return err(
                        ViolationKind::AlreadyLeased,
                        format!(
                            "prompt {prompt_id:?} of iteration {iteration} is held by lease {active}"
                        ),
                    );
                }
                if self.is_complete(*iteration, prompt_id, slot.samples) {
                    return err(
                        ViolationKind::LeasedWhenComplete,
                        format!(
                            "prompt {prompt_id:?} of iteration {iteration} has no sample left to generate"
                        ),
                    );
                }
                Ok(())
            }
            LedgerEvent::Expired { lease } => match self.leases.get(lease) {
                None => err(
                    ViolationKind::UnknownLease,
                    format!("lease {lease} was never issued"),
                ),
                Some(record) if record.status != LeaseStatus::Active => err(
                    ViolationKind::LeaseNotActive,
                    format!("lease {lease} is already {}", record.status.name()),
                ),
                Some(_) => Ok(()),
            },
            LedgerEvent::Generated { lease, sample, .. } => self.check_generated(*lease, sample),
            LedgerEvent::Scored { sample } => match self.known_sample(sample)? {
                SampleState::Pending => err(
                    ViolationKind::NotGenerated,
                    format!("sample {sample} scored before it was generated"),
                ),
                SampleState::Generated { .. } => Ok(()),
                SampleState::Scored => err(
                    ViolationKind::ScoredTwice,
                    format!("sample {sample} scored twice"),
                ),
                final_state => err(
                    ViolationKind::AlreadyFinal,
                    format!("sample {sample} scored after it was {}", final_state.name()),
                ),
            },
            LedgerEvent::Trained { sample } => match self.known_sample(sample)? {
                SampleState::Pending | SampleState::Generated { .. } => err(
                    ViolationKind::NotScored,
                    format!("sample {sample} trained before it was scored"),
                ),
                SampleState::Scored => Ok(()),
                SampleState::Trained => err(
                    ViolationKind::TrainedTwice,
                    format!("sample {sample} trained twice"),
                ),
                SampleState::Dropped(reason) => err(
                    ViolationKind::TrainedAfterDrop,
                    format!(
                        "sample {sample} trained after it was dropped ({})",
                        reason.kind_name()
                    ),
                ),
            },
            LedgerEvent::Dropped { sample, reason } => {
                let state = self.known_sample(sample)?;
                if matches!(state, SampleState::Trained | SampleState::Dropped(_)) {
                    return err(
                        ViolationKind::AlreadyFinal,
                        format!("sample {sample} dropped after it was {}", state.name()),
                    );
                }
                if !reason.allowed_from(&state) {
                    return err(
                        ViolationKind::InvalidDrop,
                        format!(
                            "sample {sample} cannot be dropped as {} while {}",
                            reason.kind_name(),
                            state.name()
                        ),
                    );
                }
                Ok(())
            }
        }
    }

    fn check_generated(&self, lease: LeaseId, sample: &SampleId) -> Result<(), LedgerError> {
        let Some(record) = self.leases.get(&lease) else {
            return err(
                ViolationKind::UnknownLease,
                format!("sample {sample} submitted under lease {lease}, which was never issued"),
            );
        };
        if record.iteration != sample.iteration || record.prompt_id != sample.prompt_id {
            return err(
                ViolationKind::LeaseMismatch,
                format!(
                    "sample {sample} submitted under lease {lease}, which is for prompt {:?} of iteration {}",
                    record.prompt_id, record.iteration
                ),
            );
        }
        let Some(state) = self.sample_state(sample) else {
            return err(
                ViolationKind::SampleOutOfRange,
                format!("sample {sample} is beyond the prompt's sample count"),
            );
        };
        if record.status == LeaseStatus::Expired {
            return err(
                ViolationKind::LateSubmission,
                format!(
                    "sample {sample} submitted under expired lease {lease} (worker {:?})",
                    record.worker
                ),
            );
        }
        match state {
            SampleState::Pending => Ok(()),
            SampleState::Dropped(_) => err(
                ViolationKind::AlreadyFinal,
                format!("sample {sample} generated after it was dropped"),
            ),
            _ => err(
                ViolationKind::GeneratedTwice,
                format!("sample {sample} generated twice"),
            ),
        }
    }

    /// The state of a sample whose prompt must have been leased.
    fn known_sample(&self, sample: &SampleId) -> Result<SampleState, LedgerError> {
        self.sample_state(sample).ok_or_else(|| LedgerError {
            kind: ViolationKind::NotLeased,
            message: format!("sample {sample} belongs to no leased prompt"),
        })
    }

    fn is_complete(&self, iteration: u64, prompt_id: &str, samples: u32) -> bool {
        (0..samples).all(|sample_index| {
            let id = SampleId {
                iteration,
                prompt_id: prompt_id.to_owned(),
                sample_index,
            };
            self.samples.contains_key(&id)
        })
    }

    /// Applies the event's effect (see the module docs: total, best effort after a violation).
    pub(crate) fn commit(&mut self, event: &LedgerEvent) {
        match event {
            LedgerEvent::Leased {
                lease,
                iteration,
                prompt_id,
                worker,
                samples,
            } => {
                self.leases.insert(
                    *lease,
                    LeaseRecord {
                        iteration: *iteration,
                        prompt_id: prompt_id.clone(),
                        worker: worker.clone(),
                        status: LeaseStatus::Active,
                    },
                );
                let slot = self
                    .prompts
                    .entry((*iteration, prompt_id.clone()))
                    .or_insert(PromptSlot {
                        samples: *samples,
                        active: None,
                    });
                slot.active = Some(*lease);
            }
            LedgerEvent::Expired { lease } => {
                if let Some(record) = self.leases.get_mut(lease) {
                    record.status = LeaseStatus::Expired;
                    let key = (record.iteration, record.prompt_id.clone());
                    if let Some(slot) = self.prompts.get_mut(&key)
                        && slot.active == Some(*lease)
                    {
                        slot.active = None;
                    }
                }
            }
            LedgerEvent::Generated {
                sample,
                policy_version,
                ..
            } => {
                self.samples
                    .entry(sample.clone())
                    .or_insert(SampleState::Generated {
                        policy_version: *policy_version,
                    });
                self.settle(sample);
            }
            LedgerEvent::Scored { sample } => {
                let state = self
                    .samples
                    .entry(sample.clone())
                    .or_insert(SampleState::Scored);
                if matches!(state, SampleState::Generated { .. }) {
                    *state = SampleState::Scored;
                }
                self.settle(sample);
            }
            LedgerEvent::Trained { sample } => {
                self.samples.insert(sample.clone(), SampleState::Trained);
                self.settle(sample);
            }
            LedgerEvent::Dropped { sample, reason } => {
                let state = self
                    .samples
                    .entry(sample.clone())
                    .or_insert(SampleState::Pending);
                if !matches!(state, SampleState::Trained | SampleState::Dropped(_)) {
                    *state = SampleState::Dropped(reason.clone());
                }
                self.settle(sample);
            }
        }
    }

    /// Marks the prompt's active lease fulfilled once no sample is left to generate.
    fn settle(&mut self, sample: &SampleId) {
        let key = (sample.iteration, sample.prompt_id.clone());
        let Some(slot) = self.prompts.get(&key) else {
            return;
        };
        let (Some(active), samples) = (slot.active, slot.samples) else {
            return;
        };
        if self.is_complete(sample.iteration, &sample.prompt_id, samples) {
            if let Some(record) = self.leases.get_mut(&active) {
                record.status = LeaseStatus::Fulfilled;
            }
            if let Some(slot) = self.prompts.get_mut(&key) {
                slot.active = None;
            }
        }
    }
}

impl DropReason {
    /// Which sample states a drop for this reason may leave.
    fn allowed_from(&self, state: &SampleState) -> bool {
        match self {
            DropReason::NonFinite { .. } | DropReason::Stale { .. } => {
                matches!(state, SampleState::Generated { .. } | SampleState::Scored)
            }
            DropReason::ScoreMissing { .. } => matches!(state, SampleState::Generated { .. }),
            DropReason::Unselected => matches!(state, SampleState::Scored),
            DropReason::Abandoned { .. } => {
                !matches!(state, SampleState::Trained | SampleState::Dropped(_))
            }
            DropReason::PromptTooLong { .. } => matches!(state, SampleState::Pending),
        }
    }
}
