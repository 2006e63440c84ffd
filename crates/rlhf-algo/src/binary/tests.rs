//! Tests of KTO and BCO. Expected numbers come from `scripts/algo_reference.py` (case named on
//! each test).

use burn::tensor::Tensor;

use super::*;
use crate::testutil::{B, TestResult, all_close, check_gradient, close, grad, t1};

const POL: [f32; 6] = [-10.0, -12.0, -8.0, -15.0, -9.0, -11.0];
const REF: [f32; 6] = [-10.5, -11.0, -8.2, -14.0, -9.5, -12.0];
const DES: [bool; 6] = [true, false, true, false, true, false];
const KLP: [f32; 6] = [-11.0, -13.0, -9.0, -14.0, -10.0, -12.0];
const KLR: [f32; 6] = [-11.4, -12.5, -9.3, -14.2, -10.1, -12.6];
const UDM: [f32; 6] = [1.0, 0.5, 1.0, 2.0, 1.0, 1.5];
const TOL: f64 = 2e-5;

fn with_kl(policy: Tensor<B, 1>) -> BinaryBatch<B> {
    BinaryBatch::new(policy, t1(&REF), DES.to_vec()).with_kl_samples(t1(&KLP), t1(&KLR))
}

fn plain(policy: Tensor<B, 1>) -> BinaryBatch<B> {
    BinaryBatch::new(policy, t1(&REF), DES.to_vec())
}

// scripts/algo_reference.py case kto_basic
#[test]
fn kto_matches_reference() -> TestResult {
    let x = t1(&POL).require_grad();
    let out = kto_loss(&with_kl(x.clone()), &KtoConfig::default())?;
    close("loss", out.stats.loss, 0.490843155, TOL)?;
    close("kl", out.stats.reference_point, 0.183333333, TOL)?;
    close("reward_desirable", out.stats.reward_desirable, 0.04, TOL)?;
    close(
        "reward_undesirable",
        out.stats.reward_undesirable,
        -0.0333333333,
        TOL,
    )?;
    anyhow::ensure!(out.stats.desirable == 3 && out.stats.undesirable == 3);
    let want = [
        -0.00416562228,
        0.00415211441,
        -0.00416666377,
        0.00415211441,
        -0.00416562228,
        0.00415972704,
    ];
    all_close("grad", &grad(&x, &out.loss)?, &want, TOL)?;
    check_gradient(&POL, [6], 1e-2, 2e-3, |x| {
        Ok(kto_loss(&with_kl(x), &KtoConfig::default())?.loss)
    })
}

// scripts/algo_reference.py case kto_self_kl
#[test]
fn kto_batch_kl_and_weights_match_reference() -> TestResult {
    let cfg = KtoConfig {
        beta: 0.1,
        desirable_weight: 1.33,
        undesirable_weight: 1.0,
    };
    let x = t1(&POL).require_grad();
    let out = kto_loss(&plain(x.clone()), &cfg)?;
    close("loss", out.stats.loss, 0.571826314, TOL)?;
    close("kl", out.stats.reference_point, 0.0333333333, TOL)?;
    let want = [
        -0.00553865063,
        0.00415556375,
        -0.00554128185,
        0.00415556375,
        -0.00553865063,
        0.00415694801,
    ];
    // z0 is detached: the gradient ignores its dependence on the batch.
    all_close("grad", &grad(&x, &out.loss)?, &want, TOL)
}

#[test]
fn kto_reference_point_is_clamped_at_zero() -> TestResult {
    // KL samples with a negative mean log-ratio: z0 = 0, not negative.
    let b = plain(t1(&POL)).with_kl_samples(t1(&[-12.0, -13.0]), t1(&[-11.0, -12.5]));
    let out = kto_loss(&b, &KtoConfig::default())?;
    close("z0", out.stats.reference_point, 0.0, 0.0)?;
    // All-desirable batches work and ignore λ_U.
    let all = BinaryBatch::new(t1(&POL), t1(&REF), vec![true; 6]);
    let a = kto_loss(
        &all,
        &KtoConfig {
            undesirable_weight: 7.0,
            ..KtoConfig::default()
        },
    )?;
    let b = kto_loss(&all, &KtoConfig::default())?;
    close(
        "lambda_U unused",
        a.stats.loss,
        f64::from(b.stats.loss),
        0.0,
    )
}

// scripts/algo_reference.py case bco_basic
#[test]
fn bco_matches_reference() -> TestResult {
    let mut running = RunningMean::default();
    let x = t1(&POL).require_grad();
    let out = bco_loss(&plain(x.clone()), &BcoConfig::default(), &mut running)?;
    close("loss", out.stats.loss, 0.675549676, TOL)?;
    close("delta", out.stats.reference_point, 0.00333333333, TOL)?;
    anyhow::ensure!(running.count == 6);
    let want = [
        -0.00813892417,
        0.00790316048,
        -0.0082638905,
        0.00790316048,
        -0.00813892417,
        0.00873579776,
    ];
    all_close("grad", &grad(&x, &out.loss)?, &want, TOL)?;
    check_gradient(&POL, [6], 1e-2, 2e-3, |x| {
        let mut fresh = RunningMean::default();
        Ok(bco_loss(&plain(x), &BcoConfig::default(), &mut fresh)?.loss)
    })
}

// scripts/algo_reference.py case bco_prior
#[test]
fn bco_running_mean_and_weights_match_reference() -> TestResult {
    let mut running = RunningMean {
        count: 10,
        mean: 0.05,
    };
    let x = t1(&POL).require_grad();
    let b = plain(x.clone()).with_weights(t1(&UDM));
    let out = bco_loss(&b, &BcoConfig::default(), &mut running)?;
    close("loss", out.stats.loss, 0.788702135, TOL)?;
    close("delta", out.stats.reference_point, 0.0325, TOL)?;
    close("running mean", running.mean as f32, 0.0325, 1e-7)?;
    let want = [
        -0.00826041853,
        0.00389102815,
        -0.00838541599,
        0.0155641126,
        -0.00826041853,
        0.0129217149,
    ];
    all_close("grad", &grad(&x, &out.loss)?, &want, TOL)
}

#[test]
fn running_mean_is_exact() -> TestResult {
    let mut m = RunningMean::default();
    m.update(&[1.0, 2.0])?;
    m.update(&[])?;
    m.update(&[6.0])?;
    close("mean", m.mean as f32, 3.0, 1e-12)?;
    anyhow::ensure!(m.count == 3);
    anyhow::ensure!(m.update(&[f32::NAN]).is_err());
    anyhow::ensure!(m.count == 3, "a rejected update leaves the state alone");
    Ok(())
}

#[test]
fn non_finite_and_bad_inputs_are_errors() -> TestResult {
    let mut running = RunningMean::default();
    let nan = plain(t1(&[f32::NAN, -1.0, -1.0, -1.0, -1.0, -1.0]));
    anyhow::ensure!(matches!(
        kto_loss(&nan, &KtoConfig::default()),
        Err(AlgoError::NonFinite {
            input: "policy",
            index: 0,
            ..
        })
    ));
    anyhow::ensure!(bco_loss(&nan, &BcoConfig::default(), &mut running).is_err());
    anyhow::ensure!(
        running.count == 0,
        "a failed BCO step must not move the running mean"
    );
    let bad_kl = plain(t1(&POL)).with_kl_samples(t1(&[f32::INFINITY]), t1(&[0.0]));
    anyhow::ensure!(matches!(
        kto_loss(&bad_kl, &KtoConfig::default()),
        Err(AlgoError::NonFinite {
            input: "kl_policy",
            ..
        })
    ));
    let short_labels = BinaryBatch::new(t1(&POL), t1(&REF), vec![true; 5]);
    anyhow::ensure!(matches!(
        kto_loss(&short_labels, &KtoConfig::default()),
        Err(AlgoError::Shape {
            input: "desirable",
            ..
        })
    ));
    let neg_w = plain(t1(&POL)).with_weights(t1(&[1.0, -1.0, 1.0, 1.0, 1.0, 1.0]));
    anyhow::ensure!(matches!(
        bco_loss(&neg_w, &BcoConfig::default(), &mut running),
        Err(AlgoError::InvalidInput {
            input: "weights",
            ..
        })
    ));
    match kto_loss(
        &plain(t1(&POL)),
        &KtoConfig {
            desirable_weight: -1.0,
            ..KtoConfig::default()
        },
    ) {
        Err(AlgoError::InvalidConfig { field, .. }) if field == "kto.desirable_weight" => Ok(()),
        other => anyhow::bail!("expected InvalidConfig(kto.desirable_weight), got {other:?}"),
    }
}
