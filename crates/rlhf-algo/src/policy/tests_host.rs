//! Tests of the host-side policy-gradient pieces: GAE, group advantages, REINFORCE++ returns
//! and KL controllers. Expected numbers come from `scripts/algo_reference.py` (case named on
//! each test).

use super::tests::{LOGP, MASK, REF};
use super::*;
use crate::error::AlgoError;
use crate::testutil::{TestResult, all_close, close, host, tn};

const RW: [f32; 15] = [
    0.0, 0.0, 0.0, 0.0, 1.0, 0.1, 0.0, 0.5, 7.0, 7.0, -0.2, 2.0, 7.0, 7.0, 7.0,
];
const VAL: [f32; 15] = [
    0.5, 0.6, 0.2, 1.0, 0.3, 0.0, -0.5, 0.4, 0.0, 0.0, 1.5, 1.0, 0.0, 0.0, 0.0,
];
const TOL: f64 = 2e-6;

// scripts/algo_reference.py cases gae_1.0_0.95 and gae_0.99_0.9
#[test]
fn gae_matches_reference() -> TestResult {
    let out = gae(&RW, &VAL, &MASK, 5, &GaeConfig::default())?;
    all_close(
        "adv",
        &out.advantages,
        &[
            0.411991875,
            0.3284125,
            0.76675,
            -0.035,
            0.7,
            0.54525,
            0.995,
            0.1,
            0.0,
            0.0,
            0.25,
            1.0,
            0.0,
            0.0,
            0.0,
        ],
        TOL,
    )?;
    all_close(
        "returns",
        &out.returns,
        &[
            0.911991875,
            0.9284125,
            0.96675,
            0.965,
            1.0,
            0.54525,
            0.495,
            0.5,
            0.0,
            0.0,
            1.75,
            2.0,
            0.0,
            0.0,
            0.0,
        ],
        TOL,
    )?;
    let out = gae(
        &RW,
        &VAL,
        &MASK,
        5,
        &GaeConfig {
            gamma: 0.99,
            lambda: 0.9,
        },
    )?;
    all_close(
        "adv 0.99/0.9",
        &out.advantages,
        &[
            0.306891296,
            0.238935237,
            0.7193437,
            -0.0793,
            0.7,
            0.4827241,
            0.9851,
            0.1,
            0.0,
            0.0,
            0.181,
            1.0,
            0.0,
            0.0,
            0.0,
        ],
        TOL,
    )?;
    let (adv, ret) = gae_tensors(
        &tn(&RW, [3, 5]),
        &tn(&VAL, [3, 5]),
        &tn(&MASK, [3, 5]),
        &GaeConfig::default(),
    )?;
    close("tensor adv[0]", host(&adv)?[0], 0.411991875, TOL)?;
    close("tensor ret[10]", host(&ret)?[10], 1.75, TOL)
}

#[test]
fn gae_special_cases() -> TestResult {
    // lambda = 1, gamma = 1: advantage = reward-to-go minus value.
    let out = gae(
        &[0.0, 0.0, 1.0],
        &[0.2, 0.4, 0.6],
        &[1.0; 3],
        3,
        &GaeConfig {
            gamma: 1.0,
            lambda: 1.0,
        },
    )?;
    all_close("monte carlo", &out.advantages, &[0.8, 0.6, 0.4], 1e-6)?;
    // lambda = 0: one-step TD errors.
    let out = gae(
        &[0.0, 0.0, 1.0],
        &[0.2, 0.4, 0.6],
        &[1.0; 3],
        3,
        &GaeConfig {
            gamma: 1.0,
            lambda: 0.0,
        },
    )?;
    all_close("td(0)", &out.advantages, &[0.2, 0.2, 0.4], 1e-6)?;
    // A hole in the mask is skipped: the same as the row without it.
    let holed = gae(
        &[0.0, 9.0, 0.0, 1.0],
        &[0.2, 9.0, 0.4, 0.6],
        &[1.0, 0.0, 1.0, 1.0],
        4,
        &GaeConfig::default(),
    )?;
    let dense = gae(
        &[0.0, 0.0, 1.0],
        &[0.2, 0.4, 0.6],
        &[1.0; 3],
        3,
        &GaeConfig::default(),
    )?;
    all_close(
        "hole",
        &[
            holed.advantages[0],
            holed.advantages[2],
            holed.advantages[3],
        ],
        &dense
            .advantages
            .iter()
            .map(|&v| f64::from(v))
            .collect::<Vec<_>>(),
        1e-7,
    )?;
    anyhow::ensure!(holed.advantages[1] == 0.0);
    Ok(())
}

#[test]
fn gae_rejects_bad_inputs() -> TestResult {
    let mut bad = RW;
    bad[3] = f32::NAN;
    anyhow::ensure!(matches!(
        gae(&bad, &VAL, &MASK, 5, &GaeConfig::default()),
        Err(AlgoError::NonFinite {
            input: "rewards",
            index: 3,
            ..
        })
    ));
    anyhow::ensure!(matches!(
        gae(&RW, &VAL[..10], &MASK, 5, &GaeConfig::default()),
        Err(AlgoError::Shape { .. })
    ));
    match gae(
        &RW,
        &VAL,
        &MASK,
        5,
        &GaeConfig {
            gamma: 1.5,
            lambda: 0.9,
        },
    ) {
        Err(AlgoError::InvalidConfig { field, .. }) if field == "gae.gamma" => Ok(()),
        other => anyhow::bail!("expected InvalidConfig(gae.gamma), got {other:?}"),
    }
}

// scripts/algo_reference.py case group_advantages
#[test]
fn group_advantages_match_reference() -> TestResult {
    let r = [1.0, 0.0, 0.5, 1.0, 0.2, 0.2, 0.9, 0.1];
    all_close(
        "grpo",
        &grpo_advantages(&r, 4, 1e-4)?,
        &[
            0.78318585,
            -1.30530975,
            -0.26106195,
            0.78318585,
            -0.405641609,
            -0.405641609,
            1.48735257,
            -0.676069349,
        ],
        1e-5,
    )?;
    let dr = dr_grpo_advantages(&r, 4)?;
    all_close(
        "dr_grpo",
        &dr,
        &[0.375, -0.625, -0.125, 0.375, -0.15, -0.15, 0.55, -0.25],
        1e-6,
    )?;
    all_close(
        "rloo",
        &rloo_advantages(&r, 4)?,
        &[
            0.5,
            -0.833333333,
            -0.166666667,
            0.5,
            -0.2,
            -0.2,
            0.733333333,
            -0.333333333,
        ],
        1e-6,
    )?;
    // Uniform groups give zero advantages, not NaN.
    all_close(
        "uniform",
        &grpo_advantages(&[0.5; 4], 4, 1e-4)?,
        &[0.0; 4],
        0.0,
    )?;
    // RLOO = k/(k-1) * Dr. GRPO.
    let rloo = rloo_advantages(&r, 4)?;
    for (a, b) in rloo.iter().zip(&dr) {
        close("rloo vs dr_grpo", *a, f64::from(*b) * 4.0 / 3.0, 1e-6)?;
    }
    anyhow::ensure!(
        grpo_advantages(&r, 3, 1e-4).is_err(),
        "8 rewards are not groups of 3"
    );
    anyhow::ensure!(rloo_advantages(&r[..1], 1).is_err(), "RLOO needs k >= 2");
    anyhow::ensure!(matches!(
        grpo_advantages(&[1.0, f32::INFINITY], 2, 1e-4),
        Err(AlgoError::NonFinite {
            input: "rewards",
            index: 1,
            ..
        })
    ));
    Ok(())
}

// scripts/algo_reference.py case reinforce_pp
#[test]
fn reinforce_pp_matches_reference() -> TestResult {
    let kl: Vec<f32> = LOGP.iter().zip(&REF).map(|(l, r)| l - r).collect();
    let out = reinforce_pp_advantages(&[1.0, -0.5, 0.3], &kl, &MASK, 5, 0.01, 1.0)?;
    all_close(
        "returns",
        &out.returns,
        &[
            0.991, 0.994, 0.995, 0.996, 0.998, -0.501, -0.502, -0.499, 0.0, 0.0, 0.298, 0.301, 0.0,
            0.0, 0.0,
        ],
        1e-5,
    )?;
    all_close(
        "advantages",
        &out.advantages,
        &[
            0.898598159,
            0.903215036,
            0.904753995,
            0.906292954,
            0.909370872,
            -1.39752867,
            -1.39906762,
            -1.39445075,
            0.0,
            0.0,
            -0.167900427,
            -0.16328355,
            0.0,
            0.0,
            0.0,
        ],
        1e-4,
    )?;
    anyhow::ensure!(
        reinforce_pp_advantages(&[1.0], &kl, &MASK, 5, 0.01, 1.0).is_err(),
        "one score per row"
    );
    Ok(())
}

#[test]
fn adaptive_kl_controller_follows_ziegler() -> TestResult {
    let mut c = KlControl::default().build()?;
    close("init", c.coef() as f32, 0.2, 1e-7)?;
    // KL twice the target: error clipped at +0.2, beta *= 1 + 0.2 * 256 / 10000.
    let b = c.update(12.0, 256)?;
    close("up", b as f32, 0.2 * (1.0 + 0.2 * 256.0 / 10000.0), 1e-7)?;
    // KL at 5.4 (error -0.1): beta *= 1 - 0.1 * 1000 / 10000.
    let b2 = c.update(5.4, 1000)?;
    close("down", b2 as f32, b * (1.0 - 0.1 * 0.1), 1e-7)?;
    anyhow::ensure!(c.update(f64::NAN, 1).is_err());
    close("unchanged after NaN", c.coef() as f32, b2, 1e-7)?;
    let mut fixed = KlControl::Fixed { coef: 0.05 }.build()?;
    close("fixed", fixed.update(100.0, 10)? as f32, 0.05, 1e-7)?;
    let parsed: KlControl = serde_json::from_str(r#"{"name": "adaptive", "target": 3.0}"#)?;
    anyhow::ensure!(
        matches!(parsed, KlControl::Adaptive { target, init_coef, .. } if target == 3.0 && init_coef == 0.2)
    );
    anyhow::ensure!(
        serde_json::from_str::<KlControl>(r#"{"name": "fixed"}"#).is_err(),
        "coef is required"
    );
    anyhow::ensure!(KlControl::Fixed { coef: -1.0 }.validate().is_err());
    Ok(())
}
