//! Turning per-sample results into the report's summaries: rewards per scorer, response
//! lengths, KL to the reference, and the same per prompt group. Pure functions of their inputs.

use std::collections::BTreeMap;

use crate::report::{Distribution, GroupReport, KlSummary, LengthStats, RewardSummary};
use crate::sample::{PromptSamples, Sample};
use crate::stats::{Bootstrap, mean, median, percentile};

/// One scorer's results for one policy: per prompt, per sample, the reward or the error kind.
pub type ScoreGrid = Vec<Vec<Result<f64, String>>>;

/// Summarises the rewards of the prompts in `rows` (indices into `grid`).
pub fn rewards(scorer: &str, grid: &ScoreGrid, rows: &[usize], boot: &Bootstrap) -> RewardSummary {
    let mut failures = BTreeMap::new();
    let mut clusters = Vec::with_capacity(rows.len());
    for &i in rows {
        let mut values = Vec::new();
        for r in &grid[i] {
            match r {
                Ok(v) => values.push(*v),
                Err(kind) => *failures.entry(kind.clone()).or_insert(0) += 1,
            }
        }
        clusters.push(values);
    }
    let all: Vec<f64> = clusters.iter().flatten().copied().collect();
    RewardSummary {
        scorer: scorer.to_owned(),
        scored: all.len(),
        failed: failures.values().sum(),
        failures,
        mean: mean(&all),
        median: median(&all),
        ci: boot.mean_ci(&clusters),
    }
}

fn distribution(values: &[f64]) -> Option<Distribution> {
    Some(Distribution {
        mean: mean(values)?,
        median: median(values)?,
        p90: percentile(values, 0.9)?,
    })
}

/// Length statistics of the prompts in `rows`.
pub fn lengths(samples: &[PromptSamples], rows: &[usize]) -> LengthStats {
    let all: Vec<&Sample> = rows.iter().flat_map(|&i| &samples[i].samples).collect();
    let tokens: Vec<f64> = all.iter().map(|s| s.tokens() as f64).collect();
    let chars: Vec<f64> = all.iter().map(|s| s.text.chars().count() as f64).collect();
    let finished: Vec<f64> = all
        .iter()
        .map(|s| f64::from(u8::from(s.finished)))
        .collect();
    LengthStats {
        samples: all.len(),
        tokens: distribution(&tokens),
        chars: distribution(&chars),
        finished_by_eos: mean(&finished),
    }
}

/// The k1 KL estimate: per sample Σ log π − Σ log π_ref, averaged; `None` for no samples.
pub fn kl(
    samples: &[PromptSamples],
    reference: &[Vec<f64>],
    boot: &Bootstrap,
) -> Option<KlSummary> {
    let clusters: Vec<Vec<f64>> = samples
        .iter()
        .zip(reference)
        .map(|(p, r)| {
            p.samples
                .iter()
                .zip(r)
                .map(|(s, lr)| s.logprob - lr)
                .filter(|d| d.is_finite())
                .collect()
        })
        .collect();
    let all: Vec<f64> = clusters.iter().flatten().copied().collect();
    Some(KlSummary {
        mean: mean(&all)?,
        ci: boot.mean_ci(&clusters),
        samples: all.len(),
    })
}

/// Per-group rewards and lengths, for prompts that carry a group (sorted by group); empty when
/// none does.
pub fn groups(
    group_of: &[Option<String>],
    samples: &[PromptSamples],
    grids: &[(String, ScoreGrid)],
    boot: &Bootstrap,
) -> Vec<GroupReport> {
    let mut by_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in group_of.iter().enumerate() {
        if let Some(g) = g {
            by_group.entry(g.as_str()).or_default().push(i);
        }
    }
    by_group
        .into_iter()
        .map(|(group, rows)| GroupReport {
            group: group.to_owned(),
            prompts: rows.len(),
            rewards: grids
                .iter()
                .map(|(name, grid)| rewards(name, grid, &rows, boot))
                .collect(),
            length: lengths(samples, &rows),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: Bootstrap = Bootstrap {
        resamples: 200,
        seed: 0,
        level: 0.95,
    };

    fn sample(ids: &[u32], text: &str, logprob: f64, finished: bool) -> Sample {
        Sample {
            completion_ids: ids.to_vec(),
            text: text.into(),
            logprob,
            finished,
        }
    }

    fn prompt(samples: Vec<Sample>) -> PromptSamples {
        PromptSamples {
            prompt_ids: vec![1],
            keys: samples.iter().map(|_| String::new()).collect(),
            samples,
        }
    }

    #[test]
    fn rewards_count_failures_and_never_fill_zeros() {
        let grid: ScoreGrid = vec![
            vec![Ok(1.0), Err("timeout".into())],
            vec![Ok(0.0), Ok(0.5)],
            vec![Err("invalid".into()), Err("timeout".into())],
        ];
        let s = rewards("r", &grid, &[0, 1, 2], &BOOT);
        // Scored: 1.0, 0.0, 0.5 → mean 0.5, median 0.5; three failures, two of them timeouts.
        assert_eq!((s.scored, s.failed), (3, 3));
        assert_eq!(s.failures.get("timeout"), Some(&2));
        assert_eq!((s.mean, s.median), (Some(0.5), Some(0.5)));
        let none = rewards("r", &grid, &[2], &BOOT);
        assert_eq!((none.scored, none.mean, none.ci), (0, None, None));
    }

    #[test]
    fn lengths_and_kl() {
        // Token counts exclude the stop token: [5, 6, 2] finished → 2 tokens; [7, 8, 9] → 3.
        let samples = vec![
            prompt(vec![sample(&[5, 6, 2], "ab", -1.0, true)]),
            prompt(vec![sample(&[7, 8, 9], "abcd", -4.0, false)]),
        ];
        let l = lengths(&samples, &[0, 1]);
        assert_eq!(l.samples, 2);
        assert_eq!(l.tokens.map(|d| (d.mean, d.median)), Some((2.5, 2.5)));
        assert_eq!(l.chars.map(|d| d.mean), Some(3.0));
        assert_eq!(l.finished_by_eos, Some(0.5));
        // KL: (−1 − (−1.5)) = 0.5 and (−4 − (−3)) = −1 → mean −0.25 (k1 samples can be < 0).
        let k = kl(&samples, &[vec![-1.5], vec![-3.0]], &BOOT);
        assert_eq!(k.as_ref().map(|k| (k.mean, k.samples)), Some((-0.25, 2)));
        let groups = groups(
            &[Some("b".into()), None],
            &samples,
            &[("r".into(), vec![vec![Ok(1.0)], vec![Ok(0.0)]])],
            &BOOT,
        );
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].group.as_str(), groups[0].prompts), ("b", 1));
        assert_eq!(groups[0].rewards[0].mean, Some(1.0));
    }
}
