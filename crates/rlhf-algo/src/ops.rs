//! Small tensor helpers shared by the objectives: host read-back with finiteness checks,
//! shape checks, masked reductions and a stable log-sum-exp.
//!
//! Inputs are read back to the host once per call to check them for NaN/inf (the objectives
//! never train on non-finite data); on a GPU this is a synchronisation point per loss call,
//! which is cheap next to the forward/backward passes that produce the inputs.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{AlgoError, Result};

/// Reads a tensor back to the host as `f32`.
pub fn to_host<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Result<Vec<f32>> {
    let data = tensor
        .clone()
        .try_into_data()
        .map_err(|e| AlgoError::Backend(e.to_string()))?;
    data.convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| AlgoError::Backend(e.to_string()))
}

/// Returns an error naming `input` if any value is NaN or infinite.
pub fn check_finite_host(input: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(AlgoError::NonFinite {
            input,
            index,
            value: values[index],
        }),
    }
}

/// Reads a tensor back and checks it is finite; returns the host copy.
pub fn finite_host<B: Backend, const D: usize>(
    input: &'static str,
    tensor: &Tensor<B, D>,
) -> Result<Vec<f32>> {
    let values = to_host(tensor)?;
    check_finite_host(input, &values)?;
    Ok(values)
}

/// Checks that `tensor` has exactly `expected` dimensions.
pub fn expect_dims<B: Backend, const D: usize>(
    input: &'static str,
    tensor: &Tensor<B, D>,
    expected: [usize; D],
) -> Result<()> {
    let got = tensor.dims();
    if got == expected {
        Ok(())
    } else {
        Err(AlgoError::Shape {
            input,
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    }
}

/// Checks that a batch is not empty.
pub fn expect_non_empty(input: &'static str, len: usize) -> Result<()> {
    if len == 0 {
        Err(AlgoError::invalid(input, "the batch is empty"))
    } else {
        Ok(())
    }
}

/// Checks a float 0/1 mask: finite, every entry 0 or 1, and returns the host copy.
pub fn mask_host<B: Backend, const D: usize>(
    input: &'static str,
    mask: &Tensor<B, D>,
) -> Result<Vec<f32>> {
    let values = finite_host(input, mask)?;
    if let Some(index) = values.iter().position(|&v| v != 0.0 && v != 1.0) {
        return Err(AlgoError::invalid(
            input,
            format!(
                "mask entries must be 0 or 1, found {} at {index}",
                values[index]
            ),
        ));
    }
    Ok(values)
}

/// Builds a tensor from host values.
pub fn from_host<B: Backend, const D: usize>(
    values: Vec<f32>,
    dims: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// Reads a scalar loss back and fails with [`AlgoError::NonFiniteLoss`] if it is not finite.
pub fn checked_loss<B: Backend>(objective: &'static str, loss: &Tensor<B, 1>) -> Result<f32> {
    let values = to_host(loss)?;
    let value = values.first().copied().unwrap_or(f32::NAN);
    if value.is_finite() {
        Ok(value)
    } else {
        Err(AlgoError::NonFiniteLoss { objective, value })
    }
}

/// Mean of host values as `f32` (0 for an empty slice).
pub fn host_mean(values: &[f32]) -> f32 {
    if values.is_empty() {
        0.0
    } else {
        (values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64) as f32
    }
}

/// Stable log-sum-exp over `dim` (kept, size 1).
pub fn logsumexp<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let max = x.clone().max_dim(dim).detach();
    (x - max.clone()).exp().sum_dim(dim).log() + max
}

/// Masked mean over all elements: `Σ x·m / Σ m` (the mask must have at least one 1).
pub fn masked_mean<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    mask: Tensor<B, D>,
) -> Tensor<B, 1> {
    let denom = mask.clone().sum();
    (x * mask).sum() / denom
}

/// How per-token losses `[batch, T]` are reduced to a scalar.
///
/// The choice matters: GRPO averages within each sequence first (short answers weigh more per
/// token), DAPO/PPO implementations average over all tokens, Dr. GRPO divides the token sum by a
/// constant so that no length normalisation biases the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TokenReduction {
    /// `Σ_{b,t} x·m / Σ_{b,t} m` (all valid tokens of the batch weigh the same).
    #[default]
    TokenMean,
    /// `mean_b (Σ_t x·m / Σ_t m)` (GRPO, Shao et al. 2024, eq. 3).
    SequenceMean,
    /// `mean_b Σ_t x·m` (sequence-level REINFORCE).
    SequenceSum,
    /// `mean_b Σ_t x·m / L` with a constant `L` (Dr. GRPO, Liu et al. 2025).
    FixedLength,
}

/// Reduces per-token values `x` `[batch, T]` with a 0/1 `mask` `[batch, T]`.
///
/// `fixed_length` is the constant `L` of [`TokenReduction::FixedLength`] (ignored otherwise).
/// Rows with no valid token contribute 0 to `SequenceMean` (their denominator is clamped at 1).
pub fn reduce_tokens<B: Backend>(
    x: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    reduction: TokenReduction,
    fixed_length: usize,
) -> Tensor<B, 1> {
    let [batch, _] = x.dims();
    let masked = x * mask.clone();
    match reduction {
        TokenReduction::TokenMean => masked.sum() / mask.sum(),
        TokenReduction::SequenceMean => {
            let per_seq = masked.sum_dim(1) / mask.sum_dim(1).clamp_min(1.0);
            per_seq.reshape([batch]).mean()
        }
        TokenReduction::SequenceSum => masked.sum_dim(1).reshape([batch]).mean(),
        TokenReduction::FixedLength => {
            masked.sum_dim(1).reshape([batch]).mean() / fixed_length.max(1) as f64
        }
    }
}

/// Validates a hyperparameter: finite and inside `[lo, hi]` (inclusive bounds via flags).
pub(crate) fn check_range(
    field: &str,
    value: f64,
    lo: f64,
    hi: f64,
    lo_inclusive: bool,
    hi_inclusive: bool,
) -> Result<()> {
    let lo_ok = if lo_inclusive {
        value >= lo
    } else {
        value > lo
    };
    let hi_ok = if hi_inclusive {
        value <= hi
    } else {
        value < hi
    };
    if value.is_finite() && lo_ok && hi_ok {
        Ok(())
    } else {
        let (l, h) = (
            if lo_inclusive { "[" } else { "(" },
            if hi_inclusive { "]" } else { ")" },
        );
        Err(AlgoError::config(
            field,
            format!("must be a finite number in {l}{lo}, {hi}{h}, got {value}"),
        ))
    }
}

/// Validates a strictly positive, finite hyperparameter.
pub(crate) fn check_positive(field: &str, value: f64) -> Result<()> {
    check_range(field, value, 0.0, f64::INFINITY, false, false)
}

/// Validates a non-negative, finite hyperparameter.
pub(crate) fn check_non_negative(field: &str, value: f64) -> Result<()> {
    check_range(field, value, 0.0, f64::INFINITY, true, false)
}
