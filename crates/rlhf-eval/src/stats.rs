//! Summary statistics and confidence intervals.
//!
//! **The CI method.** Every interval is a percentile bootstrap over *clusters* with a fixed
//! seed: the clusters are prompts (a prompt's samples are correlated, so resampling samples
//! would understate the uncertainty) or preference pairs. A replicate draws as many clusters as
//! there are, with replacement, and recomputes the statistic on all their values (the pooled
//! mean); the interval is the `(1-level)/2` and `(1+level)/2` percentiles of the replicates
//! (linear interpolation). The generator is rlhf-core's SplitMix64, so an interval depends only
//! on the data, the seed and the resample count — not on the `rand` version.

use rlhf_core::seed::SplitMix64;
use serde::{Deserialize, Serialize};

/// A confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

/// How intervals are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// Replicates.
    pub resamples: usize,
    /// The generator's seed.
    pub seed: u64,
    /// Confidence level in (0, 1).
    pub level: f64,
}

impl Bootstrap {
    /// The percentile interval of the pooled mean over resampled clusters; `None` when there
    /// are no values at all.
    pub fn mean_ci(&self, clusters: &[Vec<f64>]) -> Option<Interval> {
        let total: usize = clusters.iter().map(Vec::len).sum();
        if total == 0 {
            return None;
        }
        let sums: Vec<(f64, usize)> = clusters
            .iter()
            .map(|c| (c.iter().sum::<f64>(), c.len()))
            .collect();
        let mut rng = SplitMix64::new(self.seed);
        let k = sums.len() as u64;
        let mut replicates = Vec::with_capacity(self.resamples);
        for _ in 0..self.resamples {
            let (mut sum, mut n) = (0.0, 0usize);
            for _ in 0..k {
                let (s, c) = sums[rng.below(k) as usize];
                sum += s;
                n += c;
            }
            if n > 0 {
                replicates.push(sum / n as f64);
            }
        }
        replicates.sort_by(f64::total_cmp);
        let tail = (1.0 - self.level) / 2.0;
        Some(Interval {
            lo: percentile_sorted(&replicates, tail)?,
            hi: percentile_sorted(&replicates, 1.0 - tail)?,
        })
    }
}

/// The mean, or `None` for no values (never a silent 0).
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The `p`-quantile (p in [0, 1]) with linear interpolation between order statistics (numpy's
/// default); `None` for no values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, p)
}

/// The median; `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 0.5)
}

fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = p.clamp(0.0, 1.0) * last as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let lo = sorted[i];
    let hi = sorted[(i + 1).min(last)];
    Some(lo + (hi - lo) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bootstrap = Bootstrap {
        resamples: 2000,
        seed: 7,
        level: 0.95,
    };

    #[test]
    fn quantiles_table() {
        // (values, p, expected): linear interpolation at p·(n−1).
        let cases: [(&[f64], f64, f64); 6] = [
            (&[3.0, 1.0, 2.0], 0.5, 2.0),
            (&[1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
            // p90 of 1..=10: position 8.1 → 9 + 0.1·(10 − 9).
            (&[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.], 0.9, 9.1),
            (&[5.0], 0.9, 5.0),
            (&[1.0, 2.0], 0.0, 1.0),
            (&[1.0, 2.0], 1.0, 2.0),
        ];
        for (values, p, expected) in cases {
            let got = percentile(values, p).unwrap_or(f64::NAN);
            assert!((got - expected).abs() < 1e-12, "{values:?} p{p}: {got}");
        }
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
    }

    #[test]
    fn bootstrap_interval_is_deterministic_and_covers_the_mean() {
        let clusters: Vec<Vec<f64>> = (0..40)
            .map(|i| vec![f64::from(i % 5), f64::from((i * 7) % 3)])
            .collect();
        let all: Vec<f64> = clusters.iter().flatten().copied().collect();
        let m = mean(&all).unwrap_or(f64::NAN);
        let ci = B.mean_ci(&clusters);
        assert_eq!(ci, B.mean_ci(&clusters), "same seed, same interval");
        let ci = ci.unwrap_or(Interval { lo: 9.0, hi: -9.0 });
        assert!(ci.lo < m && m < ci.hi, "{ci:?} around {m}");
        // Roughly ±1.96 standard errors of the cluster means (sd ≈ 1.1, 40 clusters → ±0.35).
        assert!(ci.hi - ci.lo > 0.3 && ci.hi - ci.lo < 1.2, "{ci:?}");
        let other = Bootstrap { seed: 8, ..B }.mean_ci(&clusters);
        assert_ne!(Some(ci), other, "the seed matters");
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(B.mean_ci(&[]), None);
        assert_eq!(B.mean_ci(&[vec![], vec![]]), None);
        // Constant data: a zero-width interval at the constant.
        assert_eq!(
            B.mean_ci(&[vec![0.5, 0.5], vec![0.5]]),
            Some(Interval { lo: 0.5, hi: 0.5 })
        );
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(1);
        let mut counts = [0u32; 5];
        for _ in 0..5000 {
            counts[rng.below(5) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }
}
