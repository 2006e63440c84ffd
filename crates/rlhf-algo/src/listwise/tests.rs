//! Tests of PRO and LiPO-λ. Expected numbers come from `scripts/algo_reference.py` (case named
//! on each test).

use burn::tensor::Tensor;

use super::lipo::{lambda_weights, ranks_by_score};
use super::*;
use crate::error::AlgoError;
use crate::output::{ListStats, LossOutput};
use crate::pairwise::{DpoConfig, PairBatch, dpo_loss};
use crate::testutil::{B, TestResult, all_close, check_gradient, close, grad, t1, tn};

const LOGP: [f32; 8] = [-10.0, -12.0, -9.0, -15.0, -20.0, -18.0, -25.0, 0.0];
const TOK: [f32; 8] = [5.0, 6.0, 4.0, 8.0, 10.0, 9.0, 11.0, 1.0];
const REF: [f32; 8] = [-11.0, -11.5, -10.0, -14.0, -19.0, -19.0, -24.0, 0.0];
const SCORE: [f32; 8] = [0.9, 0.7, 0.4, 0.1, 2.0, 1.5, -1.0, 0.0];
const MASK: [f32; 8] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
const TOL: f64 = 2e-5;

fn lists(policy: Tensor<B, 2>) -> ListBatch<B> {
    ListBatch::new(policy)
        .with_reference(tn(&REF, [2, 4]))
        .with_token_counts(tn(&TOK, [2, 4]))
        .with_scores(tn(&SCORE, [2, 4]))
        .with_mask(tn(&MASK, [2, 4]))
}

type Loss = fn(&ListBatch<B>) -> crate::Result<LossOutput<B, ListStats>>;

fn run(loss: Loss) -> anyhow::Result<(ListStats, Vec<f32>)> {
    let x = tn(&LOGP, [2, 4]).require_grad();
    let out = loss(&lists(x.clone()))?;
    Ok((out.stats, grad(&x, &out.loss)?))
}

fn fd(loss: Loss) -> TestResult {
    check_gradient(&LOGP, [2, 4], 1e-2, 2e-3, |x| Ok(loss(&lists(x))?.loss))
}

fn pro_dynamic(b: &ListBatch<B>) -> crate::Result<LossOutput<B, ListStats>> {
    pro_loss(b, &ProConfig::default())
}

fn pro_fixed(b: &ListBatch<B>) -> crate::Result<LossOutput<B, ListStats>> {
    pro_loss(
        b,
        &ProConfig {
            sft_weight: 0.05,
            temperature: Some(0.5),
        },
    )
}

fn lipo(b: &ListBatch<B>) -> crate::Result<LossOutput<B, ListStats>> {
    lipo_lambda_loss(b, &LipoConfig::default())
}

// scripts/algo_reference.py case pro_dynamic
#[test]
fn pro_dynamic_matches_reference() -> TestResult {
    let (s, g) = run(pro_dynamic)?;
    close("loss", s.loss, 8.97359494, TOL)?;
    close("ranking", s.ranking, 4.72359494, TOL)?;
    close("sft", s.sft, 4.25, TOL)?;
    let want = [
        -0.293625542,
        -0.0288639581,
        0.0113080155,
        0.0284848623,
        -0.248999028,
        -0.019135991,
        0.0385669226,
        0.0,
    ];
    all_close("grad", &g, &want, TOL)?;
    fd(pro_dynamic)
}

// scripts/algo_reference.py case pro_fixed
#[test]
fn pro_fixed_temperature_matches_reference() -> TestResult {
    let (s, g) = run(pro_fixed)?;
    close("loss", s.loss, 6.73082791, TOL)?;
    close("ranking", s.ranking, 2.48082791, TOL)?;
    let want = [
        -0.373593467,
        -0.0661688566,
        -0.0783621702,
        0.181678644,
        -0.161233973,
        0.00230451495,
        0.0537817364,
        0.0,
    ];
    all_close("grad", &g, &want, TOL)?;
    fd(pro_fixed)
}

// scripts/algo_reference.py case lipo_basic
#[test]
fn lipo_matches_reference() -> TestResult {
    let (s, g) = run(lipo)?;
    close("loss", s.loss, 0.965243061, TOL)?;
    let want = [
        -0.0180148968,
        0.000786423482,
        0.00499939374,
        0.0122290796,
        -0.0233435635,
        -0.0143172582,
        0.0376608217,
        0.0,
    ];
    all_close("grad", &g, &want, TOL)?;
    // The lambda weights depend on the (detached) ranks of the model scores, so the loss is
    // only piecewise smooth: both rows have a tie (s_0 = s_2), where any perturbation
    // re-ranks. Check the gradient at a nearby point without ties.
    let mut x0 = LOGP;
    x0[2] = -9.3;
    x0[6] = -25.3;
    check_gradient(&x0, [2, 4], 1e-2, 2e-3, |x| Ok(lipo(&lists(x))?.loss))
}

#[test]
fn lipo_with_two_responses_is_weighted_dpo() -> TestResult {
    let (pc, pr, rc, rr) = (-12.3f32, -13.0f32, -12.0f32, -12.5f32);
    for (label_hi, label_lo) in [(1.0f32, 0.0f32), (0.8, 0.3)] {
        let batch = ListBatch::new(tn(&[pc, pr], [1, 2]))
            .with_reference(tn(&[rc, rr], [1, 2]))
            .with_scores(tn(&[label_hi, label_lo], [1, 2]));
        let lipo = lipo_lambda_loss(&batch, &LipoConfig { beta: 0.1 })?
            .stats
            .loss;
        let pair = PairBatch::new(t1(&[pc]), t1(&[pr])).with_reference(t1(&[rc]), t1(&[rr]));
        let dpo = dpo_loss(&pair, &DpoConfig { beta: 0.1 })?.stats.loss;
        let gain = 2f64.powf(f64::from(label_hi)) - 2f64.powf(f64::from(label_lo));
        let weight = gain * (1.0 - 1.0 / 3f64.log2());
        close(
            "lipo(2) = weight * dpo",
            lipo,
            weight * f64::from(dpo),
            1e-5,
        )?;
    }
    Ok(())
}

#[test]
fn pro_with_two_responses_is_a_logistic_loss() -> TestResult {
    let batch =
        ListBatch::new(tn(&[-6.0, -9.0], [1, 2])).with_token_counts(tn(&[3.0, 3.0], [1, 2]));
    let out = pro_loss(
        &batch,
        &ProConfig {
            sft_weight: 0.0,
            temperature: Some(1.0),
        },
    )?;
    // s = [-2, -3]: -log sigma(s1 - s2) = log(1 + e^-1).
    close("loss", out.stats.loss, (1.0 + (-1.0f64).exp()).ln(), 1e-6)
}

#[test]
fn lambda_weights_and_ranks() -> TestResult {
    let valid = [true, true, true, false];
    let ranks = ranks_by_score(&[0.5, 2.0, 0.5, 9.0], &valid);
    anyhow::ensure!(ranks == vec![2, 1, 3, 5], "ranks {ranks:?}");
    let w = lambda_weights(&[1.0, 0.0, 0.0, 5.0], &ranks, &valid);
    let d = |r: f64| 1.0 / (1.0 + r).log2();
    close("w[0][1]", w[1], (d(2.0) - d(1.0)).abs(), 1e-6)?;
    close("w[0][2]", w[2], (d(2.0) - d(3.0)).abs(), 1e-6)?;
    anyhow::ensure!(w[3] == 0.0 && w[3 * 4] == 0.0, "padding carries no weight");
    anyhow::ensure!(
        w[4] == 0.0 && w[5 + 1] == 0.0,
        "no weight from a lower or equal label"
    );
    Ok(())
}

#[test]
fn padding_does_not_change_the_loss() -> TestResult {
    // Row 1 of the batch alone, without its padding slot.
    let row = |v: &[f32]| tn(&v[4..7], [1, 3]);
    let single = ListBatch::new(row(&LOGP))
        .with_reference(row(&REF))
        .with_token_counts(row(&TOK))
        .with_scores(row(&SCORE));
    let mut padded = lists(tn(&LOGP, [2, 4]));
    // Give the padding slot extreme (finite) values: the loss must not move.
    let mut logp = LOGP;
    logp[7] = 1.0e4;
    padded.policy = tn(&logp, [2, 4]);
    for (name, loss) in [
        ("pro", pro_dynamic as Loss),
        ("pro_fixed", pro_fixed),
        ("lipo", lipo),
    ] {
        let full = loss(&lists(tn(&LOGP, [2, 4])))?.stats.loss;
        close(
            &format!("{name} padding value"),
            loss(&padded)?.stats.loss,
            f64::from(full),
            1e-6,
        )?;
        let row0 = ListBatch::new(tn(&LOGP[..4], [1, 4]))
            .with_reference(tn(&REF[..4], [1, 4]))
            .with_token_counts(tn(&TOK[..4], [1, 4]))
            .with_scores(tn(&SCORE[..4], [1, 4]));
        let mean = (loss(&row0)?.stats.loss + loss(&single)?.stats.loss) / 2.0;
        close(
            &format!("{name} = mean over lists"),
            full,
            f64::from(mean),
            1e-5,
        )?;
    }
    Ok(())
}

#[test]
fn bad_lists_are_errors() -> TestResult {
    let unsorted = lists(tn(&LOGP, [2, 4]))
        .with_scores(tn(&[0.1, 0.7, 0.4, 0.1, 2.0, 1.5, -1.0, 0.0], [2, 4]));
    anyhow::ensure!(matches!(
        pro_dynamic(&unsorted),
        Err(AlgoError::InvalidInput {
            input: "scores",
            ..
        })
    ));
    let holes =
        lists(tn(&LOGP, [2, 4])).with_mask(tn(&[1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [2, 4]));
    anyhow::ensure!(matches!(
        pro_dynamic(&holes),
        Err(AlgoError::InvalidInput { input: "mask", .. })
    ));
    // LiPO accepts any subset of valid entries.
    lipo(&holes)?;
    let lonely =
        lists(tn(&LOGP, [2, 4])).with_mask(tn(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [2, 4]));
    anyhow::ensure!(matches!(
        lipo(&lonely),
        Err(AlgoError::InvalidInput { input: "mask", .. })
    ));
    let mut no_tokens = lists(tn(&LOGP, [2, 4]));
    no_tokens.token_counts = None;
    anyhow::ensure!(matches!(
        pro_dynamic(&no_tokens),
        Err(AlgoError::MissingInput {
            objective: "pro",
            input: "token_counts"
        })
    ));
    let mut nan = LOGP;
    nan[2] = f32::NAN;
    anyhow::ensure!(matches!(
        lipo(&lists(tn(&nan, [2, 4]))),
        Err(AlgoError::NonFinite {
            input: "policy",
            index: 2,
            ..
        })
    ));
    let mut inf_ref = REF;
    inf_ref[7] = f32::NEG_INFINITY;
    let b = lists(tn(&LOGP, [2, 4])).with_reference(tn(&inf_ref, [2, 4]));
    anyhow::ensure!(matches!(
        lipo(&b),
        Err(AlgoError::NonFinite {
            input: "reference",
            ..
        })
    ));
    match pro_loss(
        &lists(tn(&LOGP, [2, 4])),
        &ProConfig {
            sft_weight: 0.05,
            temperature: Some(0.0),
        },
    ) {
        Err(AlgoError::InvalidConfig { field, .. }) if field == "pro.temperature" => Ok(()),
        other => anyhow::bail!("expected InvalidConfig(pro.temperature), got {other:?}"),
    }
}
