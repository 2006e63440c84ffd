//! Tests of the selection API: parsing every config name, rejecting unknown names and fields,
//! validation messages, unit kinds and dispatch.

use super::*;
use crate::binary::BinaryBatch;
use crate::error::AlgoError;
use crate::listwise::ListBatch;
use crate::pairwise::PairBatch;
use crate::policy::{GroupBatch, RolloutBatch, TokenBatch};
use crate::reward_model::{RatingBatch, RewardPairBatch};
use crate::testutil::{B, TestResult, close, t1, tn};

fn parse(json: &str) -> anyhow::Result<Objective> {
    Ok(serde_json::from_str(json)?)
}

#[test]
fn every_name_parses_with_defaults_and_round_trips() -> TestResult {
    for name in Objective::NAMES {
        let o = parse(&format!(r#"{{"name": "{name}"}}"#))?;
        anyhow::ensure!(o.name() == name, "{name} parsed as {}", o.name());
        o.validate()?;
        let back = parse(&serde_json::to_string(&o)?)?;
        anyhow::ensure!(back == o, "{name} does not round-trip");
    }
    Ok(())
}

#[test]
fn hyperparameters_parse_into_typed_fields() -> TestResult {
    anyhow::ensure!(
        parse(r#"{"name": "ipo", "beta": 0.1}"#)?
            == Objective::Ipo(crate::pairwise::IpoConfig { beta: 0.1 })
    );
    match parse(r#"{"name": "simpo", "beta": 2.5}"#)? {
        Objective::Simpo(c) => anyhow::ensure!(c.beta == 2.5 && c.gamma_beta_ratio == 0.25),
        other => anyhow::bail!("parsed {other:?}"),
    }
    match parse(r#"{"name": "vpo", "mode": "offline", "alpha": 0.5}"#)? {
        Objective::Vpo(c) => {
            anyhow::ensure!(c.mode == crate::exploration::VpoMode::Offline && c.alpha == 0.5)
        }
        other => anyhow::bail!("parsed {other:?}"),
    }
    match parse(r#"{"name": "dr_grpo", "max_tokens": 1024}"#)? {
        Objective::DrGrpo(c) => anyhow::ensure!(c.max_tokens == Some(1024) && c.kl_coef == 0.0),
        other => anyhow::bail!("parsed {other:?}"),
    }
    match parse(r#"{"name": "grpo", "reduction": "token_mean", "kl_estimator": "k1"}"#)? {
        Objective::Grpo(c) => {
            anyhow::ensure!(c.reduction == crate::TokenReduction::TokenMean && c.kl_coef == 0.04)
        }
        other => anyhow::bail!("parsed {other:?}"),
    }
    match parse(r#"{"name": "pro", "temperature": 0.5}"#)? {
        Objective::Pro(c) => anyhow::ensure!(c.temperature == Some(0.5) && c.sft_weight == 0.05),
        other => anyhow::bail!("parsed {other:?}"),
    }
    Ok(())
}

#[test]
fn unknown_names_and_fields_are_clear_errors() -> TestResult {
    let e = parse(r#"{"name": "dpoo", "beta": 0.1}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    anyhow::ensure!(
        e.contains("unknown variant `dpoo`") && e.contains("ipo"),
        "message: {e}"
    );
    let e = parse(r#"{"name": "ipo", "betta": 0.1}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    anyhow::ensure!(
        e.contains("unknown field `betta`") && e.contains("beta"),
        "message: {e}"
    );
    let e = parse(r#"{"beta": 0.1}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    anyhow::ensure!(e.contains("name"), "message: {e}");
    let e = parse(r#"{"name": "ipo", "beta": "high"}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    anyhow::ensure!(e.contains("invalid type"), "message: {e}");
    let e = parse(r#"{"name": "armo_regression", "beta": 1.0}"#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    anyhow::ensure!(e.contains("unknown field `beta`"), "message: {e}");
    Ok(())
}

#[test]
fn validate_names_the_bad_field() -> TestResult {
    let cases = [
        (r#"{"name": "rdpo", "epsilon": 0.7}"#, "rdpo.epsilon"),
        (
            r#"{"name": "simpo", "gamma_beta_ratio": -1}"#,
            "simpo.gamma_beta_ratio",
        ),
        (
            r#"{"name": "kto", "undesirable_weight": -0.5}"#,
            "kto.undesirable_weight",
        ),
        (r#"{"name": "ppo", "clip_ratio": 1.0}"#, "ppo.clip_ratio"),
        (r#"{"name": "grpo", "std_eps": 0}"#, "grpo.std_eps"),
        (r#"{"name": "sppo", "beta": 0}"#, "sppo.beta"),
        (
            r#"{"name": "dr_grpo", "max_tokens": 0}"#,
            "dr_grpo.max_tokens",
        ),
        (
            r#"{"name": "reinforce_pp", "gamma": 2}"#,
            "reinforce_pp.gamma",
        ),
        (r#"{"name": "pro", "temperature": -1}"#, "pro.temperature"),
        (r#"{"name": "lipo_lambda", "beta": 0}"#, "lipo_lambda.beta"),
        (r#"{"name": "selm", "alpha": -1}"#, "selm.alpha"),
    ];
    for (json, field) in cases {
        match parse(json)?.validate() {
            Err(AlgoError::InvalidConfig { field: f, reason }) if f == field => {
                anyhow::ensure!(
                    reason.contains("got"),
                    "reason should show the value: {reason}"
                );
            }
            other => anyhow::bail!("{json}: expected InvalidConfig({field}), got {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn kinds_tell_which_units_to_build() -> TestResult {
    let kind = |json: &str| -> anyhow::Result<UnitKind> { Ok(parse(json)?.kind()) };
    anyhow::ensure!(kind(r#"{"name": "dpo"}"#)? == UnitKind::Pairs);
    anyhow::ensure!(kind(r#"{"name": "bradley_terry"}"#)? == UnitKind::Pairs);
    anyhow::ensure!(kind(r#"{"name": "lipo_lambda"}"#)? == UnitKind::Lists);
    anyhow::ensure!(kind(r#"{"name": "bco"}"#)? == UnitKind::Binary);
    anyhow::ensure!(kind(r#"{"name": "rloo"}"#)? == UnitKind::Groups);
    anyhow::ensure!(kind(r#"{"name": "ppo"}"#)? == UnitKind::Rollouts);
    anyhow::ensure!(kind(r#"{"name": "armo_regression"}"#)? == UnitKind::Ratings);
    anyhow::ensure!(!parse(r#"{"name": "simpo"}"#)?.needs_reference());
    anyhow::ensure!(parse(r#"{"name": "grpo"}"#)?.needs_reference());
    anyhow::ensure!(!parse(r#"{"name": "grpo", "kl_coef": 0}"#)?.needs_reference());
    Ok(())
}

fn input_for(kind: UnitKind, objective: &Objective) -> ObjectiveInput<B> {
    let mask = tn(&[1.0, 1.0, 1.0, 0.0], [2, 2]);
    let tokens = TokenBatch::new(tn(&[-1.0, -0.5, -2.0, 0.0], [2, 2]), mask)
        .with_reference(tn(&[-1.1, -0.4, -2.1, 0.0], [2, 2]));
    match (kind, objective) {
        (_, Objective::BradleyTerry(_)) => ObjectiveInput::RewardPairs(RewardPairBatch {
            chosen: t1(&[1.0, 0.0]),
            rejected: t1(&[0.5, 0.5]),
            margin: None,
        }),
        (UnitKind::Pairs, _) => ObjectiveInput::Pairs(
            PairBatch::new(t1(&[-5.0, -6.0]), t1(&[-7.0, -6.5]))
                .with_reference(t1(&[-5.5, -6.0]), t1(&[-7.0, -6.0]))
                .with_token_counts(t1(&[3.0, 4.0]), t1(&[5.0, 4.0]))
                .with_preference(t1(&[0.8, 0.9])),
        ),
        (UnitKind::Lists, _) => ObjectiveInput::Lists(
            ListBatch::new(tn(&[-5.0, -6.0, -7.0], [1, 3]))
                .with_reference(tn(&[-5.5, -6.0, -6.5], [1, 3]))
                .with_token_counts(tn(&[3.0, 4.0, 5.0], [1, 3]))
                .with_scores(tn(&[1.0, 0.5, 0.0], [1, 3])),
        ),
        (UnitKind::Binary, _) => ObjectiveInput::Binary(BinaryBatch::new(
            t1(&[-5.0, -6.0]),
            t1(&[-5.5, -5.0]),
            vec![true, false],
        )),
        (UnitKind::Groups, _) => ObjectiveInput::Groups(GroupBatch {
            tokens,
            rewards: vec![1.0, 0.0],
            group_size: 2,
        }),
        (UnitKind::Rollouts, _) => ObjectiveInput::Rollouts(RolloutBatch {
            tokens,
            advantages: tn(&[0.5, -0.5, 1.0, 0.0], [2, 2]),
            values: None,
        }),
        (UnitKind::Ratings, _) => ObjectiveInput::Ratings(RatingBatch {
            predicted: tn(&[0.5, 1.0], [1, 2]),
            target: tn(&[1.0, 1.0], [1, 2]),
            mask: tn(&[1.0, 1.0], [1, 2]),
        }),
    }
}

#[test]
fn dispatch_runs_every_objective_and_rejects_mismatched_batches() -> TestResult {
    let mut state = ObjectiveState::default();
    for name in Objective::NAMES {
        let o = parse(&format!(r#"{{"name": "{name}"}}"#))?;
        let input = input_for(o.kind(), &o);
        let out = compute_loss(&o, &input, &mut state)?;
        anyhow::ensure!(
            out.stats.loss().is_finite(),
            "{name}: loss {}",
            out.stats.loss()
        );
        anyhow::ensure!(out.loss.dims() == [1], "{name}: loss shape");
        anyhow::ensure!(out.stats.metrics().first().map(|m| m.0) == Some("loss"));
        // The backward pass runs through every objective.
        let _ = out.loss.backward();
    }
    anyhow::ensure!(
        state.bco_running_mean.count == 2,
        "BCO state is threaded through dispatch"
    );
    let dpo = parse(r#"{"name": "dpo"}"#)?;
    let lists = input_for(UnitKind::Lists, &dpo);
    match compute_loss(&dpo, &lists, &mut state) {
        Err(AlgoError::WrongBatch {
            objective: "dpo",
            expected: "pairs",
            got: "lists",
        }) => {}
        other => anyhow::bail!("expected WrongBatch, got {:?}", other.map(|o| o.stats)),
    }
    let bt = parse(r#"{"name": "bradley_terry"}"#)?;
    let pairs = input_for(UnitKind::Pairs, &dpo);
    anyhow::ensure!(matches!(
        compute_loss(&bt, &pairs, &mut state),
        Err(AlgoError::WrongBatch {
            expected: "reward_pairs",
            ..
        })
    ));
    let bad = parse(r#"{"name": "ipo", "beta": -1}"#)?;
    anyhow::ensure!(matches!(
        compute_loss(&bad, &pairs, &mut state),
        Err(AlgoError::InvalidConfig { .. })
    ));
    let via_dispatch = compute_loss(&dpo, &pairs, &mut state)?.stats.loss();
    let PairsOnly(direct) = direct_dpo(&pairs)?;
    close(
        "dispatch = direct call",
        via_dispatch,
        f64::from(direct),
        0.0,
    )
}

struct PairsOnly(f32);

fn direct_dpo(input: &ObjectiveInput<B>) -> anyhow::Result<PairsOnly> {
    match input {
        ObjectiveInput::Pairs(b) => Ok(PairsOnly(
            crate::pairwise::dpo_loss(b, &Default::default())?
                .stats
                .loss,
        )),
        _ => anyhow::bail!("not pairs"),
    }
}
