//! Fused kernels for burn's CubeCL backends (CUDA; wgpu, which runs the same kernels on any
//! Vulkan device, Mesa's CPU one included), where each of these operations took several kernel
//! launches (docs/gpu.md): RMSNorm (6–8 launches → 1; with the residual addition before it,
//! 7–9 → 1), queries, keys and values from the merged projection with its bias, RoPE and the
//! heads-first layout (2–7 per piece → 1 for the three), SiLU times the up projection (5–7 → 1)
//! and attention's scaled, masked softmax (7–9 → 1). On an H200 a decoding step's time, and a
//! training step's, followed their launches, not their arithmetic.
//!
//! Each function returns `None` unless the tensors are burn's plain CubeCL backend
//! (`CubeBackend`, found by type at run time) or burn's `Autodiff` over it (training: each kernel
//! is then one operation of the autodiff graph, with a backward kernel of ours, see
//! [`autodiff`]). The model's code stays generic and every other backend — the CPU ones and
//! `Fusion` — computes the composite operations as before. The kernels compute what the composite
//! operations compute, in the same formats (statistics in f32, results rounded to the compute
//! format where the composite rounds them); only the order of the reductions' sums differs, and
//! the backward kernels keep their intermediate values in f32 where burn's derived backward
//! passes round them to the compute format. `RLHF_GPU_KERNELS=off` turns them off (to compare, or
//! to rule them out).

mod autodiff;
mod kernels;

use std::any::Any;
use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};

use kernels::{
    concat_kernel, heads_kernel, masked_softmax_kernel, rms_norm_kernel, silu_mul_kernel,
};

/// Threads per cube of the row kernels (a power of two: their sums halve it).
const ROW_THREADS: usize = 256;
/// The largest cube count in one grid dimension every runtime accepts (Vulkan's minimum).
const MAX_GRID_X: usize = 65_535;

/// Parts copied per launch by [`concat`] (each one kernel argument).
const CONCAT_PARTS: usize = 16;

/// A CubeCL runtime of this build, with the plain backend over it that our backends use (the
/// autodiff graph's tensors are typed by it).
trait Runtime: CubeRuntime {
    type Plain: Backend<FloatTensorPrimitive = CubeTensor<Self>>;
}

#[cfg(feature = "cuda")]
impl Runtime for cubecl::cuda::CudaRuntime {
    type Plain = burn_cubecl::CubeBackend<Self, f32, i32, u8>;
}

#[cfg(feature = "wgpu")]
impl Runtime for cubecl::wgpu::WgpuRuntime {
    type Plain = burn_cubecl::CubeBackend<Self, f32, i32, u32>;
}

/// Whether the fused kernels are on (`RLHF_GPU_KERNELS` unset or anything but `off`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("RLHF_GPU_KERNELS")
            .map(|v| v.trim() != "off")
            .unwrap_or(true)
    })
}

/// Whether `t` is on a backend the fused kernels serve and no gradient flows to it (the plain
/// backend, or a constant of an autodiff graph).
pub(crate) fn untracked<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    struct Probe<'a, B: Backend, const D: usize>(&'a Tensor<B, D>);
    impl<B: Backend, const D: usize> CubeOp for Probe<'_, B, D> {
        type Out = ();
        fn run<R: Runtime>(&self) -> Option<()> {
            let plain = cube_of::<B, R, D>(self.0).is_some();
            (plain || autodiff::untracked::<B, R, D>(self.0)).then_some(())
        }
    }
    enabled() && on_runtime(&Probe(t)).is_some()
}

/// Fused kernels (forward and backward) launched by this process so far (tests and benchmarks
/// check they ran).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Counts one launch of a kernel of ours.
fn launched() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// `t`'s primitive as `T` (a handle, not a copy) when `B`'s float tensors are `T`.
fn primitive_of<B: Backend, T: Clone + 'static, const D: usize>(t: &Tensor<B, D>) -> Option<T> {
    let primitive = t.clone().into_primitive().tensor();
    (&primitive as &dyn Any).downcast_ref::<T>().cloned()
}

/// The tensor of backend `B` holding `p` (`None` when `B`'s float tensors are not `T`).
fn tensor_from<B: Backend, T: 'static, const D: usize>(p: T) -> Option<Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(p);
    boxed
        .downcast::<B::FloatTensorPrimitive>()
        .ok()
        .map(|p| Tensor::from_primitive(TensorPrimitive::Float(*p)))
}

/// `t`'s CubeCL tensor when `B` is the plain CubeCL backend on `R`.
fn cube_of<B: Backend, R: CubeRuntime, const D: usize>(t: &Tensor<B, D>) -> Option<CubeTensor<R>> {
    primitive_of::<B, CubeTensor<R>, D>(t)
}

/// One fused operation, written once for every CubeCL runtime.
trait CubeOp {
    type Out;
    fn run<R: Runtime>(&self) -> Option<Self::Out>;
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
        launched();
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

/// `t`'s dimensions.
fn dims<R: CubeRuntime>(t: &CubeTensor<R>) -> Vec<usize> {
    t.meta.shape().to_vec()
}

/// `f` of an optional argument: `Some(None)` without one, `None` when `f` declines it (the
/// kernel then declines too).
fn optional<X, T>(t: Option<X>, f: impl FnOnce(X) -> Option<T>) -> Option<Option<T>> {
    match t {
        Some(t) => f(t).map(Some),
        None => Some(None),
    }
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
        fn run<R: Runtime>(&self) -> Option<Self::Out> {
            let Some(x) = cube_of::<B, R, 3>(self.0) else {
                return autodiff::norm::<B, R>(self.0, self.1, self.2, self.3);
            };
            let delta = optional(self.1, cube_of::<B, R, 3>)?;
            let w = cube_of::<B, R, 1>(self.2)?;
            let (sum, out) = launch_rms_norm(x, delta, w, self.3)?;
            let sum = optional(sum, tensor_from::<B, _, 3>)?;
            Some((sum, tensor_from::<B, _, 3>(out)?))
        }
    }
    dispatch(x.shape().num_elements(), &Op(x, delta, weight, eps))
}

/// RMSNorm over the last dimension of `x` (of `x + delta`, also returned, when given) with
/// `w`; `None` unless the formats and shapes fit.
#[allow(clippy::type_complexity)]
fn launch_rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    delta: Option<CubeTensor<R>>,
    w: CubeTensor<R>,
    eps: f64,
) -> Option<(Option<CubeTensor<R>>, CubeTensor<R>)> {
    let shape = dims(&x);
    let width = *shape.last()?;
    if x.dtype != w.dtype || dims(&w) != [width] {
        return None;
    }
    if let Some(d) = &delta
        && (d.dtype != x.dtype || dims(d) != shape)
    {
        return None;
    }
    let delta = delta.map(into_contiguous);
    let (x, w) = (into_contiguous(x), into_contiguous(w));
    let out = empty_like(&x, &shape);
    // Without a residual the kernel reads `x` as its (unused) delta and never touches the
    // one-element `sum` (comptime branches); wgpu refuses one buffer bound twice for writing,
    // hence a buffer of its own.
    let sum_shape: &[usize] = if delta.is_some() { &shape } else { &[1] };
    let sum = empty_like(&x, sum_shape);
    let rows = shape.iter().product::<usize>() / width.max(1);
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
        eps as f32,
        ROW_THREADS,
        delta.is_some(),
        x.dtype.into(),
    );
    Some((delta.is_some().then_some(sum), out))
}

/// `silu(gate) * up` from `gate_up` (`[batch, seq, 2 · width]`: the gate's columns, then the up
/// projection's), `[batch, seq, width]`.
pub(crate) fn silu_mul<B: Backend>(gate_up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    struct Op<'a, B: Backend>(&'a Tensor<B, 3>);
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = Tensor<B, 3>;
        fn run<R: Runtime>(&self) -> Option<Self::Out> {
            let Some(gu) = cube_of::<B, R, 3>(self.0) else {
                return autodiff::silu_mul::<B, R>(self.0);
            };
            tensor_from::<B, _, 3>(launch_silu_mul(gu)?)
        }
    }
    dispatch(gate_up.shape().num_elements(), &Op(gate_up))
}

/// [`silu_mul`] on a CubeCL tensor; `None` unless its last dimension is even.
fn launch_silu_mul<R: CubeRuntime>(gate_up: CubeTensor<R>) -> Option<CubeTensor<R>> {
    let mut shape = dims(&gate_up);
    let last = shape.last_mut()?;
    if *last % 2 != 0 {
        return None;
    }
    *last /= 2;
    let width = *last;
    let gate_up = into_contiguous(gate_up);
    let out = empty_like(&gate_up, &shape);
    let (count, cube_dim) = elementwise_grid(&gate_up, shape.iter().product());
    silu_mul_kernel::launch::<R>(
        &gate_up.client,
        count,
        cube_dim,
        gate_up.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        width,
        gate_up.dtype.into(),
    );
    Some(out)
}

/// RoPE's tables `(cos, sin)`, `[batch, seq, 1, dim]` each.
pub(crate) type Tables<'a, B> = (&'a Tensor<B, 4>, &'a Tensor<B, 4>);

/// A piece of a merged projection's output `[batch, seq, width]`: `(start, heads, dim)`, its
/// `heads · dim` columns from `start`, read as `[batch, seq, heads, dim]`.
pub(crate) type Piece = (usize, usize, usize);

/// Attention's head counts and size: `(heads, kv_heads, dim)`.
pub(crate) type Heads = (usize, usize, usize);

/// Queries, keys and values, heads-first (`[batch, heads, seq, dim]`, contiguous, as
/// attention's matmuls read them), from `y` (`[batch, seq, (heads + 2 · kv_heads) · dim]`, a
/// merged projection's output without its bias) and `bias` (`[width]`): RoPE with `tables` on
/// queries and keys, all in one format, one launch. In a training graph each
/// of the three is an operation of its own (with its backward kernel), and the bias must be a
/// constant (the model adds a trained one in the product).
pub(crate) fn qkv<B: Backend>(
    y: &Tensor<B, 3>,
    heads: Heads,
    bias: Option<&Tensor<B, 1>>,
    tables: Tables<'_, B>,
) -> Option<QueriesKeysValues<B>> {
    struct Op<'a, B: Backend>(
        &'a Tensor<B, 3>,
        Heads,
        Option<&'a Tensor<B, 1>>,
        Tables<'a, B>,
    );
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = QueriesKeysValues<B>;
        fn run<R: Runtime>(&self) -> Option<Self::Out> {
            let Some(y) = cube_of::<B, R, 3>(self.0) else {
                return autodiff::qkv::<B, R>(self.0, self.1, self.2, self.3);
            };
            let (bias, tables) = rope_extras::<B, R>(self.2, self.3)?;
            qkv_from(launch_heads(y, self.1, bias, tables, None)?)
        }
    }
    dispatch(y.shape().num_elements(), &Op(y, heads, bias, tables))
}

/// Queries, keys and values, heads-first.
type QueriesKeysValues<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// The tensors of backend `B` holding [`launch_heads`]'s queries, keys and values.
fn qkv_from<B: Backend, R: CubeRuntime>(
    (q, k, v): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>),
) -> Option<QueriesKeysValues<B>> {
    Some((
        tensor_from::<B, _, 4>(q)?,
        tensor_from::<B, _, 4>(k)?,
        tensor_from::<B, _, 4>(v)?,
    ))
}

/// RoPE's optional bias and its tables on the plain backend over `R` (`None` when one is
/// elsewhere).
#[allow(clippy::type_complexity)]
fn rope_extras<B: Backend, R: CubeRuntime>(
    bias: Option<&Tensor<B, 1>>,
    (cos, sin): Tables<'_, B>,
) -> Option<(Option<CubeTensor<R>>, (CubeTensor<R>, CubeTensor<R>))> {
    let bias = optional(bias, cube_of::<B, R, 1>)?;
    Some((bias, (cube_of::<B, R, 4>(cos)?, cube_of::<B, R, 4>(sin)?)))
}

/// [`qkv`] on CubeCL tensors: queries into a new tensor, keys and values into new ones or
/// (`into`: two `[batch, kv_heads, width, dim]` KV caches and a start position) into those
/// caches in place; `None` unless the formats and shapes fit.
#[allow(clippy::type_complexity)]
fn launch_heads<R: CubeRuntime>(
    y: CubeTensor<R>,
    (h, kvh, d): Heads,
    bias: Option<CubeTensor<R>>,
    (cos, sin): (CubeTensor<R>, CubeTensor<R>),
    into: Option<(&CubeTensor<R>, &CubeTensor<R>, usize)>,
) -> Option<(CubeTensor<R>, CubeTensor<R>, CubeTensor<R>)> {
    let [b, n, in_width] = <[usize; 3]>::try_from(dims(&y)).ok()?;
    let mut formats = [cos.dtype, sin.dtype]
        .into_iter()
        .chain(bias.as_ref().map(|t| t.dtype))
        .chain(into.iter().flat_map(|(k, v, _)| [k.dtype, v.dtype]));
    if formats.any(|f| f != y.dtype) || d % 2 != 0 || in_width != (h + 2 * kvh) * d {
        return None;
    }
    if dims(&cos) != [b, n, 1, d] || dims(&sin) != [b, n, 1, d] {
        return None;
    }
    if bias.as_ref().is_some_and(|t| dims(t) != [in_width]) {
        return None;
    }
    let (keys, values, width, start) = match into {
        Some((kc, vc, start)) => {
            let [cb, ch, width, cd] = <[usize; 4]>::try_from(dims(kc)).ok()?;
            let fits = [cb, ch, cd] == [b, kvh, d] && start + n <= width && dims(vc) == dims(kc);
            // Written in place: only contiguous caches nothing else holds.
            let writable = |c: &CubeTensor<R>| c.is_contiguous() && c.can_mut();
            if !fits || !writable(kc) || !writable(vc) {
                return None;
            }
            (kc.clone(), vc.clone(), width, start)
        }
        None => (
            empty_like(&y, &[b, kvh, n, d]),
            empty_like(&y, &[b, kvh, n, d]),
            n,
            0,
        ),
    };
    let queries = empty_like(&y, &[b, h, n, d]);
    let bias = bias.map(into_contiguous);
    let y = into_contiguous(y);
    let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
    let (count, cube_dim) = elementwise_grid(&y, b * n * in_width);
    heads_kernel::launch::<R>(
        &y.client,
        count,
        cube_dim,
        y.clone().into_tensor_arg(),
        bias.clone().unwrap_or_else(|| y.clone()).into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        queries.clone().into_tensor_arg(),
        keys.clone().into_tensor_arg(),
        values.clone().into_tensor_arg(),
        n,
        h,
        kvh,
        d,
        width,
        start,
        // Without a bias the kernel never reads that argument (a comptime branch).
        bias.is_some(),
        y.dtype.into(),
    );
    Some((queries, keys, values))
}

/// [`qkv`] with the keys and values written into the KV caches (`[batch, kv_heads, width, dim]`
/// each, plain backend) at positions `start..start + seq`, in place, instead of new tensors and
/// copies into the caches: returns the queries, or `None` (the caches left as they were) unless
/// both caches are contiguous, held by nothing else and fit.
pub(crate) fn qkv_into<B: Backend>(
    y: &Tensor<B, 3>,
    heads: Heads,
    bias: Option<&Tensor<B, 1>>,
    tables: Tables<'_, B>,
    caches: (&mut Tensor<B, 4>, &mut Tensor<B, 4>),
    start: usize,
) -> Option<Tensor<B, 4>> {
    struct Op<'a, B: Backend> {
        y: &'a Tensor<B, 3>,
        heads: Heads,
        bias: Option<&'a Tensor<B, 1>>,
        tables: Tables<'a, B>,
        /// The model's references to the caches, dropped before the launch (so that the
        /// kernel's are the only ones) and given back when the kernel declines.
        caches: RefCell<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        start: usize,
    }
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = QueriesKeysValues<B>;
        fn run<R: Runtime>(&self) -> Option<Self::Out> {
            let y = cube_of::<B, R, 3>(self.y)?;
            let (bias, tables) = rope_extras::<B, R>(self.bias, self.tables)?;
            let (kc, vc) = {
                let held = self.caches.borrow();
                let (k, v) = held.as_ref()?;
                (cube_of::<B, R, 4>(k)?, cube_of::<B, R, 4>(v)?)
            };
            drop(self.caches.borrow_mut().take());
            match launch_heads(y, self.heads, bias, tables, Some((&kc, &vc, self.start))) {
                Some(written) => qkv_from(written),
                None => {
                    *self.caches.borrow_mut() =
                        Some((tensor_from::<B, _, 4>(kc)?, tensor_from::<B, _, 4>(vc)?));
                    None
                }
            }
        }
    }
    let (k_cache, v_cache) = caches;
    let device = k_cache.device();
    let empty = || Tensor::empty([0, 0, 0, 0], &device);
    let held = (
        std::mem::replace(k_cache, empty()),
        std::mem::replace(v_cache, empty()),
    );
    let op = Op {
        y,
        heads,
        bias,
        tables,
        caches: RefCell::new(Some(held)),
        start,
    };
    let written = dispatch(y.shape().num_elements(), &op);
    match (written, op.caches.into_inner()) {
        (Some((q, k, v)), _) => {
            *k_cache = k;
            *v_cache = v;
            Some(q)
        }
        (None, Some((k, v))) => {
            *k_cache = k;
            *v_cache = v;
            None
        }
        // `run` gives the caches back whenever it declines: not reached.
        (None, None) => None,
    }
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
        fn run<R: Runtime>(&self) -> Option<Self::Out> {
            let Some(s) = cube_of::<B, R, 4>(self.0) else {
                return autodiff::masked_softmax::<B, R>(self.0, self.1, self.2);
            };
            let m = cube_of::<B, R, 4>(self.1)?;
            tensor_from::<B, _, 4>(launch_masked_softmax(s, m, self.2)?)
        }
    }
    dispatch(scores.shape().num_elements(), &Op(scores, mask, scale))
}

/// [`masked_softmax`] on CubeCL tensors; `None` unless the formats and shapes fit.
fn launch_masked_softmax<R: CubeRuntime>(
    scores: CubeTensor<R>,
    mask: CubeTensor<R>,
    scale: f64,
) -> Option<CubeTensor<R>> {
    let [b, h, r, w] = <[usize; 4]>::try_from(dims(&scores)).ok()?;
    if mask.dtype != DType::F32 || dims(&mask) != [b, 1, r, w] {
        return None;
    }
    // The mask is read through its strides (often a broadcast view): not copied.
    let s = into_contiguous(scores);
    let out = empty_like(&s, &[b, h, r, w]);
    let rows = b * h * r;
    masked_softmax_kernel::launch::<R>(
        &s.client,
        row_grid(rows),
        CubeDim::new_1d(ROW_THREADS as u32),
        s.clone().into_tensor_arg(),
        mask.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows,
        h,
        scale as f32,
        ROW_THREADS,
        s.dtype.into(),
    );
    Some(out)
}

/// `Tensor::cat(parts, 0)` of 1-D tensors in one format on the plain backend: one launch per
/// [`CONCAT_PARTS`] parts, where burn's `cat` launches one copy per part (the optimizer
/// concatenates each step's ~290 gradients of a Qwen2.5-0.5B-shaped model into flat groups).
pub fn concat<B: Backend>(parts: &[Tensor<B, 1>]) -> Option<Tensor<B, 1>> {
    struct Op<'a, B: Backend>(&'a [Tensor<B, 1>]);
    impl<B: Backend> CubeOp for Op<'_, B> {
        type Out = Tensor<B, 1>;
        fn run<R: Runtime>(&self) -> Option<Self::Out> {
            let parts: Vec<CubeTensor<R>> = self
                .0
                .iter()
                .map(cube_of::<B, R, 1>)
                .collect::<Option<_>>()?;
            let first = parts.first()?;
            // One format and one device (else burn's `cat` says what is wrong).
            if parts
                .iter()
                .any(|p| p.dtype != first.dtype || p.device != first.device)
            {
                return None;
            }
            let total = parts.iter().map(|p| dims(p)[0]).sum::<usize>();
            let out = empty_like(first, &[total]);
            let mut start = 0;
            for chunk in parts.chunks(CONCAT_PARTS) {
                let length = chunk.iter().map(|p| dims(p)[0]).sum::<usize>();
                if length == 0 {
                    continue;
                }
                let args: SequenceArg<R, _> = chunk
                    .iter()
                    .map(|p| into_contiguous(p.clone()).into_tensor_arg())
                    .collect();
                let (count, cube_dim) = elementwise_grid(&out, length);
                concat_kernel::launch::<R>(
                    &out.client,
                    count,
                    cube_dim,
                    args,
                    out.clone().into_tensor_arg(),
                    start,
                    length,
                    out.dtype.into(),
                );
                launched();
                start += length;
            }
            tensor_from::<B, _, 1>(out)
        }
    }
    if !enabled() || parts.len() < 2 {
        return None;
    }
    on_runtime(&Op(parts))
}
