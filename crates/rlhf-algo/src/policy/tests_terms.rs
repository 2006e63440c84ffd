//! Tests of the per-token terms: value loss, KL estimators, entropy, truncated importance
//! weights. Expected numbers come from `scripts/algo_reference.py` (case named on each test).

use super::tests::{ADV, D, LOGP, MASK, OLD, OLDV, REF, RET, TOL, VAL, surrogate_cfg, tokens};
use super::*;
use crate::ops::TokenReduction;
use crate::testutil::{TestResult, all_close, check_gradient, close, grad, host, tn};

// scripts/algo_reference.py case value_loss
#[test]
fn value_loss_matches_reference() -> TestResult {
    let v = tn(&VAL, D).require_grad();
    let (loss, value, clipfrac) =
        clipped_value_loss(v.clone(), tn(&OLDV, D), tn(&RET, D), tn(&MASK, D), 0.2)?;
    close("loss", value, 0.098, TOL)?;
    close("clip fraction", clipfrac, 0.0, 0.0)?;
    let want = [
        -0.05, -0.04, 0.02, 0.02, -0.03, -0.02, -0.08, 0.05, 0.0, 0.0, 0.06, 0.03, 0.0, 0.0, 0.0,
    ];
    all_close("grad", &grad(&v, &loss)?, &want, TOL)?;
    // A tight clip makes the clipped branch win on some tokens.
    let (_, _, tight) =
        clipped_value_loss(tn(&VAL, D), tn(&OLDV, D), tn(&RET, D), tn(&MASK, D), 0.05)?;
    anyhow::ensure!(tight > 0.0, "clipped branch never taken");
    check_gradient(&VAL, D, 1e-3, 3e-3, |x| {
        Ok(clipped_value_loss(x, tn(&OLDV, D), tn(&RET, D), tn(&MASK, D), 0.2)?.0)
    })
}

// scripts/algo_reference.py case kl_estimators
#[test]
fn kl_estimators_match_reference() -> TestResult {
    let mask = tn(&MASK, D);
    for (est, want) in [
        (KlEstimator::K1, 0.12),
        (KlEstimator::K2, 0.02),
        (KlEstimator::K3, 0.0185103758),
    ] {
        let k = kl_estimate(tn(&LOGP, D), tn(&REF, D), est);
        let mean = crate::ops::masked_mean(k, mask.clone());
        close(&format!("{est:?}"), host(&mean)?[0], want, TOL)?;
    }
    let k3 = kl_estimate(tn(&LOGP, D), tn(&REF, D), KlEstimator::K3) * mask;
    let want = [
        0.0408182207,
        0.00483741804,
        0.00483741804,
        0.0187307531,
        0.0187307531,
        0.00517091808,
        0.0408182207,
        0.00517091808,
        0.0,
        0.0,
        0.0408182207,
        0.00517091808,
        0.0,
        0.0,
        0.0,
    ];
    all_close("k3 tokens", &host(&k3)?, &want, TOL)?;
    // k3 stays finite for a huge log-ratio.
    let far = kl_estimate(tn(&[-500.0], [1, 1]), tn(&[0.0], [1, 1]), KlEstimator::K3);
    anyhow::ensure!(host(&far)?[0].is_finite());
    Ok(())
}

// scripts/algo_reference.py case entropy
#[test]
fn entropy_matches_reference() -> TestResult {
    let logits = [
        1.0, 2.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0, 3.0, -2.0, 1.0, 0.0, -0.5, 0.5, 2.5, 1.0, 1.0,
        1.0, -3.0, 2.0, 0.2, 0.1, 0.0, -0.1,
    ];
    let x = tn(&logits, [2, 3, 4]).require_grad();
    let ent = entropy_from_logits(x.clone());
    all_close(
        "per token",
        &host(&ent)?,
        &[
            1.01440278,
            1.38629436,
            0.556198826,
            0.878281175,
            0.996897246,
            1.38007081,
        ],
        TOL,
    )?;
    let mean = crate::ops::masked_mean(ent, tn(&[1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [2, 3]));
    close("mean", host(&mean)?[0], 1.13118927, TOL)?;
    let g = grad(&x, &mean)?;
    all_close(
        "grad[0..4]",
        &g[..4],
        &[0.0215588876, -0.0632888751, 0.0266750179, 0.0150549696],
        TOL,
    )?;
    all_close("grad masked", &g[8..12], &[0.0; 4], 0.0)?;
    let mask = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
    check_gradient(&logits, [2, 3, 4], 1e-2, 2e-3, |x| {
        Ok(crate::ops::masked_mean(
            entropy_from_logits(x),
            tn(&mask, [2, 3]),
        ))
    })
}

// scripts/algo_reference.py case truncated_is
#[test]
fn truncated_importance_weights_match_reference() -> TestResult {
    let behaviour = [
        -1.0, -0.5, -1.5, -0.3, -0.2, -0.2, -2.0, -0.9, 0.0, 0.0, -2.0, -0.1, 0.0, 0.0, 0.0,
    ];
    let (w, stats) =
        truncated_importance_weights(tn(&OLD, D), tn(&behaviour, D), tn(&MASK, D), 2.0)?;
    let want = [
        0.904837418,
        1.10517092,
        0.367879441,
        1.22140276,
        1.0,
        0.904837418,
        2.0,
        1.0,
        0.0,
        0.0,
        1.0,
        0.449328964,
        0.0,
        0.0,
        0.0,
    ];
    all_close("weights", &host(&w)?, &want, TOL)?;
    close("mean", stats.mean, 0.995345692, TOL)?;
    close("truncated", stats.truncated_fraction, 0.1, TOL)?;
    // In a loss, the weights scale the surrogate and carry no gradient themselves.
    let batch = tokens(tn(&LOGP, D)).with_behaviour(tn(&behaviour, D));
    let out = clipped_surrogate(
        "ppo",
        &batch,
        tn(&ADV, D),
        &surrogate_cfg(TokenReduction::TokenMean),
    )?;
    close(
        "importance stat",
        out.stats.importance_weight.unwrap_or(f32::NAN),
        0.995345692,
        TOL,
    )?;
    anyhow::ensure!(
        truncated_importance_weights(tn(&OLD, D), tn(&behaviour, D), tn(&MASK, D), 0.5).is_err()
    );
    Ok(())
}
