//! Tests of the reward-model objectives. Expected numbers come from
//! `scripts/algo_reference.py` (case named on each test).

use super::*;
use crate::testutil::{B, TestResult, all_close, check_gradient, close, grad, t1, tn};

const RC: [f32; 4] = [1.2, 0.3, -0.5, 2.0];
const RR: [f32; 4] = [0.2, 0.8, -1.5, 1.9];
const MARGIN: [f32; 4] = [1.0, 0.0, 0.5, 0.33];
const TOL: f64 = 2e-5;

fn pairs(chosen: Tensor<B, 1>, margin: bool) -> RewardPairBatch<B> {
    RewardPairBatch {
        chosen,
        rejected: t1(&RR),
        margin: margin.then(|| t1(&MARGIN)),
    }
}

// scripts/algo_reference.py cases bradley_terry_margin and bradley_terry_plain
#[test]
fn bradley_terry_matches_reference() -> TestResult {
    let x = t1(&RC).require_grad();
    let out = bradley_terry_loss(&pairs(x.clone(), true), &BradleyTerryConfig::default())?;
    close("loss", out.stats.loss, 0.739011576, TOL)?;
    close("accuracy", out.stats.accuracy, 0.75, TOL)?;
    all_close(
        "grad",
        &grad(&x, &out.loss)?,
        &[-0.125, -0.155614833, -0.0943851672, -0.139311964],
        TOL,
    )?;
    let plain = bradley_terry_loss(&pairs(t1(&RC), false), &BradleyTerryConfig::default())?;
    close("plain", plain.stats.loss, 0.561249255, TOL)?;
    check_gradient(&RC, [4], 1e-2, 2e-3, |x| {
        Ok(bradley_terry_loss(&pairs(x, true), &BradleyTerryConfig::default())?.loss)
    })?;
    let nan = RewardPairBatch {
        chosen: t1(&RC),
        rejected: t1(&RR),
        margin: Some(t1(&[f32::NAN; 4])),
    };
    anyhow::ensure!(matches!(
        bradley_terry_loss(&nan, &BradleyTerryConfig::default()),
        Err(AlgoError::NonFinite {
            input: "margin",
            ..
        })
    ));
    Ok(())
}

// scripts/algo_reference.py case armo_regression
#[test]
fn multi_objective_regression_matches_reference() -> TestResult {
    let pred = [0.5, 1.0, 2.0, -1.0, 0.0, 0.3];
    let batch = |p: Tensor<B, 2>| RatingBatch {
        predicted: p,
        target: tn(&[1.0, 0.0, 1.5, 0.0, 0.2, 0.0], [3, 2]),
        mask: tn(&[1.0, 1.0, 1.0, 0.0, 0.0, 1.0], [3, 2]),
    };
    let x = tn(&pred, [3, 2]).require_grad();
    let out = multi_objective_regression_loss(&batch(x.clone()))?;
    close("loss", out.stats.loss, 0.3975, TOL)?;
    all_close(
        "grad",
        &grad(&x, &out.loss)?,
        &[-0.25, 0.5, 0.25, 0.0, 0.0, 0.15],
        TOL,
    )?;
    check_gradient(&pred, [3, 2], 1e-2, 2e-3, |x| {
        Ok(multi_objective_regression_loss(&batch(x))?.loss)
    })?;
    let empty = RatingBatch {
        mask: tn(&[0.0; 6], [3, 2]),
        ..batch(tn(&pred, [3, 2]))
    };
    anyhow::ensure!(matches!(
        multi_objective_regression_loss(&empty),
        Err(AlgoError::InvalidInput { input: "mask", .. })
    ));
    Ok(())
}

// scripts/algo_reference.py case armo_gated
#[test]
fn gated_reward_matches_reference() -> TestResult {
    let rc = tn(&[1.0, 0.5, -0.2, 0.3, 0.9, 0.1], [2, 3]);
    let gc0 = [0.1, 0.2, 0.3, 1.0, -1.0, 0.0];
    let rr = tn(&[0.8, 0.1, 0.4, 0.5, 0.2, 0.0], [2, 3]);
    let gr = tn(&[0.0, 0.0, 0.0, 0.5, 0.5, 0.5], [2, 3]);
    let loss = |gc: Tensor<B, 2>| -> crate::Result<LossOutput<B, RewardStats>> {
        let batch = RewardPairBatch {
            chosen: gated_reward(rc.clone(), gc)?,
            rejected: gated_reward(rr.clone(), gr.clone())?,
            margin: None,
        };
        bradley_terry_loss(&batch, &BradleyTerryConfig { beta: 2.0 })
    };
    let sc = gated_reward(rc.clone(), tn(&gc0, [2, 3]))?;
    all_close(
        "score chosen",
        &crate::testutil::host(&sc)?,
        &[0.393289022, 0.30507265],
        TOL,
    )?;
    let x = tn(&gc0, [2, 3]).require_grad();
    let out = loss(x.clone())?;
    close("loss", out.stats.loss, 0.678985988, TOL)?;
    all_close(
        "grad gate",
        &grad(&x, &out.loss)?,
        &[
            -0.094841327,
            -0.0184354744,
            0.113276801,
            0.001566431,
            -0.0248628762,
            0.0232964452,
        ],
        TOL,
    )?;
    check_gradient(&gc0, [2, 3], 1e-2, 2e-3, |x| Ok(loss(x)?.loss))
}

// scripts/algo_reference.py case constrained_update
#[test]
fn constrained_multipliers_match_reference() -> TestResult {
    let make = |kind| -> crate::Result<ConstrainedRewards> {
        ConstrainedRewards::new(
            [(0.5, 0.5), (0.5, 0.01), (0.0, 0.0)]
                .iter()
                .map(|&(threshold, initial_multiplier)| Constraint {
                    threshold,
                    kind,
                    initial_multiplier,
                })
                .collect(),
            0.1,
        )
    };
    let mut at_least = make(ConstraintKind::AtLeast)?;
    let got: Vec<f32> = at_least
        .update(&[0.2, 0.9, 0.4])?
        .iter()
        .map(|&v| v as f32)
        .collect();
    all_close("at_least", &got, &[0.53, 0.0, 0.0], 1e-6)?;
    let mut equal = make(ConstraintKind::Equal)?;
    let got: Vec<f32> = equal
        .update(&[0.2, 0.9, 0.4])?
        .iter()
        .map(|&v| v as f32)
        .collect();
    all_close("equal", &got, &[0.53, -0.03, -0.04], 1e-6)?;
    // combine: r0 + sum_i lambda_i (r_i - theta_i) with lambda = [0.53, 0, 0].
    let combined = at_least.combine(
        &[1.0, 2.0],
        &[vec![0.7, 0.1], vec![5.0, 5.0], vec![1.0, 1.0]],
    )?;
    all_close(
        "combined",
        &combined,
        &[1.0 + 0.53 * 0.2, 2.0 - 0.53 * 0.4],
        1e-6,
    )?;
    anyhow::ensure!(at_least.update(&[f64::NAN, 0.0, 0.0]).is_err());
    anyhow::ensure!(
        at_least
            .combine(&[1.0], &[vec![f32::NAN], vec![0.0], vec![0.0]])
            .is_err()
    );
    anyhow::ensure!(
        at_least.combine(&[1.0], &[vec![0.0]]).is_err(),
        "one component per constraint"
    );
    let bad = ConstrainedRewards::new(
        vec![Constraint {
            threshold: 0.0,
            kind: ConstraintKind::AtLeast,
            initial_multiplier: -1.0,
        }],
        0.1,
    );
    match bad {
        Err(AlgoError::InvalidConfig { field, .. })
            if field == "constrained.constraints[0].initial_multiplier" =>
        {
            Ok(())
        }
        other => anyhow::bail!("expected InvalidConfig, got {other:?}"),
    }
}
