//! Listwise objectives over `n` responses per prompt: PRO (Plackett–Luce with an SFT term) and
//! LiPO-λ (lambda-weighted pairwise logistic loss).
//!
//! Lists are rows of `[batch, n]` tensors; rows with fewer responses are padded and masked.

mod lipo;
mod pro;
#[cfg(test)]
mod tests;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::{AlgoError, Result};
use crate::ops::{expect_dims, expect_non_empty, finite_host, mask_host};

pub use lipo::{LipoConfig, lipo_lambda_loss};
pub use pro::{ProConfig, pro_loss};

/// A batch of ranked lists: `[batch, n]` tensors, one row per prompt.
#[derive(Debug, Clone)]
pub struct ListBatch<B: Backend> {
    /// Summed `log π(y_i|x)` under the policy (differentiable). PRO needs each row ordered
    /// best first.
    pub policy: Tensor<B, 2>,
    /// Summed `log π_ref(y_i|x)`; needed by LiPO-λ.
    pub reference: Option<Tensor<B, 2>>,
    /// Response lengths `|y_i|` in tokens; needed by PRO (its scores are per-token log-probs).
    pub token_counts: Option<Tensor<B, 2>>,
    /// Scores / labels `ψ_i` (reward-model scores): LiPO's relevance labels, PRO's dynamic
    /// temperatures. Never differentiated.
    pub scores: Option<Tensor<B, 2>>,
    /// 1 for a real response, 0 for padding. PRO needs the valid entries to be a prefix.
    /// `None` means every entry is valid. Padding entries of every input must still be finite
    /// (use 0): they are masked out, but a NaN would leak through `0 · NaN`.
    pub mask: Option<Tensor<B, 2>>,
}

impl<B: Backend> ListBatch<B> {
    /// A batch with policy log-probs only.
    pub fn new(policy: Tensor<B, 2>) -> Self {
        Self {
            policy,
            reference: None,
            token_counts: None,
            scores: None,
            mask: None,
        }
    }

    /// Adds reference log-probs.
    pub fn with_reference(mut self, reference: Tensor<B, 2>) -> Self {
        self.reference = Some(reference);
        self
    }

    /// Adds token counts.
    pub fn with_token_counts(mut self, counts: Tensor<B, 2>) -> Self {
        self.token_counts = Some(counts);
        self
    }

    /// Adds scores / labels.
    pub fn with_scores(mut self, scores: Tensor<B, 2>) -> Self {
        self.scores = Some(scores);
        self
    }

    /// Adds a validity mask.
    pub fn with_mask(mut self, mask: Tensor<B, 2>) -> Self {
        self.mask = Some(mask);
        self
    }

    /// `[batch, n]`.
    pub fn dims(&self) -> [usize; 2] {
        self.policy.dims()
    }
}

/// Host view of a checked list batch.
#[derive(Debug, Clone)]
pub(crate) struct HostLists {
    pub batch: usize,
    pub n: usize,
    /// Row-major `[batch, n]` validity.
    pub valid: Vec<bool>,
    pub policy: Vec<f32>,
}

impl HostLists {
    pub fn is_valid(&self, b: usize, i: usize) -> bool {
        self.valid[b * self.n + i]
    }

    pub fn count(&self, b: usize) -> usize {
        (0..self.n).filter(|&i| self.is_valid(b, i)).count()
    }
}

/// Checks the policy tensor and mask; every row needs at least two valid responses.
pub(crate) fn check_lists<B: Backend>(batch: &ListBatch<B>) -> Result<HostLists> {
    let [rows, n] = batch.dims();
    expect_non_empty("policy", rows)?;
    let policy = finite_host("policy", &batch.policy)?;
    let valid = match &batch.mask {
        Some(mask) => {
            expect_dims("mask", mask, [rows, n])?;
            mask_host("mask", mask)?.iter().map(|&m| m == 1.0).collect()
        }
        None => vec![true; rows * n],
    };
    let host = HostLists {
        batch: rows,
        n,
        valid,
        policy,
    };
    for b in 0..rows {
        if host.count(b) < 2 {
            return Err(AlgoError::invalid(
                "mask",
                format!("list {b} has fewer than two valid responses"),
            ));
        }
    }
    Ok(host)
}

/// Checks an optional `[batch, n]` input that the objective requires. Padding entries must be
/// finite too (pass 0): a NaN in padding would leak into the gradient through `0 · NaN`.
pub(crate) fn required_2d<B: Backend>(
    objective: &'static str,
    input: &'static str,
    tensor: &Option<Tensor<B, 2>>,
    lists: &HostLists,
) -> Result<(Tensor<B, 2>, Vec<f32>)> {
    let tensor = tensor
        .as_ref()
        .ok_or(AlgoError::MissingInput { objective, input })?;
    expect_dims(input, tensor, [lists.batch, lists.n])?;
    let host = finite_host(input, tensor)?;
    Ok((tensor.clone(), host))
}

/// Fraction of lists whose highest-scored response (by `labels`) also has the highest model
/// score (`model`); ties in the labels count the first best.
pub(crate) fn top1_accuracy(lists: &HostLists, labels: &[f32], model: &[f32]) -> f32 {
    let argmax = |values: &[f32], b: usize| {
        (0..lists.n)
            .filter(|&i| lists.is_valid(b, i))
            .fold(None::<usize>, |best, i| match best {
                Some(j) if values[b * lists.n + j] >= values[b * lists.n + i] => Some(j),
                _ => Some(i),
            })
    };
    let hits = (0..lists.batch)
        .filter(|&b| argmax(labels, b) == argmax(model, b))
        .count();
    hits as f32 / lists.batch as f32
}
