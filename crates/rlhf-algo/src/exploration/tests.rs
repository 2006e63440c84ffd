//! Tests of VPO, SELM and APO. Expected numbers come from `scripts/algo_reference.py` (case
//! named on each test).

use burn::tensor::Tensor;

use super::*;
use crate::testutil::{B, TestResult, all_close, check_gradient, close, host, t1, tn};

const PC: [f32; 4] = [-12.3, -8.1, -20.5, -5.0];
const PR: [f32; 4] = [-13.0, -7.4, -22.0, -9.5];
const RC: [f32; 4] = [-12.0, -8.5, -21.0, -6.0];
const RR: [f32; 4] = [-12.5, -7.0, -21.5, -8.0];
const CAL_P: [f32; 4] = [-10.0, -15.0, -7.0, -9.0];
const CAL_R: [f32; 4] = [-10.5, -14.0, -7.5, -8.0];
const TOL: f64 = 2e-5;
const DPO_GRAD: [f64; 4] = [-0.0123750042, -0.0120002665, -0.0118755203, -0.0109455875];

fn batch(cal: Tensor<B, 1>) -> PairBatch<B> {
    PairBatch::new(t1(&PC), t1(&PR))
        .with_reference(t1(&RC), t1(&RR))
        .with_calibration(cal, t1(&CAL_R))
}

fn check_case(
    loss: impl Fn(&PairBatch<B>) -> Result<LossOutput<B, PairStats>>,
    want_loss: f64,
    want_reg: f64,
    want_cal_grad: f64,
) -> TestResult {
    let pc = t1(&PC).require_grad();
    let cal = t1(&CAL_P).require_grad();
    let mut b = batch(cal.clone());
    b.policy_chosen = pc.clone();
    let out = loss(&b)?;
    close("loss", out.stats.loss, want_loss, TOL)?;
    close(
        "regulariser",
        out.stats.regulariser.unwrap_or(f32::NAN),
        want_reg,
        TOL,
    )?;
    let grads = out.loss.backward();
    let g = |x: &Tensor<B, 1>| -> anyhow::Result<Vec<f32>> {
        Ok(crate::ops::to_host(
            &x.grad(&grads).ok_or_else(|| anyhow::anyhow!("no grad"))?,
        )?)
    };
    all_close("grad_chosen", &g(&pc)?, &DPO_GRAD, TOL)?;
    all_close("grad_calibration", &g(&cal)?, &[want_cal_grad; 4], TOL)?;
    check_gradient(&CAL_P, [4], 1e-2, 2e-3, |x| Ok(loss(&batch(x))?.loss))
}

// scripts/algo_reference.py case vpo_online
#[test]
fn vpo_online_matches_reference() -> TestResult {
    check_case(
        |b| vpo_loss(b, &VpoConfig::default()),
        0.636870057,
        -0.0025,
        0.0025,
    )
}

// scripts/algo_reference.py case vpo_offline
#[test]
fn vpo_offline_matches_reference() -> TestResult {
    let cfg = VpoConfig {
        mode: VpoMode::Offline,
        ..VpoConfig::default()
    };
    check_case(|b| vpo_loss(b, &cfg), 0.641870057, 0.0025, -0.0025)
}

// scripts/algo_reference.py case selm_basic
#[test]
fn selm_matches_reference() -> TestResult {
    check_case(
        |b| selm_loss(b, &SelmConfig::default()),
        0.639345057,
        -2.5e-5,
        2.5e-5,
    )
}

#[test]
fn selm_is_online_vpo_and_alpha_zero_is_dpo() -> TestResult {
    let b = batch(t1(&CAL_P));
    let selm = selm_loss(
        &b,
        &SelmConfig {
            beta: 0.1,
            alpha: 0.3,
        },
    )?
    .stats
    .loss;
    let vpo = vpo_loss(
        &b,
        &VpoConfig {
            beta: 0.1,
            alpha: 0.3,
            mode: VpoMode::Online,
        },
    )?
    .stats
    .loss;
    close("selm = vpo online", selm, f64::from(vpo), 1e-7)?;
    let zero = vpo_loss(
        &b,
        &VpoConfig {
            beta: 0.1,
            alpha: 0.0,
            mode: VpoMode::Offline,
        },
    )?
    .stats
    .loss;
    close("vpo(alpha=0) = dpo", zero, 0.639370057, TOL)
}

#[test]
fn vpo_without_calibration_uses_the_pair() -> TestResult {
    let b = PairBatch::new(t1(&PC), t1(&PR)).with_reference(t1(&RC), t1(&RR));
    let out = vpo_loss(&b, &VpoConfig::default())?;
    // mean over chosen and rejected log-ratios: (0.4 - 0.7) / 8 = ... computed on the host.
    let ratios: f64 = PC
        .iter()
        .zip(&RC)
        .chain(PR.iter().zip(&RR))
        .map(|(p, r)| f64::from(p - r))
        .sum();
    close(
        "regulariser",
        out.stats.regulariser.unwrap_or(f32::NAN),
        0.1 * 0.1 * ratios / 8.0,
        1e-6,
    )?;
    let nan = batch(t1(&[f32::NAN, 0.0, 0.0, 0.0]));
    anyhow::ensure!(matches!(
        vpo_loss(&nan, &VpoConfig::default()),
        Err(AlgoError::NonFinite {
            input: "calibration.policy",
            ..
        })
    ));
    Ok(())
}

// scripts/algo_reference.py case apo_extrapolate
#[test]
fn apo_extrapolation_matches_reference() -> TestResult {
    let cur = [0.5, -1.0, 2.0, 0.0];
    let prev = [0.4, -0.5, 2.5, 0.1];
    let want = [0.53, -1.15, 1.85, -0.03];
    all_close(
        "host",
        &nesterov_extrapolate(&cur, &prev, 0.3)?,
        &want,
        1e-6,
    )?;
    let tensors = nesterov_extrapolate_tensors(&[tn(&cur, [2, 2])], &[tn(&prev, [2, 2])], 0.3)?;
    all_close("tensor", &host(&tensors[0])?, &want, 1e-6)?;
    // alpha = 0 keeps the iterate (iterative DPO).
    all_close(
        "alpha 0",
        &nesterov_extrapolate(&cur, &prev, 0.0)?,
        &cur.map(f64::from),
        0.0,
    )?;
    anyhow::ensure!(nesterov_extrapolate(&cur, &prev[..3], 0.3).is_err());
    anyhow::ensure!(nesterov_extrapolate(&[f32::NAN], &[0.0], 0.3).is_err());
    anyhow::ensure!(nesterov_extrapolate(&cur, &prev, 1.5).is_err());
    Ok(())
}

#[test]
fn reference_update_parses() -> TestResult {
    let apo: ReferenceUpdate = serde_json::from_str(r#"{"name": "apo"}"#)?;
    anyhow::ensure!(
        apo == ReferenceUpdate::Apo {
            alpha: DEFAULT_APO_ALPHA
        }
    );
    let it: ReferenceUpdate = serde_json::from_str(r#"{"name": "iterate"}"#)?;
    anyhow::ensure!(it == ReferenceUpdate::Iterate);
    anyhow::ensure!(
        serde_json::from_str::<ReferenceUpdate>(r#"{"name": "apo", "alpa": 0.1}"#).is_err()
    );
    anyhow::ensure!(ReferenceUpdate::Apo { alpha: 1.0 }.validate().is_err());
    Ok(())
}
