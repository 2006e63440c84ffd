//! PRO: Preference Ranking Optimization (Song et al. 2023, "Preference Ranking Optimization for
//! Human Alignment", AAAI 2024), following the authors' `PRO/train/utils/process_manager.py`.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{ListBatch, check_lists, required_2d, top1_accuracy};
use crate::error::{AlgoError, Result};
use crate::ops::{check_non_negative, check_positive, checked_loss, from_host, logsumexp};
use crate::output::{ListStats, LossOutput};

/// PRO's SFT weight before the `(n−1)²` factor (authors' `train_hh.sh`: `--sft_weight 0.05`).
pub const DEFAULT_PRO_SFT_WEIGHT: f64 = 0.05;

/// Padding value added to excluded logits before the log-sum-exp.
const EXCLUDED: f32 = -1.0e9;

/// Config of [`pro_loss`] (`name = "pro"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProConfig {
    /// Weight `w` of the SFT term; the term is `w·(n−1)²·(−log π(y_1|x))` as in the authors' code.
    pub sft_weight: f64,
    /// `None` (default): the paper's dynamic temperatures from reward gaps (needs `scores`).
    /// `Some(τ)`: a fixed temperature, plain Plackett–Luce on `s_i/τ`.
    pub temperature: Option<f64>,
}

impl Default for ProConfig {
    fn default() -> Self {
        Self {
            sft_weight: DEFAULT_PRO_SFT_WEIGHT,
            temperature: None,
        }
    }
}

impl ProConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_non_negative("pro.sft_weight", self.sft_weight)?;
        if let Some(t) = self.temperature {
            check_positive("pro.temperature", t)?;
        }
        Ok(())
    }
}

/// PRO loss over lists ordered best first.
///
/// With `s_i = log π(y_i|x)/|y_i|` (length-normalised) and `n` valid responses:
///
/// `L = Σ_{k=1}^{n−1} [log Σ_{i=k}^{n} exp(s_i / T_k^i) − s_k / T_k^k] + w·(n−1)²·(−log π(y_1|x))`
///
/// Dynamic temperatures (as in the paper and the authors' code): `1/T_k^i = r_k − r_i` for `i > k`
/// and `1/T_k^k = max_{i>k} (r_k − r_i)`, with `r` the reward-model `scores` (which must be
/// non-increasing along each row). With `temperature = Some(τ)`, `1/T = 1/τ` everywhere.
/// Both terms are averaged over the lists; the SFT term uses the summed log-prob of the best
/// response (as the authors' code does). Needs `token_counts`; `scores` for dynamic temperatures.
pub fn pro_loss<B: Backend>(
    batch: &ListBatch<B>,
    config: &ProConfig,
) -> Result<LossOutput<B, ListStats>> {
    config.validate()?;
    let lists = check_lists(batch)?;
    let (rows, n) = (lists.batch, lists.n);
    for b in 0..rows {
        let count = lists.count(b);
        if (0..count).any(|i| !lists.is_valid(b, i)) {
            return Err(AlgoError::invalid(
                "mask",
                format!("PRO needs the valid responses of list {b} first (a prefix)"),
            ));
        }
    }
    let (_, counts) = required_2d("pro", "token_counts", &batch.token_counts, &lists)?;
    let scores = match config.temperature {
        Some(_) => None,
        None => Some(required_2d("pro", "scores", &batch.scores, &lists)?.1),
    };
    let device = batch.policy.device();

    // Host-built constants: safe counts, multipliers W[b,k,i] = 1/T_k^i, exclusion, weights.
    let mut safe_counts = vec![1.0f32; rows * n];
    let mut mult = vec![0.0f32; rows * n * n];
    let mut diag = vec![0.0f32; rows * n];
    let mut exclude = vec![EXCLUDED; rows * n * n];
    let mut term = vec![0.0f32; rows * n];
    let mut first = vec![0.0f32; rows * n];
    for b in 0..rows {
        let count = lists.count(b);
        for i in 0..count {
            let c = counts[b * n + i];
            if c <= 0.0 {
                return Err(AlgoError::invalid(
                    "token_counts",
                    format!("token counts must be positive, found {c} at [{b}, {i}]"),
                ));
            }
            safe_counts[b * n + i] = c;
        }
        if let Some(r) = &scores
            && let Some(i) = (1..count).find(|&i| r[b * n + i] > r[b * n + i - 1])
        {
            return Err(AlgoError::invalid(
                "scores",
                format!(
                    "PRO needs list {b} sorted best first, but score {i} exceeds score {}",
                    i - 1
                ),
            ));
        }
        first[b * n] = (config.sft_weight * ((count - 1) as f64).powi(2)) as f32;
        for k in 0..count - 1 {
            term[b * n + k] = 1.0;
            let base = (b * n + k) * n;
            for i in k..count {
                exclude[base + i] = 0.0;
            }
            if let Some(r) = &scores {
                let mut max_gap = 0.0f32;
                for i in k + 1..count {
                    let gap = r[b * n + k] - r[b * n + i];
                    mult[base + i] = gap;
                    max_gap = max_gap.max(gap);
                }
                mult[base + k] = max_gap;
            } else {
                // No scores means a fixed temperature was configured.
                let inverse = config.temperature.map_or(1.0, |t| 1.0 / t) as f32;
                for i in k..count {
                    mult[base + i] = inverse;
                }
            }
            diag[b * n + k] = mult[base + k];
        }
    }

    let s = batch.policy.clone() / from_host::<B, 2>(safe_counts, [rows, n], &device);
    let w = from_host::<B, 3>(mult, [rows, n, n], &device);
    let logits =
        s.clone().unsqueeze_dim::<3>(1) * w + from_host::<B, 3>(exclude, [rows, n, n], &device);
    let lse = logsumexp(logits, 2).reshape([rows, n]);
    let own = s.clone() * from_host::<B, 2>(diag, [rows, n], &device);
    let per_term = (lse - own) * from_host::<B, 2>(term, [rows, n], &device);
    let ranking = per_term.sum_dim(1).reshape([rows]).mean();
    let sft = (batch.policy.clone() * from_host::<B, 2>(first, [rows, n], &device))
        .sum_dim(1)
        .reshape([rows])
        .neg()
        .mean();
    let ranking_value = checked_loss("pro", &ranking)?;
    let sft_value = checked_loss("pro", &sft)?;
    let loss = ranking + sft;
    let value = checked_loss("pro", &loss)?;

    let model: Vec<f32> = lists
        .policy
        .iter()
        .zip(&counts)
        .map(|(p, c)| if *c > 0.0 { p / c } else { *p })
        .collect();
    let labels: Vec<f32> = match &scores {
        Some(r) => r.clone(),
        // Without scores the order is the label: earlier is better.
        None => (0..rows * n).map(|j| -((j % n) as f32)).collect(),
    };
    Ok(LossOutput {
        loss,
        stats: ListStats {
            loss: value,
            ranking: ranking_value,
            sft: sft_value,
            top1_accuracy: top1_accuracy(&lists, &labels, &model),
        },
    })
}
