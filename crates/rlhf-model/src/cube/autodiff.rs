//! The fused kernels inside burn's autodiff graph (training on a GPU): each forward kernel is
//! recorded as one operation of the graph, and its backward pass is a kernel of ours too
//! (`kernels.rs`) where burn would derive the backward of every composite operation (RMSNorm's
//! backward alone is over a dozen launches). Used when the tensors are `Autodiff` over the plain
//! CubeCL backend without burn's checkpointing strategies (the model checkpoints by itself,
//! `crate::checkpoint`); constants (the mask, RoPE's tables) must not be tracked, or the
//! composite operations run.

use std::marker::PhantomData;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, Tensor};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeDim;

use super::kernels::{
    masked_softmax_backward_kernel, rms_norm_backward_kernel, rope_backward_kernel,
    silu_mul_backward_kernel,
};
use super::{
    Heads, Piece, QueriesKeysValues, ROW_THREADS, Runtime, Tables, dims, elementwise_grid,
    empty_like, launch_heads, launch_masked_softmax, launch_rms_norm, launch_silu_mul, launched,
    optional, primitive_of, row_grid, tensor_from,
};

/// A float tensor of the autodiff graph over the plain backend on `R`.
type Tracked<R> = FloatTensor<Autodiff<<R as Runtime>::Plain>>;

fn tracked<B: Backend, R: Runtime, const D: usize>(t: &Tensor<B, D>) -> Option<Tracked<R>> {
    primitive_of::<B, Tracked<R>, D>(t)
}

/// Whether `t` is a constant of an autodiff graph the kernels serve.
pub(super) fn untracked<B: Backend, R: Runtime, const D: usize>(t: &Tensor<B, D>) -> bool {
    constant::<B, R, D>(t).is_some()
}

/// `t` when no gradient flows to it (a constant of the graph).
fn constant<B: Backend, R: Runtime, const D: usize>(t: &Tensor<B, D>) -> Option<Tracked<R>> {
    tracked::<B, R, D>(t).filter(|t| !t.is_tracked())
}

/// Records `out`, computed from `parents` by a kernel, as one operation of the graph whose
/// backward pass is `op` with `state`.
fn record<B: Backend, R: Runtime, O: Backward<R::Plain, N>, const N: usize, const D: usize>(
    op: O,
    parents: [&Tracked<R>; N],
    state: O::State,
    out: CubeTensor<R>,
) -> Option<Tensor<B, D>> {
    let out = record_node(op, parents, state, out);
    tensor_from::<B, Tracked<R>, D>(out)
}

/// [`record`], returning the graph's tensor (to be a parent of another recorded operation).
fn record_node<R: Runtime, O: Backward<R::Plain, N>, const N: usize>(
    op: O,
    parents: [&Tracked<R>; N],
    state: O::State,
    out: CubeTensor<R>,
) -> Tracked<R> {
    let nodes = parents.map(|p| p.node.clone());
    match op
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// `t` (`[rows · width]` elements) summed over its rows: a bias's or a norm weight's gradient
/// (burn's reduction kernel).
fn sum_rows<R: Runtime>(t: CubeTensor<R>, width: usize) -> CubeTensor<R> {
    let rows = dims(&t).iter().product::<usize>() / width.max(1);
    let t = R::Plain::float_reshape(t, Shape::new([rows, width]));
    R::Plain::float_reshape(R::Plain::float_sum_dim(t, 0), Shape::new([width]))
}

/// The backward operations (no state of their own: what they need is in `Ops::state`).
macro_rules! backward_op {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        struct $name<R>(PhantomData<fn() -> R>);

        impl<R> $name<R> {
            fn new() -> Self {
                Self(PhantomData)
            }
        }

        impl<R> std::fmt::Debug for $name<R> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    )*};
}

backward_op! {
    /// A residual addition's (computed by the add-and-RMSNorm kernel): the sum's gradient is
    /// each term's.
    AddBackward;
    /// RMSNorm's: gradients of the input and of the weight.
    RmsNormBackward;
    /// SiLU(gate) · up's: the gradient of the gate's and the up projection's columns.
    SiluMulBackward;
    /// RoPE's (or the heads-first layout's alone): the gradient of the piece's columns of the
    /// merged projection.
    RopeBackward;
    /// The masked softmax's: the raw scores' gradient (the mask is a constant).
    SoftmaxBackward;
}

/// RMSNorm of `x`, or of `x + delta` (one launch, recorded as two operations of the graph: the
/// addition, i.e. the residual stream, also returned, and the norm of its result).
#[allow(clippy::type_complexity)]
pub(super) fn norm<B: Backend, R: Runtime>(
    x: &Tensor<B, 3>,
    delta: Option<&Tensor<B, 3>>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<(Option<Tensor<B, 3>>, Tensor<B, 3>)> {
    let (x, w) = (tracked::<B, R, 3>(x)?, tracked::<B, R, 1>(weight)?);
    let delta = optional(delta, tracked::<B, R, 3>)?;
    let (xc, wc) = (
        into_contiguous(x.primitive.clone()),
        into_contiguous(w.primitive.clone()),
    );
    let (sum, out) = launch_rms_norm(
        xc.clone(),
        delta.as_ref().map(|d| d.primitive.clone()),
        wc.clone(),
        eps,
    )?;
    // The norm's input: `x`, or the sum as an addition of the graph.
    let summed = match (&delta, &sum) {
        (Some(d), Some(sum)) => Some(record_node(
            AddBackward::<R>::new(),
            [&x, d],
            (),
            sum.clone(),
        )),
        (None, None) => None,
        // The kernel returns the sum exactly when it adds a residual.
        _ => return None,
    };
    let input = summed.as_ref().unwrap_or(&x);
    let state = (sum.unwrap_or(xc), wc, eps);
    let normed = record::<B, R, _, 2, 3>(RmsNormBackward::new(), [input, &w], state, out)?;
    Some((optional(summed, tensor_from::<B, _, 3>)?, normed))
}

impl<R: Runtime> Backward<R::Plain, 2> for AddBackward<R> {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<R::Plain>(&ops.node);
        let [x_node, d_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<R::Plain>(node.id, grad.clone());
        }
        if let Some(node) = d_node {
            grads.register::<R::Plain>(node.id, grad);
        }
    }
}

impl<R: Runtime> Backward<R::Plain, 2> for RmsNormBackward<R> {
    type State = (CubeTensor<R>, CubeTensor<R>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, w_node] = ops.parents;
        let dy = into_contiguous(grads.consume::<R::Plain>(&ops.node));
        let (x, w, eps) = ops.state;
        let shape = dims(&x);
        let width = dims(&w)[0];
        let rows = shape.iter().product::<usize>() / width.max(1);
        let dx = empty_like(&x, &shape);
        let terms = empty_like(&x, &[rows, width]);
        rms_norm_backward_kernel::launch::<R>(
            &x.client,
            row_grid(rows),
            CubeDim::new_1d(ROW_THREADS as u32),
            x.clone().into_tensor_arg(),
            w.into_tensor_arg(),
            dy.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            terms.clone().into_tensor_arg(),
            rows,
            eps as f32,
            ROW_THREADS,
            x.dtype.into(),
        );
        launched();
        if let Some(node) = w_node {
            grads.register::<R::Plain>(node.id, sum_rows(terms, width));
        }
        if let Some(node) = x_node {
            grads.register::<R::Plain>(node.id, dx);
        }
    }
}

pub(super) fn silu_mul<B: Backend, R: Runtime>(gate_up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let gu = tracked::<B, R, 3>(gate_up)?;
    let guc = into_contiguous(gu.primitive.clone());
    let out = launch_silu_mul(guc.clone())?;
    record::<B, R, _, 1, 3>(SiluMulBackward::new(), [&gu], guc, out)
}

impl<R: Runtime> Backward<R::Plain, 1> for SiluMulBackward<R> {
    /// The gate's and the up projection's columns, side by side.
    type State = CubeTensor<R>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = into_contiguous(grads.consume::<R::Plain>(&ops.node));
        let Some(node) = node else {
            return;
        };
        let gate_up = ops.state;
        let d_gate_up = empty_like(&gate_up, &dims(&gate_up));
        let width = dims(&dy).last().copied().unwrap_or(0);
        let (count, cube_dim) = elementwise_grid(&dy, dims(&dy).iter().product());
        silu_mul_backward_kernel::launch::<R>(
            &dy.client,
            count,
            cube_dim,
            gate_up.into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            d_gate_up.clone().into_tensor_arg(),
            width,
            dy.dtype.into(),
        );
        launched();
        grads.register::<R::Plain>(node.id, d_gate_up);
    }
}

/// Queries, keys and values from a merged projection's output `y` (one launch, three operations
/// of the graph; a bias, if any, must be a constant).
pub(super) fn qkv<B: Backend, R: Runtime>(
    y: &Tensor<B, 3>,
    heads: Heads,
    bias: Option<&Tensor<B, 1>>,
    (cos, sin): Tables<'_, B>,
) -> Option<QueriesKeysValues<B>> {
    let y = tracked::<B, R, 3>(y)?;
    let tables = (
        into_contiguous(constant::<B, R, 4>(cos)?.primitive),
        into_contiguous(constant::<B, R, 4>(sin)?.primitive),
    );
    let bias = optional(bias, |b| Some(constant::<B, R, 1>(b)?.primitive))?;
    let (q, k, v) = launch_heads(y.primitive.clone(), heads, bias, tables.clone(), None)?;
    let shape = dims(&y.primitive);
    let (h, kvh, d) = heads;
    // Each piece's backward writes its columns of the product's gradient (below).
    let piece = |start: usize, n: usize, tables: Option<_>, out| {
        let state = (shape.clone(), (start, n, d), tables);
        record::<B, R, _, 1, 4>(RopeBackward::new(), [&y], state, out)
    };
    Some((
        piece(0, h, Some(tables.clone()), q)?,
        piece(h * d, kvh, Some(tables), k)?,
        piece((h + kvh) * d, kvh, None, v)?,
    ))
}

impl<R: Runtime> Backward<R::Plain, 1> for RopeBackward<R> {
    /// The merged output's dimensions, the piece and the tables (none: no rotation).
    type State = (Vec<usize>, Piece, Option<(CubeTensor<R>, CubeTensor<R>)>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = into_contiguous(grads.consume::<R::Plain>(&ops.node));
        let Some(node) = node else {
            return;
        };
        let (shape, (start, heads, dim), tables) = ops.state;
        let (seq, in_width) = (shape[1], shape[2]);
        // The pieces of one projection write their columns of one gradient: the first creates
        // it (zeros), the others take it back from the container and write into it in place,
        // so that no piece pads its gradient to the whole width and no sum of them is needed.
        // Where it cannot be written in place, a new one is created and burn adds the two.
        // The container finds a gradient by its tensor's node alone.
        let mut key: Tracked<R> = Autodiff::<R::Plain>::from_inner(dy.clone());
        key.node = node.clone();
        key.rc = Arc::new(node.id);
        let (dx, other) = match grads.remove::<R::Plain>(&key) {
            Some(t)
                if t.can_mut() && t.is_contiguous() && dims(&t) == shape && t.dtype == dy.dtype =>
            {
                (t, None)
            }
            other => {
                let zeros = R::Plain::float_zeros(
                    Shape::from(shape.clone()),
                    &R::Plain::float_device(&dy),
                    dy.dtype.into(),
                );
                (zeros, other)
            }
        };
        let (count, cube_dim) = elementwise_grid(&dy, dims(&dy).iter().product());
        let rotate = tables.is_some();
        // Without tables the kernel never reads them (a comptime branch).
        let (cos, sin) = tables.unwrap_or_else(|| (dy.clone(), dy.clone()));
        rope_backward_kernel::launch::<R>(
            &dy.client,
            count,
            cube_dim,
            dy.clone().into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            seq,
            heads,
            dim,
            in_width,
            start,
            rotate,
            dy.dtype.into(),
        );
        launched();
        grads.register::<R::Plain>(node.id, dx);
        if let Some(other) = other {
            grads.register::<R::Plain>(node.id, other);
        }
    }
}

pub(super) fn masked_softmax<B: Backend, R: Runtime>(
    scores: &Tensor<B, 4>,
    mask: &Tensor<B, 4>,
    scale: f64,
) -> Option<Tensor<B, 4>> {
    let s = tracked::<B, R, 4>(scores)?;
    let mask = constant::<B, R, 4>(mask)?;
    let probs = launch_masked_softmax(s.primitive.clone(), mask.primitive, scale)?;
    record::<B, R, _, 1, 4>(SoftmaxBackward::new(), [&s], (probs.clone(), scale), probs)
}

impl<R: Runtime> Backward<R::Plain, 1> for SoftmaxBackward<R> {
    /// The probabilities and the scale.
    type State = (CubeTensor<R>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [s_node] = ops.parents;
        let dp = into_contiguous(grads.consume::<R::Plain>(&ops.node));
        let Some(node) = s_node else {
            return;
        };
        let (probs, scale) = ops.state;
        let shape = dims(&probs);
        let width = shape[3];
        let rows = shape.iter().product::<usize>() / width.max(1);
        let ds = empty_like(&probs, &shape);
        masked_softmax_backward_kernel::launch::<R>(
            &probs.client,
            row_grid(rows),
            CubeDim::new_1d(ROW_THREADS as u32),
            probs.clone().into_tensor_arg(),
            dp.into_tensor_arg(),
            ds.clone().into_tensor_arg(),
            rows,
            width,
            scale as f32,
            ROW_THREADS,
            probs.dtype.into(),
        );
        launched();
        grads.register::<R::Plain>(node.id, ds);
    }
}
