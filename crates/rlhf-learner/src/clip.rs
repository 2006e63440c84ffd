//! Global-norm gradient clipping (burn 0.21 only clips per parameter): the norm over all
//! gradients together, and a rescale of every gradient when it exceeds the limit.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    ids: Vec<(burn::module::ParamId, usize)>,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
            self.ids.push((param.id, D));
        }
    }
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Global-norm clipping: returns the L2 norm of all of `module`'s gradients and, when it is
/// finite and above `max_norm` (> 0), rescales them to `max_norm`. A non-finite norm leaves
/// the gradients untouched: the caller must skip the step.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm(module, grads);
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        scale_grads(module, grads, max_norm / norm);
    }
    norm
}

/// The global L2 norm of all gradients of `module`.
fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm::<B> {
        grads,
        ids: vec![],
        total: None,
    };
    module.visit(&mut v);
    match v.total {
        Some(t) => f64::from(t.into_scalar_f32()).sqrt(),
        None => 0.0,
    }
}

/// Rescales every gradient by `factor`.
fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    let mut v = Scale::<B> {
        grads,
        factor,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
}

/// Scalar read-back helper.
trait ScalarF32 {
    fn into_scalar_f32(self) -> f32;
}

impl<B: burn::tensor::backend::Backend> ScalarF32 for Tensor<B, 1> {
    fn into_scalar_f32(self) -> f32 {
        self.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(f32::NAN)
    }
}
