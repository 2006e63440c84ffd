//! Tests of the DPO family. Expected numbers come from `scripts/algo_reference.py` (case named
//! on each test), which re-implements the formulas in PyTorch float64.

use burn::tensor::Tensor;

use super::*;
use crate::error::AlgoError;
use crate::testutil::{B, TestResult, all_close, check_gradient, close, grad, host, t1};

const PC: [f32; 4] = [-12.3, -8.1, -20.5, -5.0];
const PR: [f32; 4] = [-13.0, -7.4, -22.0, -9.5];
const RC: [f32; 4] = [-12.0, -8.5, -21.0, -6.0];
const RR: [f32; 4] = [-12.5, -7.0, -21.5, -8.0];
const NC: [f32; 4] = [10.0, 7.0, 18.0, 4.0];
const NR: [f32; 4] = [12.0, 6.0, 20.0, 9.0];
const PREF: [f32; 4] = [0.9, 0.6, 1.0, 0.3];
const TOL: f64 = 2e-5;

fn batch_from(pc: Tensor<B, 1>, pr: Tensor<B, 1>) -> PairBatch<B> {
    PairBatch::new(pc, pr)
        .with_reference(t1(&RC), t1(&RR))
        .with_token_counts(t1(&NC), t1(&NR))
        .with_preference(t1(&PREF))
}

/// Runs `loss` with gradient tracking on both policy inputs; returns (loss output, grads).
fn run(
    loss: impl Fn(&PairBatch<B>) -> crate::Result<LossOutput<B, PairStats>>,
) -> anyhow::Result<(PairStats, Vec<f32>, Vec<f32>)> {
    let pc = t1(&PC).require_grad();
    let pr = t1(&PR).require_grad();
    let out = loss(&batch_from(pc.clone(), pr.clone()))?;
    let grads = out.loss.backward();
    let g = |x: &Tensor<B, 1>| -> anyhow::Result<Vec<f32>> {
        let g = x
            .grad(&grads)
            .ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        Ok(crate::ops::to_host(&g)?)
    };
    Ok((out.stats, g(&pc)?, g(&pr)?))
}

/// Gradient check over the 8 policy inputs `[chosen; rejected]`.
fn fd(loss: impl Fn(&PairBatch<B>) -> crate::Result<LossOutput<B, PairStats>>) -> TestResult {
    let x0: Vec<f32> = PC.iter().chain(&PR).copied().collect();
    check_gradient(&x0, [8], 1e-2, 2e-3, |x| {
        let b = batch_from(x.clone().narrow(0, 0, 4), x.narrow(0, 4, 4));
        Ok(loss(&b)?.loss)
    })
}

fn check_stats(s: &PairStats, loss: f64, rc: f64, rr: f64, acc: f64) -> TestResult {
    close("loss", s.loss, loss, TOL)?;
    close("reward_chosen", s.reward_chosen, rc, TOL)?;
    close("reward_rejected", s.reward_rejected, rr, TOL)?;
    close("margin", s.margin, rc - rr, TOL)?;
    close("accuracy", s.accuracy, acc, TOL)
}

// scripts/algo_reference.py case dpo_basic
#[test]
fn dpo_matches_reference() -> TestResult {
    let (s, gc, gr) = run(|b| dpo_loss(b, &DpoConfig::default()))?;
    check_stats(&s, 0.639370057, 0.04, -0.0725, 1.0)?;
    let want = [-0.0123750042, -0.0120002665, -0.0118755203, -0.0109455875];
    all_close("grad_chosen", &gc, &want, TOL)?;
    all_close("grad_rejected", &gr, &want.map(|v| -v), TOL)?;
    fd(|b| dpo_loss(b, &DpoConfig::default()))
}

// scripts/algo_reference.py case ipo_basic
#[test]
fn ipo_matches_reference() -> TestResult {
    let (s, gc, gr) = run(|b| ipo_loss(b, &IpoConfig::default()))?;
    close("loss", s.loss, 15.7325, TOL)?;
    all_close("grad_chosen", &gc, &[-2.4, -2.1, -2.0, -1.25], TOL)?;
    all_close("grad_rejected", &gr, &[2.4, 2.1, 2.0, 1.25], TOL)?;
    fd(|b| ipo_loss(b, &IpoConfig::default()))
}

// scripts/algo_reference.py case cdpo_basic
#[test]
fn cdpo_matches_reference() -> TestResult {
    let (s, gc, _) = run(|b| cdpo_loss(b, &CdpoConfig::default()))?;
    check_stats(&s, 0.650620057, 0.04, -0.0725, 1.0)?;
    let want = [
        -0.00987500417,
        -0.0095002665,
        -0.00937552031,
        -0.00844558748,
    ];
    all_close("grad_chosen", &gc, &want, TOL)?;
    fd(|b| cdpo_loss(b, &CdpoConfig::default()))
}

// scripts/algo_reference.py case rdpo_basic
#[test]
fn rdpo_matches_reference() -> TestResult {
    let (s, gc, _) = run(|b| rdpo_loss(b, &RdpoConfig::default()))?;
    close("loss", s.loss, 0.625307557, TOL)?;
    let want = [-0.0155000042, -0.0151252665, -0.0150005203, -0.0140705875];
    all_close("grad_chosen", &gc, &want, TOL)?;
    fd(|b| rdpo_loss(b, &RdpoConfig::default()))
}

// scripts/algo_reference.py case ln_dpo_basic
#[test]
fn ln_dpo_matches_reference() -> TestResult {
    let (s, gc, gr) = run(|b| ln_dpo_loss(b, &LnDpoConfig::default()))?;
    close("loss", s.loss, 0.62348866, TOL)?;
    close("reward_chosen", s.reward_chosen, 0.0762301587, TOL)?;
    close("reward_rejected", s.reward_rejected, -0.075, TOL)?;
    all_close(
        "grad_chosen",
        &gc,
        &[-0.0124270842, -0.0167531106, -0.0067612308, -0.0248321664],
        TOL,
    )?;
    all_close(
        "grad_rejected",
        &gr,
        &[0.0103559035, 0.0195452957, 0.00608510772, 0.0110365184],
        TOL,
    )?;
    fd(|b| ln_dpo_loss(b, &LnDpoConfig::default()))
}

// scripts/algo_reference.py case simpo_basic
#[test]
fn simpo_matches_reference() -> TestResult {
    let (s, gc, gr) = run(|b| simpo_loss(b, &SimpoConfig::default()))?;
    check_stats(&s, 1.07623888, -2.38801587, -2.23611111, 0.25)?;
    all_close(
        "grad_chosen",
        &gc,
        &[-0.0344273307, -0.0418600061, -0.0177932198, -0.0885826031],
        TOL,
    )?;
    all_close(
        "grad_rejected",
        &gr,
        &[0.0286894422, 0.0488366738, 0.0160138978, 0.0393700458],
        TOL,
    )?;
    fd(|b| simpo_loss(b, &SimpoConfig::default()))
}

// scripts/algo_reference.py case soft_dpo_basic
#[test]
fn soft_dpo_matches_reference() -> TestResult {
    let (s, gc, _) = run(|b| soft_dpo_loss(b, &SoftDpoConfig::default()))?;
    close("loss", s.loss, 0.691620057, TOL)?;
    all_close(
        "grad_chosen",
        &gc,
        &[-0.00987500417, -0.0020002665, -0.0118755203, 0.00655441252],
        TOL,
    )?;
    fd(|b| soft_dpo_loss(b, &SoftDpoConfig::default()))
}

// scripts/algo_reference.py case rpo_basic
#[test]
fn rpo_matches_reference() -> TestResult {
    let (s, gc, gr) = run(|b| rpo_loss(b, &RpoConfig::default()))?;
    close("loss", s.loss, 1.83337799, TOL)?;
    close("nll", s.nll.unwrap_or(f32::NAN), 1.19400794, TOL)?;
    all_close(
        "grad_chosen",
        &gc,
        &[-0.0373750042, -0.0477145522, -0.0257644092, -0.0734455875],
        TOL,
    )?;
    all_close(
        "grad_rejected",
        &gr,
        &[0.0123750042, 0.0120002665, 0.0118755203, 0.0109455875],
        TOL,
    )?;
    fd(|b| rpo_loss(b, &RpoConfig::default()))
}

fn loss_value(out: crate::Result<LossOutput<B, PairStats>>) -> anyhow::Result<f32> {
    Ok(out?.stats.loss)
}

#[test]
fn special_cases_reduce_to_dpo() -> TestResult {
    let b = batch_from(t1(&PC), t1(&PR));
    let dpo = loss_value(dpo_loss(&b, &DpoConfig { beta: 0.1 }))?;
    let cdpo0 = CdpoConfig {
        beta: 0.1,
        label_smoothing: 0.0,
    };
    close(
        "cdpo(eps=0)",
        loss_value(cdpo_loss(&b, &cdpo0))?,
        f64::from(dpo),
        1e-6,
    )?;
    let rdpo0 = RdpoConfig {
        beta: 0.1,
        epsilon: 0.0,
    };
    close(
        "rdpo(eps=0)",
        loss_value(rdpo_loss(&b, &rdpo0))?,
        f64::from(dpo),
        1e-6,
    )?;
    let hard = b.clone().with_preference(t1(&[1.0; 4]));
    close(
        "soft(p=1)",
        loss_value(soft_dpo_loss(&hard, &SoftDpoConfig { beta: 0.1 }))?,
        f64::from(dpo),
        1e-6,
    )?;
    let unit = b.clone().with_token_counts(t1(&[1.0; 4]), t1(&[1.0; 4]));
    close(
        "ln_dpo(|y|=1)",
        loss_value(ln_dpo_loss(&unit, &LnDpoConfig { beta: 0.1 }))?,
        f64::from(dpo),
        1e-6,
    )?;
    let rpo0 = RpoConfig {
        beta: 0.1,
        alpha: 0.0,
    };
    close(
        "rpo(alpha=0)",
        loss_value(rpo_loss(&b, &rpo0))?,
        f64::from(dpo),
        1e-6,
    )?;
    // Soft labels p and cDPO with eps = 1 - p agree pair by pair.
    let flat = b.clone().with_preference(t1(&[0.9; 4]));
    let c = CdpoConfig {
        beta: 0.1,
        label_smoothing: 0.1,
    };
    let soft = loss_value(soft_dpo_loss(&flat, &SoftDpoConfig { beta: 0.1 }))?;
    close(
        "soft(p=0.9) = cdpo(0.1)",
        soft,
        f64::from(loss_value(cdpo_loss(&b, &c))?),
        1e-6,
    )
}

#[test]
fn ipo_optimum_is_at_half_inverse_beta() -> TestResult {
    let beta = 0.25;
    // h = (pc - rc) - (pr - rr) = 1 / (2 beta) = 2 exactly.
    let pc = t1(&[-3.0, -10.0]).require_grad();
    let b = PairBatch::new(pc.clone(), t1(&[-5.0, -10.0]))
        .with_reference(t1(&[-4.0, -11.0]), t1(&[-4.0, -9.0]));
    let out = ipo_loss(&b, &IpoConfig { beta })?;
    close("loss at optimum", out.stats.loss, 0.0, 1e-7)?;
    all_close(
        "gradient at optimum",
        &grad(&pc, &out.loss)?,
        &[0.0, 0.0],
        1e-7,
    )
}

#[test]
fn simpo_margin_shifts_the_logit() -> TestResult {
    // With gamma = 0, SimPO is DPO without reference on per-token log-probs.
    let b = batch_from(t1(&PC), t1(&PR));
    let simpo = loss_value(simpo_loss(
        &b,
        &SimpoConfig {
            beta: 1.0,
            gamma_beta_ratio: 0.0,
        },
    ))?;
    let no_ref = PairBatch::new(t1(&PC), t1(&PR))
        .with_reference(t1(&[0.0; 4]), t1(&[0.0; 4]))
        .with_token_counts(t1(&NC), t1(&NR));
    let ln = loss_value(ln_dpo_loss(&no_ref, &LnDpoConfig { beta: 1.0 }))?;
    close(
        "simpo(gamma=0) = ln_dpo without reference",
        simpo,
        f64::from(ln),
        1e-6,
    )?;
    // A larger margin always costs more.
    let wide = loss_value(simpo_loss(
        &b,
        &SimpoConfig {
            beta: 1.0,
            gamma_beta_ratio: 1.0,
        },
    ))?;
    anyhow::ensure!(wide > simpo, "margin should increase the loss");
    Ok(())
}

#[test]
fn reduction_is_the_mean_over_pairs() -> TestResult {
    let cfg = DpoConfig::default();
    let all = loss_value(dpo_loss(&batch_from(t1(&PC), t1(&PR)), &cfg))?;
    let mut sum = 0.0f64;
    for i in 0..4 {
        let one =
            PairBatch::new(t1(&[PC[i]]), t1(&[PR[i]])).with_reference(t1(&[RC[i]]), t1(&[RR[i]]));
        sum += f64::from(loss_value(dpo_loss(&one, &cfg))?);
    }
    close("mean of single-pair losses", all, sum / 4.0, 1e-6)
}

#[test]
fn non_finite_inputs_are_errors() -> TestResult {
    let cfg = DpoConfig::default();
    let nan = batch_from(t1(&[PC[0], f32::NAN, PC[2], PC[3]]), t1(&PR));
    match dpo_loss(&nan, &cfg) {
        Err(AlgoError::NonFinite {
            input: "policy_chosen",
            index: 1,
            ..
        }) => {}
        other => anyhow::bail!("expected NonFinite(policy_chosen, 1), got {other:?}"),
    }
    let inf = PairBatch::new(t1(&PC), t1(&PR)).with_reference(t1(&RC), t1(&[f32::INFINITY; 4]));
    match dpo_loss(&inf, &cfg) {
        Err(AlgoError::NonFinite {
            input: "reference_rejected",
            ..
        }) => {}
        other => anyhow::bail!("expected NonFinite(reference_rejected), got {other:?}"),
    }
    let bad_p = batch_from(t1(&PC), t1(&PR)).with_preference(t1(&[0.5, 1.5, 0.5, 0.5]));
    anyhow::ensure!(matches!(
        soft_dpo_loss(&bad_p, &SoftDpoConfig::default()),
        Err(AlgoError::InvalidInput {
            input: "preference",
            ..
        })
    ));
    let zero_len =
        batch_from(t1(&PC), t1(&PR)).with_token_counts(t1(&NC), t1(&[1.0, 0.0, 1.0, 1.0]));
    anyhow::ensure!(matches!(
        simpo_loss(&zero_len, &SimpoConfig::default()),
        Err(AlgoError::InvalidInput {
            input: "rejected_tokens",
            ..
        })
    ));
    // A huge finite margin must not turn into inf/NaN: log-sigmoid is stable.
    let far = PairBatch::new(t1(&[-1.0e6]), t1(&[0.0])).with_reference(t1(&[0.0]), t1(&[0.0]));
    let out = dpo_loss(&far, &DpoConfig { beta: 1.0 })?;
    close("stable at h = -1e6", out.stats.loss, 1.0e6, 1e-6)?;
    Ok(())
}

#[test]
fn missing_and_misshapen_inputs_are_errors() -> TestResult {
    let bare = PairBatch::new(t1(&PC), t1(&PR));
    anyhow::ensure!(matches!(
        dpo_loss(&bare, &DpoConfig::default()),
        Err(AlgoError::MissingInput {
            objective: "dpo",
            input: "reference_chosen"
        })
    ));
    anyhow::ensure!(matches!(
        simpo_loss(&bare, &SimpoConfig::default()),
        Err(AlgoError::MissingInput {
            objective: "simpo",
            input: "chosen_tokens"
        })
    ));
    let short = PairBatch::new(t1(&PC), t1(&PR[..3])).with_reference(t1(&RC), t1(&RR));
    anyhow::ensure!(matches!(
        dpo_loss(&short, &DpoConfig::default()),
        Err(AlgoError::Shape {
            input: "policy_rejected",
            ..
        })
    ));
    let empty = PairBatch::new(t1(&[]), t1(&[])).with_reference(t1(&[]), t1(&[]));
    anyhow::ensure!(matches!(
        dpo_loss(&empty, &DpoConfig::default()),
        Err(AlgoError::InvalidInput { .. })
    ));
    Ok(())
}

#[test]
fn configs_name_their_bad_fields() -> TestResult {
    let b = batch_from(t1(&PC), t1(&PR));
    let cases: Vec<(crate::Result<LossOutput<B, PairStats>>, &str)> = vec![
        (dpo_loss(&b, &DpoConfig { beta: 0.0 }), "dpo.beta"),
        (
            rdpo_loss(
                &b,
                &RdpoConfig {
                    beta: 0.1,
                    epsilon: 0.5,
                },
            ),
            "rdpo.epsilon",
        ),
        (
            cdpo_loss(
                &b,
                &CdpoConfig {
                    beta: 0.1,
                    label_smoothing: -0.1,
                },
            ),
            "cdpo.label_smoothing",
        ),
        (
            simpo_loss(
                &b,
                &SimpoConfig {
                    beta: f64::NAN,
                    gamma_beta_ratio: 0.5,
                },
            ),
            "simpo.beta",
        ),
        (
            rpo_loss(
                &b,
                &RpoConfig {
                    beta: 0.1,
                    alpha: -1.0,
                },
            ),
            "rpo.alpha",
        ),
    ];
    for (result, field) in cases {
        match result {
            Err(AlgoError::InvalidConfig { field: f, .. }) if f == field => {}
            other => anyhow::bail!("expected InvalidConfig({field}), got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn stats_are_detached_from_the_graph() -> TestResult {
    // The loss stays a [1] tensor that can be backpropagated after stats were read.
    let out = dpo_loss(
        &batch_from(t1(&PC).require_grad(), t1(&PR)),
        &DpoConfig::default(),
    )?;
    anyhow::ensure!(out.loss.dims() == [1]);
    close(
        "loss tensor = stats.loss",
        host(&out.loss)?[0],
        f64::from(out.stats.loss),
        0.0,
    )
}

#[test]
fn an_overflowing_loss_is_an_error_not_inf() -> TestResult {
    // Finite inputs whose IPO loss overflows f32: (3e19 − 5)² ≈ 9e38 > f32::MAX.
    let b = PairBatch::new(t1(&[3.0e19]), t1(&[0.0])).with_reference(t1(&[0.0]), t1(&[0.0]));
    match ipo_loss(&b, &IpoConfig::default()) {
        Err(AlgoError::NonFiniteLoss {
            objective: "ipo", ..
        }) => Ok(()),
        other => anyhow::bail!("expected NonFiniteLoss, got {:?}", other.map(|o| o.stats)),
    }
}
