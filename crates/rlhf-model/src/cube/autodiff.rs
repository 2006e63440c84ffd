//! The fused kernels inside burn's autodiff graph (training on a GPU): each forward kernel is
//! recorded as one operation of the graph, and its backward pass is a kernel of ours too
//! (`kernels.rs`) where burn would derive the backward of every composite operation (RMSNorm's
//! backward alone is over a dozen launches). Used when the tensors are `Autodiff` over the plain
//! CubeCL backend without burn's checkpointing strategies (the model checkpoints by itself,
//! `crate::checkpoint`); constants (the mask, RoPE's tables) must not be tracked, or the
//! composite operations run.

use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
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
    ROW_THREADS, Runtime, Tables, dims, elementwise_grid, empty_like, launch_masked_softmax,
    launch_rms_norm, launch_rope, launch_silu_mul, launched, optional, primitive_of, row_grid,
    tensor_from,
};

/// A float tensor of the autodiff graph over the plain backend on `R`.
type Tracked<R> = FloatTensor<Autodiff<<R as Runtime>::Plain>>;

fn tracked<B: Backend, R: Runtime, const D: usize>(t: &Tensor<B, D>) -> Option<Tracked<R>> {
    primitive_of::<B, Tracked<R>, D>(t)
}

/// Whether `t` is in an autodiff graph the kernels serve.
pub(super) fn serves<B: Backend, R: Runtime, const D: usize>(t: &Tensor<B, D>) -> bool {
    tracked::<B, R, D>(t).is_some()
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
    /// SiLU(gate) · up's: gradients of both.
    SiluMulBackward;
    /// RoPE's (or the heads-first layout's alone): the input's gradient, and the bias's (its sum
    /// over positions) when there is one.
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

pub(super) fn silu_mul<B: Backend, R: Runtime>(
    gate: &Tensor<B, 3>,
    up: &Tensor<B, 3>,
) -> Option<Tensor<B, 3>> {
    let (g, u) = (tracked::<B, R, 3>(gate)?, tracked::<B, R, 3>(up)?);
    let (gc, uc) = (
        into_contiguous(g.primitive.clone()),
        into_contiguous(u.primitive.clone()),
    );
    let out = launch_silu_mul(gc.clone(), uc.clone())?;
    record::<B, R, _, 2, 3>(SiluMulBackward::new(), [&g, &u], (gc, uc), out)
}

impl<R: Runtime> Backward<R::Plain, 2> for SiluMulBackward<R> {
    type State = (CubeTensor<R>, CubeTensor<R>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [g_node, u_node] = ops.parents;
        let dy = into_contiguous(grads.consume::<R::Plain>(&ops.node));
        let (g, u) = ops.state;
        let shape = dims(&g);
        let (dg, du) = (empty_like(&g, &shape), empty_like(&g, &shape));
        let (count, cube_dim) = elementwise_grid(&g, shape.iter().product());
        silu_mul_backward_kernel::launch::<R>(
            &g.client,
            count,
            cube_dim,
            g.clone().into_tensor_arg(),
            u.into_tensor_arg(),
            dy.into_tensor_arg(),
            dg.clone().into_tensor_arg(),
            du.clone().into_tensor_arg(),
            g.dtype.into(),
        );
        launched();
        if let Some(node) = g_node {
            grads.register::<R::Plain>(node.id, dg);
        }
        if let Some(node) = u_node {
            grads.register::<R::Plain>(node.id, du);
        }
    }
}

pub(super) fn rope<B: Backend, R: Runtime>(
    x: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    tables: Option<Tables<'_, B>>,
) -> Option<Tensor<B, 4>> {
    let x = tracked::<B, R, 4>(x)?;
    let tables = optional(tables, |(c, s)| {
        Some((
            into_contiguous(constant::<B, R, 4>(c)?.primitive),
            into_contiguous(constant::<B, R, 4>(s)?.primitive),
        ))
    })?;
    let bias = optional(bias, tracked::<B, R, 1>)?;
    let out = launch_rope(
        x.primitive.clone(),
        bias.as_ref().map(|b| b.primitive.clone()),
        tables.clone(),
        None,
    )?;
    let state = (dims(&x.primitive), tables);
    match &bias {
        Some(b) => record::<B, R, _, 2, 4>(RopeBackward::new(), [&x, b], state, out),
        None => record::<B, R, _, 1, 4>(RopeBackward::new(), [&x], state, out),
    }
}

impl<R: Runtime, const N: usize> Backward<R::Plain, N> for RopeBackward<R> {
    /// The input's dimensions and the tables (none: no rotation).
    type State = (Vec<usize>, Option<(CubeTensor<R>, CubeTensor<R>)>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut parents = ops.parents.into_iter();
        let (x_node, bias_node) = (parents.next().flatten(), parents.next().flatten());
        let dy = into_contiguous(grads.consume::<R::Plain>(&ops.node));
        let (shape, tables) = ops.state;
        let (seq, heads, dim) = (shape[1], shape[2], shape[3]);
        let dx = empty_like(&dy, &shape);
        let (count, cube_dim) = elementwise_grid(&dy, shape.iter().product());
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
            rotate,
            dy.dtype.into(),
        );
        launched();
        if let Some(node) = bias_node {
            grads.register::<R::Plain>(node.id, sum_rows(dx.clone(), heads * dim));
        }
        if let Some(node) = x_node {
            grads.register::<R::Plain>(node.id, dx);
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
