//! Building training units from scored samples (plain Rust, no tensors): preference pairs,
//! ranked lists, binary labels and groups.
//!
//! Input is one `Vec<Scored<T>>` per prompt; `T` is whatever identifies a sample for the caller
//! (a sample id with prompt id and policy version, token ids...). Samples whose score is NaN or
//! infinite are rejected and counted in [`UnitReport::non_finite`], never treated as 0.
//! Ties are broken by sample order, so the output is deterministic.

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};

/// A sample and its (scalar) score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored<T> {
    /// The caller's handle on the sample.
    pub item: T,
    /// Its score (reward-model output, verifier result, judge rating...).
    pub score: f32,
}

impl<T> Scored<T> {
    /// Pairs an item with its score.
    pub fn new(item: T, score: f32) -> Self {
        Self { item, score }
    }
}

/// What happened to the input: every prompt and sample is accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnitReport {
    /// Prompts seen.
    pub prompts: usize,
    /// Samples seen.
    pub samples: usize,
    /// Samples rejected because their score was NaN or infinite.
    pub non_finite: usize,
    /// Prompts skipped for having too few finite samples (or an incomplete group).
    pub skipped_too_few: usize,
    /// Prompts whose finite scores carry no signal for this unit (all tied, nothing above the
    /// margin, a uniform group).
    pub skipped_no_signal: usize,
    /// Samples left out between the binary thresholds.
    pub dropped_between_thresholds: usize,
    /// Units produced.
    pub units: usize,
}

/// Units and the report of how they were built.
#[derive(Debug, Clone, PartialEq)]
pub struct Units<U> {
    /// The training units.
    pub units: Vec<U>,
    /// Accounting of the input.
    pub report: UnitReport,
}

/// A preference pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair<T> {
    /// The preferred sample.
    pub chosen: T,
    /// The dispreferred sample.
    pub rejected: T,
    /// Score of `chosen`.
    pub chosen_score: f32,
    /// Score of `rejected` (strictly lower).
    pub rejected_score: f32,
}

/// A full ranking of one prompt's samples, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking<T> {
    /// Samples, best first (stable for ties).
    pub items: Vec<T>,
    /// Their scores (non-increasing).
    pub scores: Vec<f32>,
    /// Competition ranks, 1-based: tied samples share a rank ("1, 2, 2, 4").
    pub ranks: Vec<usize>,
}

/// A sample labelled desirable or undesirable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labelled<T> {
    /// The sample.
    pub item: T,
    /// Whether it is desirable.
    pub desirable: bool,
    /// Its score.
    pub score: f32,
}

/// A complete group of one prompt's samples with their rewards (GRPO / RLOO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group<T> {
    /// Samples in their original order.
    pub items: Vec<T>,
    /// Their rewards.
    pub rewards: Vec<f32>,
}

/// Thresholds of [`binary_labels`]: desirable if `score ≥ desirable_at_least`, undesirable if
/// `score < undesirable_below`, dropped (and counted) in between.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryThresholds {
    /// Lowest desirable score.
    pub desirable_at_least: f32,
    /// Undesirable scores are strictly below this.
    pub undesirable_below: f32,
}

impl BinaryThresholds {
    /// One threshold `t`: desirable iff `score ≥ t`.
    pub fn single(t: f32) -> Self {
        Self {
            desirable_at_least: t,
            undesirable_below: t,
        }
    }

    /// Checks the thresholds are finite and ordered.
    pub fn validate(&self) -> Result<()> {
        if !self.desirable_at_least.is_finite() || !self.undesirable_below.is_finite() {
            return Err(AlgoError::config(
                "binary_thresholds",
                "thresholds must be finite",
            ));
        }
        if self.undesirable_below > self.desirable_at_least {
            return Err(AlgoError::config(
                "binary_thresholds.undesirable_below",
                format!(
                    "must not exceed desirable_at_least ({} > {})",
                    self.undesirable_below, self.desirable_at_least
                ),
            ));
        }
        Ok(())
    }
}

/// The finite samples of one prompt (in order) and the report updated for it.
fn finite<'a, T>(samples: &'a [Scored<T>], report: &mut UnitReport) -> Vec<&'a Scored<T>> {
    report.prompts += 1;
    report.samples += samples.len();
    let kept: Vec<&Scored<T>> = samples.iter().filter(|s| s.score.is_finite()).collect();
    report.non_finite += samples.len() - kept.len();
    kept
}

/// Best-vs-worst pair per prompt (RLHF Workflow, Dong et al. 2024: the highest- and
/// lowest-scored of `n` samples). Prompts whose best and worst scores are equal are skipped.
pub fn best_vs_worst<T: Clone>(prompts: &[Vec<Scored<T>>]) -> Units<Pair<T>> {
    let mut report = UnitReport::default();
    let mut units = Vec::new();
    for samples in prompts {
        let kept = finite(samples, &mut report);
        if kept.len() < 2 {
            report.skipped_too_few += 1;
            continue;
        }
        let mut best = kept[0];
        let mut worst = kept[0];
        for &s in &kept[1..] {
            if s.score > best.score {
                best = s;
            }
            if s.score < worst.score {
                worst = s;
            }
        }
        if best.score == worst.score {
            report.skipped_no_signal += 1;
            continue;
        }
        units.push(Pair {
            chosen: best.item.clone(),
            rejected: worst.item.clone(),
            chosen_score: best.score,
            rejected_score: worst.score,
        });
    }
    report.units = units.len();
    Units { units, report }
}

/// Every pair of a prompt whose score difference is strictly above `margin` (≥ 0), the higher
/// as chosen; pairs come in sample order (`i < j`).
pub fn pairs_above_margin<T: Clone>(
    prompts: &[Vec<Scored<T>>],
    margin: f32,
) -> Result<Units<Pair<T>>> {
    if !margin.is_finite() || margin < 0.0 {
        return Err(AlgoError::config(
            "margin",
            format!("must be finite and ≥ 0, got {margin}"),
        ));
    }
    let mut report = UnitReport::default();
    let mut units = Vec::new();
    for samples in prompts {
        let kept = finite(samples, &mut report);
        if kept.len() < 2 {
            report.skipped_too_few += 1;
            continue;
        }
        let before = units.len();
        for (i, a) in kept.iter().enumerate() {
            for b in &kept[i + 1..] {
                if (a.score - b.score).abs() > margin {
                    let (c, r) = if a.score > b.score { (a, b) } else { (b, a) };
                    units.push(Pair {
                        chosen: c.item.clone(),
                        rejected: r.item.clone(),
                        chosen_score: c.score,
                        rejected_score: r.score,
                    });
                }
            }
        }
        if units.len() == before {
            report.skipped_no_signal += 1;
        }
    }
    report.units = units.len();
    Ok(Units { units, report })
}

/// Full rankings (best first, ties kept with shared competition ranks) of prompts with at
/// least `min_len` (≥ 2) finite samples; prompts whose samples all tie are skipped.
pub fn rankings<T: Clone>(prompts: &[Vec<Scored<T>>], min_len: usize) -> Result<Units<Ranking<T>>> {
    if min_len < 2 {
        return Err(AlgoError::config(
            "min_len",
            format!("must be at least 2, got {min_len}"),
        ));
    }
    let mut report = UnitReport::default();
    let mut units = Vec::new();
    for samples in prompts {
        let mut kept = finite(samples, &mut report);
        if kept.len() < min_len {
            report.skipped_too_few += 1;
            continue;
        }
        kept.sort_by(|a, b| b.score.total_cmp(&a.score));
        if kept.first().map(|s| s.score) == kept.last().map(|s| s.score) {
            report.skipped_no_signal += 1;
            continue;
        }
        let scores: Vec<f32> = kept.iter().map(|s| s.score).collect();
        let ranks = scores
            .iter()
            .map(|&s| 1 + scores.iter().filter(|&&o| o > s).count())
            .collect();
        units.push(Ranking {
            items: kept.iter().map(|s| s.item.clone()).collect(),
            scores,
            ranks,
        });
    }
    report.units = units.len();
    Ok(Units { units, report })
}

/// Binary labels by threshold (KTO / BCO units); each finite sample outside the band between
/// the thresholds becomes a unit.
pub fn binary_labels<T: Clone>(
    prompts: &[Vec<Scored<T>>],
    thresholds: BinaryThresholds,
) -> Result<Units<Labelled<T>>> {
    thresholds.validate()?;
    let mut report = UnitReport::default();
    let mut units = Vec::new();
    for samples in prompts {
        for s in finite(samples, &mut report) {
            let desirable = if s.score >= thresholds.desirable_at_least {
                true
            } else if s.score < thresholds.undesirable_below {
                false
            } else {
                report.dropped_between_thresholds += 1;
                continue;
            };
            units.push(Labelled {
                item: s.item.clone(),
                desirable,
                score: s.score,
            });
        }
    }
    report.units = units.len();
    Ok(Units { units, report })
}

/// Complete groups of exactly `group_size` finite samples per prompt (GRPO / RLOO). A prompt
/// that lost a sample to a non-finite score is skipped whole; with `drop_uniform`, groups whose
/// rewards are all equal (zero advantage, no gradient) are skipped too (DAPO's dynamic sampling).
pub fn groups<T: Clone>(
    prompts: &[Vec<Scored<T>>],
    group_size: usize,
    drop_uniform: bool,
) -> Result<Units<Group<T>>> {
    if group_size < 1 {
        return Err(AlgoError::config("group_size", "must be at least 1"));
    }
    let mut report = UnitReport::default();
    let mut units = Vec::new();
    for samples in prompts {
        let kept = finite(samples, &mut report);
        if kept.len() != group_size || samples.len() != group_size {
            report.skipped_too_few += 1;
            continue;
        }
        let rewards: Vec<f32> = kept.iter().map(|s| s.score).collect();
        if drop_uniform && rewards.iter().all(|&r| r == rewards[0]) {
            report.skipped_no_signal += 1;
            continue;
        }
        units.push(Group {
            items: kept.iter().map(|s| s.item.clone()).collect(),
            rewards,
        });
    }
    report.units = units.len();
    Ok(Units { units, report })
}
