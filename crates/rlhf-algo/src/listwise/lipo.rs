//! LiPO-λ (Liu et al. 2024, "LiPO: Listwise Preference Optimization through Learning-to-Rank"):
//! a pairwise logistic loss over every ordered pair of a list, weighted by the LambdaLoss
//! `ΔNDCG`-style weights of Wang et al. 2018.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{ListBatch, check_lists, required_2d, top1_accuracy};
use crate::error::Result;
use crate::ops::{check_positive, checked_loss, from_host};
use crate::output::{ListStats, LossOutput};

/// LiPO's β on the implicit rewards (DPO's default; LiPO tunes β with its baselines).
pub const DEFAULT_LIPO_BETA: f64 = 0.1;

/// Config of [`lipo_lambda_loss`] (`name = "lipo_lambda"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LipoConfig {
    /// Inverse temperature β (> 0) of the implicit rewards.
    pub beta: f64,
}

impl Default for LipoConfig {
    fn default() -> Self {
        Self {
            beta: DEFAULT_LIPO_BETA,
        }
    }
}

impl LipoConfig {
    /// Checks the hyperparameters; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_positive("lipo_lambda.beta", self.beta)
    }
}

/// Lambda weights `Δ_ij` of one list, row-major `[n, n]`; `ranks` are 1-based.
pub(crate) fn lambda_weights(labels: &[f32], ranks: &[usize], valid: &[bool]) -> Vec<f32> {
    let n = labels.len();
    let gain = |i: usize| 2f64.powf(f64::from(labels[i])) - 1.0;
    let discount = |i: usize| 1.0 / (1.0 + ranks[i] as f64).log2();
    let mut w = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if valid[i] && valid[j] && labels[i] > labels[j] {
                w[i * n + j] =
                    ((gain(i) - gain(j)).abs() * (discount(i) - discount(j)).abs()) as f32;
            }
        }
    }
    w
}

/// 1-based ranks of the valid entries by descending `scores` (ties: lower index first);
/// invalid entries get rank `n + 1` (they carry no weight).
pub(crate) fn ranks_by_score(scores: &[f32], valid: &[bool]) -> Vec<usize> {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).filter(|&i| valid[i]).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut ranks = vec![n + 1; n];
    for (r, &i) in order.iter().enumerate() {
        ranks[i] = r + 1;
    }
    ranks
}

/// LiPO-λ loss:
///
/// `s_i = β·(log π(y_i|x) − log π_ref(y_i|x))`,
/// `L = −Σ_{ψ_i > ψ_j} Δ_ij · log σ(s_i − s_j)`,
/// `Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|`, `G_i = 2^{ψ_i} − 1`, `D(τ) = log2(1 + τ)`,
///
/// where `ψ` are the labels (`scores`) and `τ_i` the rank of `y_i` when sorting by the current
/// (detached) `s`. Summed over the pairs of a list, averaged over lists. For a list of two with
/// `ψ_1 > ψ_2` this is DPO times `|G_1 − G_2|·(1 − 1/log2 3)`. The base of `D` only rescales the
/// loss; we use the DCG convention (base 2). Needs `reference` and `scores`.
pub fn lipo_lambda_loss<B: Backend>(
    batch: &ListBatch<B>,
    config: &LipoConfig,
) -> Result<LossOutput<B, ListStats>> {
    config.validate()?;
    let lists = check_lists(batch)?;
    let (rows, n) = (lists.batch, lists.n);
    let (reference, reference_host) =
        required_2d("lipo_lambda", "reference", &batch.reference, &lists)?;
    let (_, labels) = required_2d("lipo_lambda", "scores", &batch.scores, &lists)?;
    let device = batch.policy.device();

    let model: Vec<f32> = lists
        .policy
        .iter()
        .zip(&reference_host)
        .map(|(p, r)| (config.beta * (f64::from(*p) - f64::from(*r))) as f32)
        .collect();
    let mut weights = Vec::with_capacity(rows * n * n);
    for b in 0..rows {
        let range = b * n..(b + 1) * n;
        let valid = &lists.valid[range.clone()];
        let ranks = ranks_by_score(&model[range.clone()], valid);
        weights.extend(lambda_weights(&labels[range], &ranks, valid));
    }

    let s = (batch.policy.clone() - reference) * config.beta;
    let diff = s.clone().unsqueeze_dim::<3>(2) - s.unsqueeze_dim::<3>(1);
    let w = from_host::<B, 3>(weights, [rows, n, n], &device);
    let per_list = (log_sigmoid(diff) * w)
        .sum_dims(&[1, 2])
        .reshape([rows])
        .neg();
    let loss = per_list.mean();
    let value = checked_loss("lipo_lambda", &loss)?;
    Ok(LossOutput {
        loss,
        stats: ListStats {
            loss: value,
            ranking: value,
            sft: 0.0,
            top1_accuracy: top1_accuracy(&lists, &labels, &model),
        },
    })
}
