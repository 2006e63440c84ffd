//! A deterministic train / held-out split by a stable hash of each record's id.
//!
//! A record is held out when `hash(seed, id) / 2^64 < holdout_fraction`, so the split depends
//! only on the id and the seed — not on the order of the file, the other records, the platform
//! or the Rust version — and raising the fraction only moves records from train to held-out.

use crate::error::DataError;
use crate::hash::stable_hash;
use crate::record::PromptRecord;

/// Splits records into `(train, heldout)`, each in input order. `holdout_fraction` must be in
/// `[0, 1]`; the held-out share is that fraction in expectation (not exactly).
pub fn split(
    records: Vec<PromptRecord>,
    holdout_fraction: f64,
    seed: u64,
) -> Result<(Vec<PromptRecord>, Vec<PromptRecord>), DataError> {
    if !(0.0..=1.0).contains(&holdout_fraction) {
        return Err(DataError::invalid(
            "holdout_fraction",
            format!("{holdout_fraction} is not in [0, 1]"),
        ));
    }
    Ok(records
        .into_iter()
        .partition(|record| !is_held_out(&record.id, holdout_fraction, seed)))
}

/// Whether the record with this id is held out (the rule [`split`] applies).
pub fn is_held_out(id: &str, holdout_fraction: f64, seed: u64) -> bool {
    // 53 bits: exactly representable, uniform in [0, 1).
    let unit = (stable_hash(seed, id) >> 11) as f64 / (1u64 << 53) as f64;
    unit < holdout_fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<PromptRecord> {
        (0..n)
            .map(|i| PromptRecord::new(format!("p{i}"), "x"))
            .collect()
    }

    fn ids(records: &[PromptRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn split_is_deterministic_order_free_and_monotone() -> Result<(), DataError> {
        let (train, held) = split(records(1000), 0.2, 5)?;
        assert_eq!(train.len() + held.len(), 1000);
        assert!((150..250).contains(&held.len()), "{} held out", held.len());

        let mut reversed = records(1000);
        reversed.reverse();
        let (_, held_rev) = split(reversed, 0.2, 5)?;
        let mut a = ids(&held);
        let mut b = ids(&held_rev);
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "the split depends on ids, not order");

        let (_, held_more) = split(records(1000), 0.3, 5)?;
        assert!(ids(&held).iter().all(|id| ids(&held_more).contains(id)));

        let (_, other_seed) = split(records(1000), 0.2, 6)?;
        assert_ne!(ids(&held), ids(&other_seed));
        Ok(())
    }

    #[test]
    fn edges_and_bad_fractions() -> Result<(), DataError> {
        assert_eq!(split(records(10), 0.0, 1)?.1.len(), 0);
        assert_eq!(split(records(10), 1.0, 1)?.0.len(), 0);
        for bad in [-0.1, 1.5, f64::NAN] {
            let error = split(records(3), bad, 1).err().map(|e| e.to_string());
            assert!(
                error.is_some_and(|e| e.contains("holdout_fraction")),
                "{bad}"
            );
        }
        Ok(())
    }
}
