//! Fused kernels for burn's CubeCL backends (CUDA; wgpu, which runs the same kernels on any
//! Vulkan device, Mesa's CPU one included), used by the model's inference path — decoding,
//! prefill, reference and scorer forwards — where each of these took several kernel launches
//! (docs/gpu.md): RMSNorm (6–8 launches → 1; with the residual addition before it, 7–9 → 1),
//! RoPE on queries or keys with the projection's bias (4–5 → 1), SiLU times the up projection
//! (5–7 → 1) and attention's scaled, masked softmax (7–9 → 1). On an H200 a
//! decoding step's time followed its launches, not its arithmetic.
//!
//! Each function returns `None` unless the tensors are burn's plain CubeCL backend
//! (`CubeBackend`, found by type at run time), so the model's code stays generic and every other
//! backend — the CPU ones, `Autodiff` (training keeps the composite operations, whose backward
//! passes burn derives) and `Fusion` — computes the composite operations as before. The kernels
//! compute what the composite operations compute, in the same formats (statistics in f32, results
//! rounded to the compute format where the composite rounds them); only the order of the
//! reductions' sums differs. `RLHF_GPU_KERNELS=off` turns them off (to compare, or to rule them
//! out).

use std::any::Any;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::{CubeCount, CubeDim};

use kernels::{masked_softmax_kernel, rms_norm_kernel, rope_kernel, silu_mul_kernel};

/// Threads per cube of the row kernels (a power of two: their sums halve it).
const ROW_THREADS: usize = 256;
/// The largest cube count in one grid dimension every runtime accepts (Vulkan's minimum).
const MAX_GRID_X: usize = 65_535;

/// Whether the fused kernels are on (`RLHF_GPU_KERNELS` unset or anything but `off`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("RLHF_GPU_KERNELS")
            .map(|v| v.trim() != "off")
            .unwrap_or(true)
    })
}

/// Whether `t` is on a backend the fused kernels serve (and they are on): lets a caller arrange
/// its operations for a kernel before computing them.
pub(crate) fn serves<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    struct Probe<'a, B: Backend, const D: usize>(&'a Tensor<B, D>);
    impl<B: Backend, const D: usize> CubeOp for Probe<'_, B, D> {
        type Out = ();
        fn run<R: CubeRuntime>(&self) -> Option<()> {
            cube_of::<B, R, D>(self.0).map(|_| ())
        }
    }
    enabled() && on_runtime(&Probe(t)).is_some()
}

/// Fused kernels launched by this process so far (tests and benchmarks check they ran).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// `t`'s CubeCL tensor (a handle, not a copy) when `B` is the plain CubeCL backend on `R`.
fn cube_of<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D>) -> Option<CubeTensor<R>> {
    let primitive = t.clone().into_primitive().tensor();
    (&primitive as &dyn Any)
        .downcast_ref::<CubeTensor<R>>()
        .cloned()
}

/// The tensor of backend `B` holding `c` (`None` when `B`'s tensors are not `CubeTensor<R>`).
fn tensor_of<B: Backend, R: CubeRuntime, const D: usize>(c: CubeTensor<R>) -> Option<Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(c);
    boxed
        .downcast::<B::FloatTensorPrimitive>()
        .ok()
        .map(|p| Tensor::from_primitive(TensorPrimitive::Float(*p)))
}

/// One fused operation, written once for every CubeCL runtime.
trait CubeOp {
    type Out;
    fn run<R: CubeRuntime>(&self) -> Option<Self::Out>;
}

/// Runs `op` on whichever runtime of this build its tensors belong to.
fn on_runtime<O: CubeOp>(op: &O) -> Option<O::Out> {
    #[cfg(feature = "cuda")]
    let out = op.run::<cubecl::cuda::CudaRuntime>();
    #[cfg(not(feature = "cuda"))]
    let out = None;
    #[cfg(feature = "wgpu")]
    let out = out.or_else(|| op.run::<cubecl::wgpu::WgpuRuntime>());
    out
}

/// Launches `op` (over `elements` output elements) when the kernels are on and its tensors are
/// on a CubeCL runtime; empty tensors (nothing to launch) are left to the composite operations.
fn dispatch<O: CubeOp>(elements: usize, op: &O) -> Option<O::Out> {
    if !enabled() || elements == 0 {
        return None;
    }
    let out = on_runtime(op);
    if out.is_some() {
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// A grid of one cube per row (rows past `MAX_GRID_X` on a second grid dimension).
fn row_grid(rows: usize) -> CubeCount {
    let x = rows.clamp(1, MAX_GRID_X);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// A grid of one unit per element.
fn elementwise_grid<R: CubeRuntime>(t: &CubeTensor<R>, elements: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new(&t.client, elements);
    let count = calculate_cube_count_elemwise(&t.client, elements, cube_dim);
    (count, cube_dim)
}

/// A contiguous output on `like`'s device, in its format, of `shape`.
fn empty_like<R: CubeRuntime>(like: &CubeTensor<R>, shape: &[usize]) -> CubeTensor<R> {
    empty_device_contiguous_dtype::<R>(
        like.client.clone(),
        like.device.clone(),
        shape.to_vec().into(),
        like.dtype,
    )
}

/// `t`'s CubeCL tensor, contiguous, when it is given: `Some(None)` without one, `None` when it
/// is not on runtime `R`, not in `dtype` or not of `dims` (the kernel then declines).
fn optional_cube<B: Backend, R: CubeRuntime, const D: usize>(
    t: Option<&Tensor<B, D>>,
    dtype: DType,
    dims: [usize; D],
) -> Option<Option<CubeTensor<R>>> {
    let Some(t) = t else {
        return Some(None);
    };
    let c = cube_of::<B, R, D>(t)?;
    (c.dtype == dtype && t.dims() == dims).then(|| Some(into_contiguous(c)))
}

/// RMSNorm over the last dimension of `x` with `weight` (both in one float format).
pub(crate) fn rms_norm<B: Backend>(
    x: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 3>> {
    norm(x, None, weight, eps).map(|(_, normed)| normed)
}

/// `(x + delta, rms_norm(x + delta))`: a residual addition (in the tensors' format) and the
/// RMSNorm of its result, in one launch.
pub(crate) fn add_rms_norm<B: Backend>(
    x: &Tensor<B, 3>,
    delta: &Tensor<B, 3>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<(Tensor<B, 3>, Tensor<B, 3>)> {
    let (sum, normed) = norm(x, Some(delta), weight, eps)?;
    Some((sum?, normed))
}

/// [`rms_norm`] of `x`, or of `x + delta` also returned.
#[allow(clippy::type_complexity)]
fn norm<B: Backend>(
    x: &Tensor<B, 3>,
    delta: Option<&Tensor<B, 3>>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<(Option<Tensor<B, 3>>, Tensor<B, 3>)> {
    struct Op<'a, B: Backend>(
        &'a Tensor<B, 3>,
        Option<&'a Tensor<B, 3>>,
        &'a Tensor<B, 1>,
        f64,
    );
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = (Option<Tensor<B, 3>>, Tensor<B, 3>);
        fn run<R: CubeRuntime>(&self) -> Option<Self::Out> {
            let (x, w) = (cube_of::<B, R, 3>(self.0)?, cube_of::<B, R, 1>(self.2)?);
            let dims = self.0.dims();
            if x.dtype != w.dtype || w.meta.shape[0] != dims[2] {
                return None;
            }
            let delta = optional_cube::<B, R, 3>(self.1, x.dtype, dims)?;
            let (x, w) = (into_contiguous(x), into_contiguous(w));
            let out = empty_like(&x, &dims);
            // Without a residual the kernel reads `x` as its (unused) delta and never touches
            // the one-element `sum` (comptime branches); wgpu refuses one buffer bound twice
            // for writing, hence a buffer of its own.
            let sum_shape: &[usize] = if delta.is_some() { &dims } else { &[1] };
            let sum = empty_like(&x, sum_shape);
            let rows = dims[0] * dims[1];
            rms_norm_kernel::launch::<R>(
                &x.client,
                row_grid(rows),
                CubeDim::new_1d(ROW_THREADS as u32),
                x.clone().into_tensor_arg(),
                delta.clone().unwrap_or_else(|| x.clone()).into_tensor_arg(),
                w.into_tensor_arg(),
                sum.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                rows,
                self.3 as f32,
                ROW_THREADS,
                delta.is_some(),
                x.dtype.into(),
            );
            let sum = match delta {
                Some(_) => Some(tensor_of::<B, R, 3>(sum)?),
                None => None,
            };
            Some((sum, tensor_of::<B, R, 3>(out)?))
        }
    }
    dispatch(x.shape().num_elements(), &Op(x, delta, weight, eps))
}

/// `silu(gate) * up` for two tensors of one shape and format.
pub(crate) fn silu_mul<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    struct Op<'a, B: Backend>(&'a Tensor<B, 3>, &'a Tensor<B, 3>);
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = Tensor<B, 3>;
        fn run<R: CubeRuntime>(&self) -> Option<Self::Out> {
            let (g, u) = (cube_of::<B, R, 3>(self.0)?, cube_of::<B, R, 3>(self.1)?);
            let dims = self.0.dims();
            if g.dtype != u.dtype || self.1.dims() != dims {
                return None;
            }
            let (g, u) = (into_contiguous(g), into_contiguous(u));
            let out = empty_like(&g, &dims);
            let (count, cube_dim) = elementwise_grid(&g, dims.iter().product());
            silu_mul_kernel::launch::<R>(
                &g.client,
                count,
                cube_dim,
                g.clone().into_tensor_arg(),
                u.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                g.dtype.into(),
            );
            tensor_of::<B, R, 3>(out)
        }
    }
    dispatch(gate.shape().num_elements(), &Op(gate, up))
}

/// RoPE on `x + bias` (`x` `[batch, seq, heads, dim]` straight from a projection without its
/// bias, `bias` `[heads · dim]`) with tables `[batch, seq, 1, dim]`, all in one format; returned
/// heads-first, `[batch, heads, seq, dim]` (contiguous, as attention's matmuls read it).
pub(crate) fn rope<B: Backend>(
    x: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    struct Op<'a, B: Backend>(
        &'a Tensor<B, 4>,
        Option<&'a Tensor<B, 1>>,
        &'a Tensor<B, 4>,
        &'a Tensor<B, 4>,
    );
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = Tensor<B, 4>;
        fn run<R: CubeRuntime>(&self) -> Option<Self::Out> {
            let x = cube_of::<B, R, 4>(self.0)?;
            let (c, s) = (cube_of::<B, R, 4>(self.2)?, cube_of::<B, R, 4>(self.3)?);
            let [b, n, h, d] = self.0.dims();
            if x.dtype != c.dtype || x.dtype != s.dtype || d % 2 != 0 {
                return None;
            }
            if self.2.dims() != [b, n, 1, d] || self.3.dims() != [b, n, 1, d] {
                return None;
            }
            let bias = optional_cube::<B, R, 1>(self.1, x.dtype, [h * d])?;
            let (x, c, s) = (into_contiguous(x), into_contiguous(c), into_contiguous(s));
            let out = empty_like(&x, &[b, h, n, d]);
            let (count, cube_dim) = elementwise_grid(&x, b * n * h * d);
            rope_kernel::launch::<R>(
                &x.client,
                count,
                cube_dim,
                x.clone().into_tensor_arg(),
                // Without a bias the kernel never reads this argument (a comptime branch).
                bias.clone().unwrap_or_else(|| c.clone()).into_tensor_arg(),
                c.into_tensor_arg(),
                s.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                n,
                h,
                d,
                bias.is_some(),
                x.dtype.into(),
            );
            tensor_of::<B, R, 4>(out)
        }
    }
    dispatch(x.shape().num_elements(), &Op(x, bias, cos, sin))
}

/// Attention's probabilities from raw `scores` (`[batch, heads, rows, width]`), `scale` and an
/// additive f32 `mask` (`[batch, 1, rows, width]`), in the scores' format.
pub(crate) fn masked_softmax<B: Backend>(
    scores: &Tensor<B, 4>,
    mask: &Tensor<B, 4>,
    scale: f64,
) -> Option<Tensor<B, 4>> {
    struct Op<'a, B: Backend>(&'a Tensor<B, 4>, &'a Tensor<B, 4>, f64);
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = Tensor<B, 4>;
        fn run<R: CubeRuntime>(&self) -> Option<Self::Out> {
            let (s, m) = (cube_of::<B, R, 4>(self.0)?, cube_of::<B, R, 4>(self.1)?);
            let [b, h, r, w] = self.0.dims();
            if m.dtype != DType::F32 || self.1.dims() != [b, 1, r, w] {
                return None;
            }
            // The mask is read through its strides (often a broadcast view): not copied.
            let s = into_contiguous(s);
            let out = empty_like(&s, &[b, h, r, w]);
            let rows = b * h * r;
            masked_softmax_kernel::launch::<R>(
                &s.client,
                row_grid(rows),
                CubeDim::new_1d(ROW_THREADS as u32),
                s.clone().into_tensor_arg(),
                m.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                rows,
                h,
                self.2 as f32,
                ROW_THREADS,
                s.dtype.into(),
            );
            tensor_of::<B, R, 4>(out)
        }
    }
    dispatch(scores.shape().num_elements(), &Op(scores, mask, scale))
}

/// The kernels (CubeCL's `Tensor` here, not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// The row a row kernel's cube works on ([`row_grid`]).
    #[cube]
    pub(super) fn cube_row() -> usize {
        CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
    }

    /// Each thread's `value` summed over the cube, or their largest with `take_max` (every
    /// thread gets the result).
    #[cube]
    pub(super) fn cube_reduce(
        value: f32,
        #[comptime] threads: usize,
        #[comptime] take_max: bool,
    ) -> f32 {
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
    /// once to the compute format, then the product in the compute format (`model::silu`).
    #[cube(launch)]
    pub(super) fn silu_mul_kernel<F: Float>(
        gate: &Tensor<F>,
        up: &Tensor<F>,
        output: &mut Tensor<F>,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i >= output.len() {
            terminate!();
        }
        let h = f32::cast_from(gate[i]) * f32::new(0.5);
        let activated = F::cast_from(h * (h.tanh() + f32::new(1.0)));
        output[i] = activated * up[i];
    }

    /// RoPE on `x` (`[batch, seq, heads, dim]`): `x * cos + [x₂, x₁] * sin` with the tables
    /// `[batch, seq, 1, dim]` (`sin`'s first half negated), each product rounded to the compute
    /// format before the sum, as the composite form (`RopeTables::apply`).
    #[cube(launch)]
    pub(super) fn rope_kernel<F: Float>(
        input: &Tensor<F>,
        bias: &Tensor<F>,
        cos: &Tensor<F>,
        sin: &Tensor<F>,
        output: &mut Tensor<F>,
        seq: usize,
        heads: usize,
        dim: usize,
        #[comptime] has_bias: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i >= output.len() {
            terminate!();
        }
        // `i` walks the input's [batch, seq, heads, dim]; the output is [batch, heads, seq, dim].
        let head = (i / dim) % heads;
        let row = i / (heads * dim);
        let (batch, position) = (row / seq, row % seq);
        let out = ((batch * heads + head) * seq + position) * dim + i % dim;
        let k = i % dim;
        let half = dim / 2;
        let table = (i / (heads * dim)) * dim + k;
        let mut partner = i + half;
        if k >= half {
            partner = i - half;
        }
        let mut x = input[i];
        let mut x_partner = input[partner];
        if has_bias {
            // The projection's bias, added (and rounded) first, as `linear` adds it.
            let width = heads * dim;
            x += bias[i % width];
            x_partner += bias[partner % width];
        }
        let straight = x * cos[table];
        let swapped = x_partner * sin[table];
        output[out] = straight + swapped;
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
        let mask_base =
            (row / per_batch) * mask.stride(0) + (row % scores.shape(2)) * mask.stride(2);
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
}
