//! Tests of the tensor side of the policy-gradient objectives. Expected numbers come from
//! `scripts/algo_reference.py` (case named on each test).

use burn::tensor::Tensor;

use super::*;
use crate::error::AlgoError;
use crate::ops::TokenReduction;
use crate::testutil::{B, TestResult, all_close, check_gradient, close, grad, tn};

pub(super) const LOGP: [f32; 15] = [
    -1.0, -0.5, -2.0, -0.1, -0.7, -0.3, -1.2, -0.8, -5.0, -5.0, -2.2, -0.4, -3.0, -3.0, -3.0,
];
pub(super) const OLD: [f32; 15] = [
    -1.1, -0.4, -2.5, -0.1, -0.2, -0.3, -1.0, -0.9, -1.0, -1.0, -2.0, -0.9, -1.0, -1.0, -1.0,
];
pub(super) const REF: [f32; 15] = [
    -1.3, -0.6, -2.1, -0.3, -0.9, -0.2, -1.5, -0.7, -1.0, -1.0, -2.5, -0.3, -1.0, -1.0, -1.0,
];
pub(super) const ADV: [f32; 15] = [
    0.5, 0.5, -1.0, 2.0, 1.0, -0.3, 1.5, 0.7, 9.0, 9.0, 1.2, -2.0, 9.0, 9.0, 9.0,
];
pub(super) const MASK: [f32; 15] = [
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0,
];
pub(super) const VAL: [f32; 15] = [
    0.5, 0.6, 0.2, 1.0, 0.3, 0.0, -0.5, 0.4, 0.0, 0.0, 1.5, 1.0, 0.0, 0.0, 0.0,
];
pub(super) const OLDV: [f32; 15] = [
    0.4, 0.9, 0.2, 0.5, 0.3, 0.1, -0.2, 0.1, 0.0, 0.0, 1.0, 1.1, 0.0, 0.0, 0.0,
];
pub(super) const RET: [f32; 15] = [
    1.0, 1.0, 0.0, 0.8, 0.6, 0.2, 0.3, -0.1, 0.0, 0.0, 0.9, 0.7, 0.0, 0.0, 0.0,
];
pub(super) const D: [usize; 2] = [3, 5];
pub(super) const TOL: f64 = 2e-5;

pub(super) fn tokens(logp: Tensor<B, 2>) -> TokenBatch<B> {
    TokenBatch::new(logp, tn(&MASK, D))
        .with_old(tn(&OLD, D))
        .with_reference(tn(&REF, D))
}

pub(super) fn surrogate_cfg(reduction: TokenReduction) -> SurrogateConfig {
    SurrogateConfig {
        clip_low: 0.2,
        clip_high: 0.2,
        reduction,
        fixed_length: Some(8),
        kl_coef: 0.0,
        kl_estimator: KlEstimator::K3,
        entropy_coef: 0.0,
        importance_cap: 2.0,
    }
}

// scripts/algo_reference.py cases ppo_surrogate_{token_mean,sequence_mean,sequence_sum,fixed_length}
#[test]
fn clipped_surrogate_matches_reference_for_every_reduction() -> TestResult {
    let cases: [(TokenReduction, f64, [f64; 8]); 4] = [
        (
            TokenReduction::TokenMean,
            -0.134956369,
            [
                -0.0552585459,
                -0.0452418709,
                0.164872127,
                -0.2,
                -0.060653066,
                0.03,
                -0.122809613,
                -0.0773619643,
            ],
        ),
        (
            TokenReduction::SequenceMean,
            0.0658938389,
            [
                -0.0368390306,
                -0.0301612473,
                0.109914751,
                -0.133333333,
                -0.0404353773,
                0.0333333333,
                -0.136455126,
                -0.0859577381,
            ],
        ),
        (
            TokenReduction::SequenceSum,
            -0.449854564,
            [
                -0.184195153,
                -0.150806236,
                0.549573757,
                -0.666666667,
                -0.202176887,
                0.1,
                -0.409365377,
                -0.257873214,
            ],
        ),
        (
            TokenReduction::FixedLength,
            -0.0562318205,
            [
                -0.0230243941,
                -0.0188507795,
                0.0686967196,
                -0.0833333333,
                -0.0252721108,
                0.0125,
                -0.0511706721,
                -0.0322341518,
            ],
        ),
    ];
    let tails: [[f64; 7]; 4] = [
        [0.0, 0.0, -0.0982476904, 0.329744254, 0.0, 0.0, 0.0],
        [0.0, 0.0, -0.163746151, 0.549573757, 0.0, 0.0, 0.0],
        [0.0, 0.0, -0.327492301, 1.09914751, 0.0, 0.0, 0.0],
        [0.0, 0.0, -0.0409365377, 0.137393439, 0.0, 0.0, 0.0],
    ];
    for ((reduction, loss, head), tail) in cases.into_iter().zip(tails) {
        let x = tn(&LOGP, D).require_grad();
        let out = clipped_surrogate(
            "ppo",
            &tokens(x.clone()),
            tn(&ADV, D),
            &surrogate_cfg(reduction),
        )?;
        close(&format!("{reduction:?} loss"), out.stats.loss, loss, TOL)?;
        close("clip_fraction", out.stats.clip_fraction, 0.3, TOL)?;
        close("approx_kl", out.stats.approx_kl, 0.0456613961, TOL)?;
        let want: Vec<f64> = head.iter().chain(&tail).copied().collect();
        all_close(
            &format!("{reduction:?} grad"),
            &grad(&x, &out.loss)?,
            &want,
            TOL,
        )?;
        check_gradient(&LOGP, D, 1e-3, 3e-3, |x| {
            Ok(clipped_surrogate("ppo", &tokens(x), tn(&ADV, D), &surrogate_cfg(reduction))?.loss)
        })?;
    }
    Ok(())
}

#[test]
fn ratio_one_gives_minus_advantage() -> TestResult {
    // On-policy (old = logp): surrogate = -A per token, gradient = -A (REINFORCE).
    let x = tn(&LOGP, D).require_grad();
    let batch = TokenBatch::new(x.clone(), tn(&MASK, D));
    let out = clipped_surrogate(
        "ppo",
        &batch,
        tn(&ADV, D),
        &surrogate_cfg(TokenReduction::SequenceSum),
    )?;
    let adv_sum: f64 = ADV.iter().zip(&MASK).map(|(a, m)| f64::from(a * m)).sum();
    close("surrogate", out.stats.loss, -adv_sum / 3.0, 1e-6)?;
    let want: Vec<f64> = ADV
        .iter()
        .zip(&MASK)
        .map(|(a, m)| -f64::from(a * m) / 3.0)
        .collect();
    all_close("grad", &grad(&x, &out.loss)?, &want, 1e-6)?;
    close("ratio mean", out.stats.ratio_mean, 1.0, 0.0)?;
    close("clip fraction", out.stats.clip_fraction, 0.0, 0.0)
}

// scripts/algo_reference.py case grpo_loss
#[test]
fn grpo_loss_matches_reference() -> TestResult {
    // Advantages of [1.5, -0.5, 0.8] come from rewards with that exact GRPO normalisation.
    let adv = [1.5f32, -0.5, 0.8];
    let full: Vec<f32> = adv.iter().flat_map(|&a| [a; 5]).collect();
    let cfg = SurrogateConfig {
        kl_coef: 0.04,
        ..surrogate_cfg(TokenReduction::SequenceMean)
    };
    let x = tn(&LOGP, D).require_grad();
    let out = clipped_surrogate("grpo", &tokens(x.clone()), tn(&full, D), &cfg)?;
    close("loss", out.stats.loss, -0.5876105, TOL)?;
    close(
        "kl",
        out.stats.kl_reference.unwrap_or(f32::NAN),
        0.0185103758,
        TOL,
    )?;
    let want = [
        -0.10982594,
        -0.0902299749,
        0.000253766885,
        -0.0995166153,
        -0.0601696813,
        0.0550881293,
        0.0466369609,
        0.060930958,
        0.0,
        0.0,
        -0.107436222,
        -0.000701139454,
        0.0,
        0.0,
        0.0,
    ];
    all_close("grad", &grad(&x, &out.loss)?, &want, TOL)?;
    check_gradient(&LOGP, D, 1e-3, 3e-3, |x| {
        Ok(clipped_surrogate("grpo", &tokens(x), tn(&full, D), &cfg)?.loss)
    })
}

#[test]
fn masked_tokens_do_not_matter() -> TestResult {
    // Change every masked position wildly (finite): loss and stats stay put.
    let mut logp = LOGP;
    let mut adv = ADV;
    for i in 0..15 {
        if MASK[i] == 0.0 {
            logp[i] = 40.0;
            adv[i] = -1.0e3;
        }
    }
    for r in [
        TokenReduction::TokenMean,
        TokenReduction::SequenceMean,
        TokenReduction::SequenceSum,
        TokenReduction::FixedLength,
    ] {
        let a =
            clipped_surrogate("ppo", &tokens(tn(&LOGP, D)), tn(&ADV, D), &surrogate_cfg(r))?.stats;
        let b =
            clipped_surrogate("ppo", &tokens(tn(&logp, D)), tn(&adv, D), &surrogate_cfg(r))?.stats;
        close(&format!("{r:?}"), b.loss, f64::from(a.loss), 1e-6)?;
        close(
            "clip fraction",
            b.clip_fraction,
            f64::from(a.clip_fraction),
            0.0,
        )?;
    }
    Ok(())
}

#[test]
fn bad_token_inputs_are_errors() -> TestResult {
    let cfg = surrogate_cfg(TokenReduction::TokenMean);
    let mut nan = LOGP;
    nan[8] = f32::NAN; // even under the mask: NaN would leak through 0 * NaN
    anyhow::ensure!(matches!(
        clipped_surrogate("ppo", &tokens(tn(&nan, D)), tn(&ADV, D), &cfg),
        Err(AlgoError::NonFinite {
            input: "logp",
            index: 8,
            ..
        })
    ));
    let empty_mask = TokenBatch::new(tn(&LOGP, D), tn(&[0.0; 15], D));
    anyhow::ensure!(matches!(
        clipped_surrogate("ppo", &empty_mask, tn(&ADV, D), &cfg),
        Err(AlgoError::InvalidInput { input: "mask", .. })
    ));
    let soft_mask = TokenBatch::new(tn(&LOGP, D), tn(&[0.5; 15], D));
    anyhow::ensure!(matches!(
        clipped_surrogate("ppo", &soft_mask, tn(&ADV, D), &cfg),
        Err(AlgoError::InvalidInput { input: "mask", .. })
    ));
    let needs_ref = SurrogateConfig {
        kl_coef: 0.1,
        ..cfg
    };
    anyhow::ensure!(matches!(
        clipped_surrogate(
            "grpo",
            &TokenBatch::new(tn(&LOGP, D), tn(&MASK, D)),
            tn(&ADV, D),
            &needs_ref
        ),
        Err(AlgoError::MissingInput {
            objective: "grpo",
            input: "reference_logp"
        })
    ));
    anyhow::ensure!(matches!(
        clipped_surrogate("ppo", &tokens(tn(&LOGP, D)), tn(&ADV[..10], [2, 5]), &cfg),
        Err(AlgoError::Shape {
            input: "advantages",
            ..
        })
    ));
    let bad = SurrogateConfig {
        clip_low: 1.5,
        ..cfg
    };
    match clipped_surrogate("ppo", &tokens(tn(&LOGP, D)), tn(&ADV, D), &bad) {
        Err(AlgoError::InvalidConfig { field, .. }) if field == "ppo.clip_ratio" => Ok(()),
        other => anyhow::bail!("expected InvalidConfig(ppo.clip_ratio), got {other:?}"),
    }
}

#[test]
fn group_objectives_run_and_differ_as_documented() -> TestResult {
    let rewards = vec![1.0, 0.0, 0.5];
    let group = |x: Tensor<B, 2>| GroupBatch {
        tokens: tokens(x),
        rewards: rewards.clone(),
        group_size: 3,
    };
    let g = grpo_loss(&group(tn(&LOGP, D)), &GrpoConfig::default())?;
    let d = dr_grpo_loss(&group(tn(&LOGP, D)), &DrGrpoConfig::default())?;
    let r = rloo_loss(&group(tn(&LOGP, D)), &RlooConfig::default())?;
    let p = reinforce_pp_loss(&group(tn(&LOGP, D)), &ReinforcePpConfig::default())?;
    for (name, s) in [
        ("grpo", g.stats),
        ("dr_grpo", d.stats),
        ("rloo", r.stats),
        ("reinforce_pp", p.stats),
    ] {
        anyhow::ensure!(s.loss.is_finite(), "{name} loss");
    }
    check_gradient(&LOGP, D, 1e-3, 3e-3, |x| {
        Ok(dr_grpo_loss(&group(x), &DrGrpoConfig::default())?.loss)
    })?;
    check_gradient(&LOGP, D, 1e-3, 3e-3, |x| {
        Ok(rloo_loss(&group(x), &RlooConfig::default())?.loss)
    })?;
    check_gradient(&LOGP, D, 1e-3, 3e-3, |x| {
        Ok(reinforce_pp_loss(&group(x), &ReinforcePpConfig::default())?.loss)
    })?;
    let short = GroupBatch {
        tokens: tokens(tn(&LOGP, D)),
        rewards: vec![1.0, 0.0],
        group_size: 2,
    };
    anyhow::ensure!(matches!(
        grpo_loss(&short, &GrpoConfig::default()),
        Err(AlgoError::Shape {
            input: "rewards",
            ..
        })
    ));
    let nan = GroupBatch {
        tokens: tokens(tn(&LOGP, D)),
        rewards: vec![1.0, f32::NAN, 0.0],
        group_size: 3,
    };
    anyhow::ensure!(matches!(
        rloo_loss(&nan, &RlooConfig::default()),
        Err(AlgoError::NonFinite {
            input: "rewards",
            ..
        })
    ));
    Ok(())
}

#[test]
fn ppo_adds_the_value_loss() -> TestResult {
    let rollout = RolloutBatch {
        tokens: tokens(tn(&LOGP, D)),
        advantages: tn(&ADV, D),
        values: Some(ValueBatch {
            values: tn(&VAL, D),
            old_values: tn(&OLDV, D),
            returns: tn(&RET, D),
        }),
    };
    let cfg = PpoConfig {
        value_coef: 0.5,
        ..PpoConfig::default()
    };
    let out = ppo_loss(&rollout, &cfg)?;
    close(
        "value loss",
        out.stats.value_loss.unwrap_or(f32::NAN),
        0.098,
        TOL,
    )?;
    close("total", out.stats.loss, -0.134956369 + 0.5 * 0.098, TOL)?;
    Ok(())
}

// Hand-computed: sequence log-ratios to π_old over the mask are 0.0, -0.1 and 0.3; win
// probabilities 1, ½, 0 with β = ½ give targets 1, 0, -1; squared errors 1, 0.01, 1.69.
#[test]
fn sppo_regresses_log_ratios_onto_win_probabilities() -> TestResult {
    let cfg = SppoConfig { beta: 0.5 };
    let batch = |x: Tensor<B, 2>| GroupBatch {
        tokens: tokens(x),
        rewards: vec![1.0, 0.5, 0.0],
        group_size: 3,
    };
    let x = tn(&LOGP, D).require_grad();
    let out = sppo_loss(&batch(x.clone()), &cfg)?;
    close("loss", out.stats.loss, 2.7 / 3.0, TOL)?;
    close("target mean", out.stats.advantage_mean, 0.0, TOL)?;
    let (a, b, c) = (-2.0 / 3.0, -0.2 / 3.0, 2.6 / 3.0);
    let want = [a, a, a, a, a, b, b, b, 0.0, 0.0, c, c, 0.0, 0.0, 0.0];
    all_close("grad", &grad(&x, &out.loss)?, &want, TOL)?;
    check_gradient(&LOGP, D, 1e-3, 3e-3, |x| {
        Ok(sppo_loss(&batch(x), &cfg)?.loss)
    })?;
    // On-policy (no old log-probs): the log-ratios are 0, the loss is the mean squared target.
    let on_policy = GroupBatch {
        tokens: TokenBatch::new(tn(&LOGP, D), tn(&MASK, D)),
        rewards: vec![1.0, 0.5, 0.0],
        group_size: 3,
    };
    close(
        "on-policy",
        sppo_loss(&on_policy, &cfg)?.stats.loss,
        2.0 / 3.0,
        TOL,
    )?;
    // Rewards that are not win probabilities are refused.
    let bad = GroupBatch {
        rewards: vec![1.0, 1.5, 0.0],
        ..batch(tn(&LOGP, D))
    };
    match sppo_loss(&bad, &cfg) {
        Err(AlgoError::InvalidInput {
            input: "rewards",
            reason,
        }) => {
            anyhow::ensure!(reason.contains("row 1 has 1.5"), "{reason}")
        }
        other => anyhow::bail!("expected a rewards error, got {other:?}"),
    }
    Ok(())
}
