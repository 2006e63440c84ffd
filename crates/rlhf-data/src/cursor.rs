//! A cursor that hands out batches of prompts in a seeded order, epoch after epoch, and whose
//! position is a small serialisable state for checkpoints.
//!
//! Epoch `e` visits every record once, in the order of a Fisher–Yates shuffle driven by
//! SplitMix64 seeded with `(seed, e)`; both are fully specified here, so a resumed run sees
//! exactly the order the interrupted one would have seen. A batch never crosses an epoch
//! boundary, so it never holds the same prompt twice (the last batch of an epoch may be short).

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::hash::{FNV_OFFSET, SplitMix64, fnv1a, mix64};
use crate::record::PromptRecord;

/// Where a cursor is: everything needed to resume it on the same dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorState {
    /// The seed of every epoch's order.
    pub seed: u64,
    /// The current epoch, from 0.
    pub epoch: u64,
    /// How many records of the current epoch were handed out.
    pub position: usize,
    /// The dataset's size, checked on resume.
    pub dataset_len: usize,
    /// A hash of the dataset's ids in order, checked on resume so that a changed dataset is an
    /// error rather than a silently different order.
    pub fingerprint: u64,
}

/// Hands out batches of records in a seeded epoch order.
#[derive(Debug, Clone)]
pub struct PromptCursor {
    records: Vec<PromptRecord>,
    /// The current epoch's order: indices into `records`.
    order: Vec<usize>,
    state: CursorState,
}

impl PromptCursor {
    /// A cursor at the start of epoch 0. An empty dataset is an error.
    pub fn new(records: Vec<PromptRecord>, seed: u64) -> Result<Self, DataError> {
        let state = CursorState {
            seed,
            epoch: 0,
            position: 0,
            dataset_len: records.len(),
            fingerprint: fingerprint(&records),
        };
        Self::resume(records, state)
    }

    /// A cursor restored from a checkpointed state; the dataset must be the one it was saved
    /// with (same ids in the same order).
    pub fn resume(records: Vec<PromptRecord>, state: CursorState) -> Result<Self, DataError> {
        if records.is_empty() {
            return Err(DataError::invalid(
                "dataset",
                "a cursor needs at least one record",
            ));
        }
        if state.dataset_len != records.len() || state.fingerprint != fingerprint(&records) {
            return Err(DataError::invalid(
                "cursor state",
                format!(
                    "saved for a dataset of {} records with fingerprint {:#x}, but this one has {} records with fingerprint {:#x}",
                    state.dataset_len,
                    state.fingerprint,
                    records.len(),
                    fingerprint(&records)
                ),
            ));
        }
        if state.position > records.len() {
            return Err(DataError::invalid(
                "cursor state",
                format!(
                    "position {} is past the dataset's {} records",
                    state.position,
                    records.len()
                ),
            ));
        }
        let order = epoch_order(records.len(), state.seed, state.epoch);
        Ok(PromptCursor {
            records,
            order,
            state,
        })
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> CursorState {
        self.state
    }

    /// The dataset, in file order.
    pub fn records(&self) -> &[PromptRecord] {
        &self.records
    }

    /// The next `batch_size` indices into [`Self::records`] (fewer at the end of an epoch);
    /// starts the next epoch when the current one is used up.
    pub fn next_indices(&mut self, batch_size: usize) -> Vec<usize> {
        if batch_size == 0 {
            return Vec::new();
        }
        if self.state.position >= self.order.len() {
            self.state.epoch += 1;
            self.state.position = 0;
            self.order = epoch_order(self.records.len(), self.state.seed, self.state.epoch);
        }
        let start = self.state.position;
        let end = (start + batch_size).min(self.order.len());
        self.state.position = end;
        self.order[start..end].to_vec()
    }

    /// The next batch of records (see [`Self::next_indices`]).
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<PromptRecord> {
        self.next_indices(batch_size)
            .into_iter()
            .map(|i| self.records[i].clone())
            .collect()
    }
}

/// The visiting order of one epoch.
fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    SplitMix64::new(mix64(seed) ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15)).shuffle(&mut order);
    order
}

/// A hash of the ids in order (each id is terminated, so `["ab","c"]` differs from `["a","bc"]`).
fn fingerprint(records: &[PromptRecord]) -> u64 {
    records.iter().fold(FNV_OFFSET, |state, record| {
        fnv1a(fnv1a(state, record.id.as_bytes()), &[0xff])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<PromptRecord> {
        (0..n)
            .map(|i| PromptRecord::new(format!("p{i}"), "x"))
            .collect()
    }

    #[test]
    fn every_epoch_visits_each_record_once_in_a_new_order() -> Result<(), DataError> {
        let mut cursor = PromptCursor::new(records(10), 3)?;
        let mut epochs = Vec::new();
        for _ in 0..3 {
            let mut seen = Vec::new();
            for expected in [4, 4, 2] {
                let batch = cursor.next_indices(4);
                assert_eq!(batch.len(), expected, "batches never cross an epoch");
                seen.extend(batch);
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
            epochs.push(seen);
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_eq!(cursor.state().epoch, 2);
        Ok(())
    }

    #[test]
    fn resume_continues_exactly() -> Result<(), Box<dyn std::error::Error>> {
        let mut straight = PromptCursor::new(records(7), 11)?;
        let mut interrupted = PromptCursor::new(records(7), 11)?;
        for _ in 0..5 {
            assert_eq!(straight.next_batch(3), interrupted.next_batch(3));
        }
        let saved = serde_json::to_string(&interrupted.state())?;
        let mut resumed = PromptCursor::resume(records(7), serde_json::from_str(&saved)?)?;
        for _ in 0..6 {
            assert_eq!(straight.next_indices(3), resumed.next_indices(3));
        }
        Ok(())
    }

    #[test]
    fn resume_rejects_another_dataset() -> Result<(), DataError> {
        let state = PromptCursor::new(records(5), 1)?.state();
        let mut renamed = records(5);
        renamed[2].id = "other".into();
        for (dataset, why) in [(records(6), "size"), (renamed, "ids")] {
            let error = PromptCursor::resume(dataset, state)
                .err()
                .map(|e| e.to_string());
            assert!(error.is_some_and(|e| e.contains("fingerprint")), "{why}");
        }
        assert!(PromptCursor::new(Vec::new(), 1).is_err());
        let past_end = CursorState {
            position: 6,
            ..state
        };
        assert!(PromptCursor::resume(records(5), past_end).is_err());
        Ok(())
    }
}
