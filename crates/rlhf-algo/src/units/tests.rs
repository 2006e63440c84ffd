//! Tests of the training-unit builders (expected values worked out by hand in each test).

use super::*;
use crate::testutil::TestResult;

fn prompt(scores: &[f32]) -> Vec<Scored<usize>> {
    scores
        .iter()
        .enumerate()
        .map(|(i, &s)| Scored::new(i, s))
        .collect()
}

#[test]
fn best_vs_worst_skips_ties_and_counts_non_finite() -> TestResult {
    let prompts = vec![
        prompt(&[0.2, 0.9, 0.1, 0.9]), // best = first 0.9 (index 1), worst = index 2
        prompt(&[0.5, 0.5, 0.5]),      // all tied: skipped
        prompt(&[f32::NAN, 0.3, f32::INFINITY]), // one finite sample left: too few
        prompt(&[f32::NAN, 1.0, -1.0]), // NaN dropped, pair from the rest
        vec![],
    ];
    let out = best_vs_worst(&prompts);
    let pairs: Vec<(usize, usize)> = out.units.iter().map(|p| (p.chosen, p.rejected)).collect();
    anyhow::ensure!(pairs == vec![(1, 2), (1, 2)], "pairs {pairs:?}");
    anyhow::ensure!(out.units[0].chosen_score == 0.9 && out.units[0].rejected_score == 0.1);
    let want = UnitReport {
        prompts: 5,
        samples: 13,
        non_finite: 3,
        skipped_too_few: 2,
        skipped_no_signal: 1,
        dropped_between_thresholds: 0,
        units: 2,
    };
    anyhow::ensure!(out.report == want, "report {:?}", out.report);
    Ok(())
}

#[test]
fn pairs_above_margin_are_strict() -> TestResult {
    let out = pairs_above_margin(&[prompt(&[1.0, 0.5, 0.4, 1.0])], 0.5)?;
    let pairs: Vec<(usize, usize)> = out.units.iter().map(|p| (p.chosen, p.rejected)).collect();
    // 1.0 - 0.5 = 0.5 is not above the margin; 1.0 - 0.4 = 0.6 is.
    anyhow::ensure!(pairs == vec![(0, 2), (3, 2)], "pairs {pairs:?}");
    let all = pairs_above_margin(&[prompt(&[1.0, 0.5, 0.4, 1.0])], 0.0)?;
    anyhow::ensure!(
        all.units.len() == 5,
        "ties never pair: 6 - 1 = 5, got {}",
        all.units.len()
    );
    let none = pairs_above_margin(&[prompt(&[1.0, 0.9])], 0.5)?;
    anyhow::ensure!(none.units.is_empty() && none.report.skipped_no_signal == 1);
    anyhow::ensure!(pairs_above_margin(&[prompt(&[1.0])], -0.1).is_err());
    anyhow::ensure!(pairs_above_margin(&[prompt(&[1.0])], f32::NAN).is_err());
    Ok(())
}

#[test]
fn rankings_keep_ties_with_shared_ranks() -> TestResult {
    let out = rankings(
        &[
            prompt(&[0.3, 0.9, 0.3, f32::NAN, 0.1]),
            prompt(&[2.0, 2.0]),
            prompt(&[1.0]),
        ],
        2,
    )?;
    anyhow::ensure!(out.units.len() == 1);
    let r = &out.units[0];
    anyhow::ensure!(r.items == vec![1, 0, 2, 4], "items {:?}", r.items);
    anyhow::ensure!(r.scores == vec![0.9, 0.3, 0.3, 0.1]);
    anyhow::ensure!(r.ranks == vec![1, 2, 2, 4], "ranks {:?}", r.ranks);
    anyhow::ensure!(
        out.report.non_finite == 1
            && out.report.skipped_no_signal == 1
            && out.report.skipped_too_few == 1
    );
    anyhow::ensure!(rankings(&[prompt(&[1.0, 0.0])], 1).is_err());
    Ok(())
}

#[test]
fn binary_labels_by_threshold() -> TestResult {
    let prompts = vec![prompt(&[0.9, 0.5, 0.2, f32::NEG_INFINITY]), prompt(&[0.6])];
    let single = binary_labels(&prompts, BinaryThresholds::single(0.5))?;
    let labels: Vec<(usize, bool)> = single.units.iter().map(|l| (l.item, l.desirable)).collect();
    anyhow::ensure!(
        labels == vec![(0, true), (1, true), (2, false), (0, true)],
        "labels {labels:?}"
    );
    anyhow::ensure!(single.report.non_finite == 1 && single.report.units == 4);
    let band = BinaryThresholds {
        desirable_at_least: 0.7,
        undesirable_below: 0.3,
    };
    let out = binary_labels(&prompts, band)?;
    anyhow::ensure!(out.units.len() == 2 && out.report.dropped_between_thresholds == 2);
    let inverted = BinaryThresholds {
        desirable_at_least: 0.3,
        undesirable_below: 0.7,
    };
    anyhow::ensure!(binary_labels(&prompts, inverted).is_err());
    Ok(())
}

#[test]
fn groups_must_be_complete() -> TestResult {
    let prompts = vec![
        prompt(&[1.0, 0.0, 0.5]),
        prompt(&[1.0, f32::NAN, 0.5]), // lost a sample: skipped whole
        prompt(&[0.2, 0.2, 0.2]),      // uniform: no gradient
        prompt(&[1.0, 0.0]),           // wrong size
    ];
    let out = groups(&prompts, 3, true)?;
    anyhow::ensure!(out.units.len() == 1 && out.units[0].rewards == vec![1.0, 0.0, 0.5]);
    anyhow::ensure!(out.report.skipped_too_few == 2 && out.report.skipped_no_signal == 1);
    anyhow::ensure!(out.report.non_finite == 1);
    let keep = groups(&prompts, 3, false)?;
    anyhow::ensure!(keep.units.len() == 2);
    anyhow::ensure!(groups(&prompts, 0, false).is_err());
    Ok(())
}
