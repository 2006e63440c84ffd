//! Test helpers: the autodiff CPU backend, tensor builders, tolerance checks and a central
//! finite-difference gradient check (autodiff `backward` against `(f(x+h) − f(x−h)) / 2h`).

use anyhow::{Context, anyhow, ensure};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};

/// The backend every test runs on.
pub type B = Autodiff<NdArray<f32>>;
/// Tests return `anyhow::Result` so they can use `?` instead of `unwrap`.
pub type TestResult = anyhow::Result<()>;

/// The CPU device.
pub fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// A `[n]` tensor.
pub fn t1(values: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &dev())
}

/// A tensor of any rank from flat values.
pub fn tn<const D: usize>(values: &[f32], dims: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &dev())
}

/// Host copy of a tensor.
pub fn host<const D: usize>(t: &Tensor<B, D>) -> anyhow::Result<Vec<f32>> {
    Ok(crate::ops::to_host(t)?)
}

/// `|got − want| ≤ tol·max(1, |want|)`.
pub fn close(what: &str, got: f32, want: f64, tol: f64) -> TestResult {
    let err = (f64::from(got) - want).abs();
    ensure!(
        err <= tol * want.abs().max(1.0),
        "{what}: got {got}, want {want} (|err| = {err:e}, tol {tol:e})"
    );
    Ok(())
}

/// Element-wise [`close`].
pub fn all_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> TestResult {
    ensure!(
        got.len() == want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{what}[{i}]"), *g, *w, tol)?;
    }
    Ok(())
}

/// Gradient of `loss` with respect to `x` (which must have been marked `require_grad`).
pub fn grad<const D: usize>(x: &Tensor<B, D>, loss: &Tensor<B, 1>) -> anyhow::Result<Vec<f32>> {
    let grads = loss.backward();
    let g = x
        .grad(&grads)
        .ok_or_else(|| anyhow!("no gradient reached the input"))?;
    Ok(crate::ops::to_host(&g)?)
}

/// Evaluates `f` at `x0` with autodiff and compares its gradient with central differences of
/// step `h`, element by element: `|g − fd| ≤ tol·max(1, |fd|)`.
pub fn check_gradient<const D: usize>(
    x0: &[f32],
    dims: [usize; D],
    h: f32,
    tol: f64,
    f: impl Fn(Tensor<B, D>) -> crate::Result<Tensor<B, 1>>,
) -> TestResult {
    let x = tn(x0, dims).require_grad();
    let loss = f(x.clone()).context("loss at x0")?;
    let g = grad(&x, &loss)?;
    let value = |v: &[f32]| -> anyhow::Result<f64> {
        let l = f(tn(v, dims)).context("loss at a perturbed point")?;
        Ok(f64::from(host(&l)?[0]))
    };
    for i in 0..x0.len() {
        let mut plus = x0.to_vec();
        let mut minus = x0.to_vec();
        plus[i] += h;
        minus[i] -= h;
        let fd = (value(&plus)? - value(&minus)?) / (2.0 * f64::from(h));
        close(
            &format!("d loss / d x[{i}] (autodiff vs central difference)"),
            g[i],
            fd,
            tol,
        )?;
    }
    Ok(())
}
