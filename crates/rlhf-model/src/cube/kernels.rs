//! The kernels (CubeCL's `Tensor` here, not burn's): forward ones for the inference path and
//! training, backward ones for training's autodiff graph (`super::autodiff`).

use cubecl::prelude::*;

/// The row a row kernel's cube works on ([`row_grid`]).
#[cube]
fn cube_row() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// Each thread's `value` summed over the cube, or their largest with `take_max` (every
/// thread gets the result).
#[cube]
fn cube_reduce(value: f32, #[comptime] threads: usize, #[comptime] take_max: bool) -> f32 {
    let mut shared = SharedMemory::<f32>::new(threads);
    let unit = UNIT_POS_X as usize;
    shared[unit] = value;
    sync_cube();
    // A runtime value (the cube's size is `threads`): comptime values cannot be mutated.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if unit < half {
            let other = shared[unit + half];
            if take_max {
                if other > shared[unit] {
                    shared[unit] = other;
                }
            } else {
                shared[unit] = shared[unit] + other;
            }
        }
        sync_cube();
        half /= 2;
    }
    let result = shared[0];
    sync_cube();
    result
}

/// `weight * (x / sqrt(mean(x²) + eps))` per row of `width`, the statistics and the division in
/// f32, the normalised row rounded to the compute format before the product (as transformers).
/// With `residual`, `x` is `input + delta` (added in the compute format), also written to
/// `sum`; each thread reads back only the sums it wrote itself.
#[cube(launch)]
pub(super) fn rms_norm_kernel<F: Float>(
    input: &Tensor<F>,
    delta: &Tensor<F>,
    weight: &Tensor<F>,
    sum: &mut Tensor<F>,
    output: &mut Tensor<F>,
    rows: usize,
    eps: f32,
    #[comptime] threads: usize,
    #[comptime] residual: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows {
        terminate!();
    }
    let width = weight.len();
    let base = row * width;
    let unit = UNIT_POS_X as usize;
    let mut squares = f32::new(0.0);
    let mut i = unit;
    while i < width {
        let mut x = input[base + i];
        if residual {
            x += delta[base + i];
            sum[base + i] = x;
        }
        let v = f32::cast_from(x);
        squares += v * v;
        i += threads;
    }
    let total = cube_reduce(squares, threads, false);
    let denominator = (total / f32::cast_from(width as u32) + eps).sqrt();
    let mut j = unit;
    while j < width {
        let mut x = input[base + j];
        if residual {
            x = sum[base + j];
        }
        let normed = f32::cast_from(x) / denominator;
        output[base + j] = F::cast_from(normed) * weight[j];
        j += threads;
    }
}

/// `silu(gate) * up`, SiLU as `h · (1 + tanh h)` with `h = gate / 2` computed in f32 and rounded
/// once to the compute format, then the product in the compute format (`model::silu`). The
/// gate's and the up projection's rows of `width` lie side by side in `gate_up` (one product,
/// `model::Mlp`).
#[cube(launch)]
pub(super) fn silu_mul_kernel<F: Float>(
    gate_up: &Tensor<F>,
    output: &mut Tensor<F>,
    width: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= output.len() {
        terminate!();
    }
    let gate = (i / width) * 2 * width + i % width;
    let h = f32::cast_from(gate_up[gate]) * f32::new(0.5);
    let activated = F::cast_from(h * (h.tanh() + f32::new(1.0)));
    output[i] = activated * gate_up[gate + width];
}

/// Queries, keys and values from a merged projection's output `input` (`[batch · seq, width]`,
/// `width = (heads + 2 · kv_heads) · dim`: the queries' columns, the keys', the values'), each
/// written heads-first: RoPE on queries and keys (`x * cos + [x₂, x₁] * sin` with the tables
/// `[batch, seq, 1, dim]`, `sin`'s first half negated, each product rounded to the compute
/// format before the sum, as the composite form `RopeTables::apply`), the values as they are; the bias (of the whole projection) added first. `queries` is
/// `[batch, heads, seq, dim]`; `keys` and `values` hold `out_width` positions per head, this
/// input's from `out_start` (a KV cache; the plain layout with `out_width = seq`, `out_start =
/// 0`).
#[cube(launch)]
pub(super) fn heads_kernel<F: Float>(
    input: &Tensor<F>,
    bias: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    queries: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    dim: usize,
    out_width: usize,
    out_start: usize,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= input.len() {
        terminate!();
    }
    let width = (heads + 2 * kv_heads) * dim;
    let row = i / width;
    let column = i % width;
    let mut x = input[i];
    if has_bias {
        // The projection's bias, added (and rounded) first, as `linear` adds it.
        x += bias[column];
    }
    // Queries and keys turn; values do not.
    let values_start = (heads + kv_heads) * dim;
    if column < values_start {
        let table = row * dim + column % dim;
        let partner = rope_partner(i, dim);
        let mut x_partner = input[partner];
        if has_bias {
            x_partner += bias[partner % width];
        }
        let straight = x * cos[table];
        let swapped = x_partner * sin[table];
        x = straight + swapped;
    }
    let (batch, position) = (row / seq, row % seq);
    let offset = column % dim;
    if column < heads * dim {
        let head = column / dim;
        queries[((batch * heads + head) * seq + position) * dim + offset] = x;
    } else {
        let kv_column = (column - heads * dim) % (kv_heads * dim);
        let at = ((batch * kv_heads + kv_column / dim) * out_width + out_start + position) * dim
            + offset;
        if column < values_start {
            keys[at] = x;
        } else {
            values[at] = x;
        }
    }
}

/// Where element `i` of a `[batch, seq, heads, dim]` tensor lies in its heads-first layout
/// `[batch, heads, seq, dim]`.
#[cube]
fn heads_first_index(i: usize, seq: usize, heads: usize, dim: usize) -> usize {
    let head = (i / dim) % heads;
    let row = i / (heads * dim);
    ((row / seq * heads + head) * seq + row % seq) * dim + i % dim
}

/// The element RoPE pairs element `i` with: the same place in the other half of its head.
#[cube]
fn rope_partner(i: usize, dim: usize) -> usize {
    let half = dim / 2;
    let mut partner = i + half;
    if i % dim >= half {
        partner = i - half;
    }
    partner
}

/// `softmax(f32(scores · scale) + mask)` over the last dimension, returned in the scores'
/// format. `scores` is `[batch, heads, rows, width]` (contiguous), `mask` (f32, additive)
/// `[batch, 1, rows, width]` with any strides, shared by the heads.
#[cube(launch)]
pub(super) fn masked_softmax_kernel<F: Float>(
    scores: &Tensor<F>,
    mask: &Tensor<f32>,
    output: &mut Tensor<F>,
    rows: usize,
    heads: usize,
    scale: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows {
        terminate!();
    }
    let width = scores.shape(3);
    let per_batch = heads * scores.shape(2);
    let base = row * width;
    // The mask row: same batch and query row, through its strides (decoding's mask repeats
    // one row for a group's query heads with stride 0).
    let mask_base = (row / per_batch) * mask.stride(0) + (row % scores.shape(2)) * mask.stride(2);
    let mask_step = mask.stride(3);
    let scale = F::cast_from(scale);
    let unit = UNIT_POS_X as usize;
    let mut top = f32::new(f32::MIN);
    let mut i = unit;
    while i < width {
        let v = f32::cast_from(scores[base + i] * scale) + mask[mask_base + i * mask_step];
        if v > top {
            top = v;
        }
        i += threads;
    }
    let top = cube_reduce(top, threads, true);
    let mut sum = f32::new(0.0);
    let mut j = unit;
    while j < width {
        let v = f32::cast_from(scores[base + j] * scale) + mask[mask_base + j * mask_step];
        sum += (v - top).exp();
        j += threads;
    }
    let total = cube_reduce(sum, threads, false);
    let mut k = unit;
    while k < width {
        let v = f32::cast_from(scores[base + k] * scale) + mask[mask_base + k * mask_step];
        output[base + k] = F::cast_from((v - top).exp() / total);
        k += threads;
    }
}

/// The gradient of [`rms_norm_kernel`] (without the residual) per row: with `g = dy · weight`,
/// `n = x / d` and `d = sqrt(mean(x²) + eps)`, `dx = (g - n · mean(g · n)) / d`, in f32; also each
/// element's term of the weight's gradient, `dy · n` (summed over the rows by the caller).
#[cube(launch)]
pub(super) fn rms_norm_backward_kernel<F: Float>(
    input: &Tensor<F>,
    weight: &Tensor<F>,
    grad: &Tensor<F>,
    input_grad: &mut Tensor<F>,
    weight_terms: &mut Tensor<F>,
    rows: usize,
    eps: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows {
        terminate!();
    }
    let width = weight.len();
    let base = row * width;
    let unit = UNIT_POS_X as usize;
    let mut squares = f32::new(0.0);
    let mut dot = f32::new(0.0);
    let mut i = unit;
    while i < width {
        let x = f32::cast_from(input[base + i]);
        let g = f32::cast_from(grad[base + i]) * f32::cast_from(weight[i]);
        squares += x * x;
        dot += g * x;
        i += threads;
    }
    let squares = cube_reduce(squares, threads, false);
    let dot = cube_reduce(dot, threads, false);
    let width_f = f32::cast_from(width as u32);
    let denominator = (squares / width_f + eps).sqrt();
    // mean(g · n) = Σ g · x / (d · width)
    let mean = dot / (denominator * width_f);
    let mut j = unit;
    while j < width {
        let dy = f32::cast_from(grad[base + j]);
        let normed = f32::cast_from(input[base + j]) / denominator;
        let g = dy * f32::cast_from(weight[j]);
        input_grad[base + j] = F::cast_from((g - normed * mean) / denominator);
        weight_terms[base + j] = F::cast_from(dy * f32::cast_from(F::cast_from(normed)));
        j += threads;
    }
}

/// The gradients of [`silu_mul_kernel`], side by side as its input: `d up = dy · silu(gate)`
/// (SiLU rounded to the compute format, as the forward multiplied it) and `d gate = dy · up ·
/// σ(gate) · (1 + gate · (1 - σ(gate)))`, in f32 (`σ(g) = (1 + tanh(g / 2)) / 2`).
#[cube(launch)]
pub(super) fn silu_mul_backward_kernel<F: Float>(
    gate_up: &Tensor<F>,
    grad: &Tensor<F>,
    gate_up_grad: &mut Tensor<F>,
    width: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= grad.len() {
        terminate!();
    }
    let gate = (i / width) * 2 * width + i % width;
    let up = gate + width;
    let g = f32::cast_from(gate_up[gate]);
    let h = g * f32::new(0.5);
    let t = h.tanh();
    let sigmoid = (t + f32::new(1.0)) * f32::new(0.5);
    let activated = f32::cast_from(F::cast_from(h * (t + f32::new(1.0))));
    let dy = f32::cast_from(grad[i]);
    gate_up_grad[up] = F::cast_from(dy * activated);
    let slope = sigmoid * (f32::new(1.0) + g * (f32::new(1.0) - sigmoid));
    gate_up_grad[gate] = F::cast_from(dy * f32::cast_from(gate_up[up]) * slope);
}

/// The gradient of [`heads_kernel`] with respect to one piece (queries, keys or values) of the
/// merged projection: each element's gradient through its own product with `cos` and through
/// its partner's with `sin` (without `rotate`, the gradient as it is), read from the heads-first
/// gradient, written in f32 into the piece's columns (from `in_start`) of `input_grad`'s rows of
/// `in_width`; the other columns are left as they are (the other pieces' gradients).
#[cube(launch)]
pub(super) fn rope_backward_kernel<F: Float>(
    grad: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    input_grad: &mut Tensor<F>,
    seq: usize,
    heads: usize,
    dim: usize,
    in_width: usize,
    in_start: usize,
    #[comptime] rotate: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= grad.len() {
        terminate!();
    }
    let width = heads * dim;
    let at = (i / width) * in_width + in_start + i % width;
    let own = grad[heads_first_index(i, seq, heads, dim)];
    if rotate {
        let table = (i / width) * dim;
        let partner = rope_partner(i, dim);
        let partners = f32::cast_from(grad[heads_first_index(partner, seq, heads, dim)]);
        let straight = f32::cast_from(own) * f32::cast_from(cos[table + i % dim]);
        let swapped = partners * f32::cast_from(sin[table + partner % dim]);
        input_grad[at] = F::cast_from(straight + swapped);
    } else {
        input_grad[at] = own;
    }
}

/// The gradient of [`masked_softmax_kernel`] with respect to the raw scores, per row of
/// `width`: `scale · p · (dp - Σ dp · p)` from the probabilities `p` it returned, in f32.
#[cube(launch)]
pub(super) fn masked_softmax_backward_kernel<F: Float>(
    probs: &Tensor<F>,
    grad: &Tensor<F>,
    scores_grad: &mut Tensor<F>,
    rows: usize,
    width: usize,
    scale: f32,
    #[comptime] threads: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = cube_row();
    if row >= rows {
        terminate!();
    }
    let base = row * width;
    let unit = UNIT_POS_X as usize;
    let mut dot = f32::new(0.0);
    let mut i = unit;
    while i < width {
        dot += f32::cast_from(grad[base + i]) * f32::cast_from(probs[base + i]);
        i += threads;
    }
    let dot = cube_reduce(dot, threads, false);
    let mut j = unit;
    while j < width {
        let p = f32::cast_from(probs[base + j]);
        let dp = f32::cast_from(grad[base + j]);
        scores_grad[base + j] = F::cast_from(scale * p * (dp - dot));
        j += threads;
    }
}

/// Part of a concatenation of 1-D tensors: `parts` (a launch's share of them, contiguous) written
/// one after another into `output` from `start`.
#[cube(launch)]
pub(super) fn concat_kernel<F: Float>(
    parts: Sequence<Tensor<F>>,
    output: &mut Tensor<F>,
    start: usize,
    length: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= length {
        terminate!();
    }
    let count = comptime!(parts.len());
    let mut offset = 0;
    #[unroll]
    for p in 0..count {
        let n = parts[p].len();
        if i >= offset && i < offset + n {
            output[start + i] = parts[p][i - offset];
        }
        offset += n;
    }
}
