//! Every objective that trains on pairs, lists, binary labels or groups can be selected by name
//! in the learner's config and runs a real update on the tiny Qwen2 fixture (finite loss,
//! changed weights); objectives the learner cannot serve yet are rejected with a clear error.
//! Group objectives: the update moves probability towards the better samples, uses the
//! samplers' log-probs on-policy (ratio 1) and importance weights for stale samples.
//! In bf16 (on burn's flex CPU backend, the one CPU backend with bf16 tensors) every objective
//! trains as in f32, with f32 master weights and a bf16 reference.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use rlhf_algo::{Objective, UnitKind};
use rlhf_learner::{OptimSettings, Sampled, Seq, TrainState, Unit};
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, Precision, TokenBatch, Transformer};

mod common;
use common::{fixture, seq};

type B = burn::backend::Autodiff<Cpu>;

/// Teacher-forced completion log-probs under `model` (what a sampler of that version records).
fn completion_logprobs<A: AutodiffBackend>(
    model: &Transformer<A>,
    s: &Seq,
) -> anyhow::Result<Vec<f32>> {
    let ids: Vec<u32> = s.prompt.iter().chain(&s.completion).copied().collect();
    let n = ids.len();
    let lp = host_vec(
        model
            .valid()
            .token_logprobs(&TokenBatch::unpadded(ids, 1, n)?)?
            .into_data(),
    )?;
    Ok(lp[s.prompt.len() - 1..].to_vec())
}

/// Two groups of three samples each, sampled by `model` as version `version`.
fn groups<A: AutodiffBackend>(model: &Transformer<A>, version: u64) -> anyhow::Result<Vec<Unit>> {
    let (p, q) = ([5u32, 6, 7], [9u32, 10]);
    let raw = [
        vec![
            seq(&p, &[11, 12, 13], 1.0),
            seq(&p, &[14, 15], 0.0),
            seq(&p, &[16], 0.5),
        ],
        vec![
            seq(&q, &[17, 18], 0.2),
            seq(&q, &[19, 20, 21, 22], 0.9),
            seq(&q, &[23], 0.1),
        ],
    ];
    raw.into_iter()
        .map(|g| {
            let items = g
                .into_iter()
                .map(|seq| {
                    Ok(Sampled {
                        behaviour_logprobs: completion_logprobs(model, &seq)?,
                        seq,
                        policy_version: version,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(Unit::Group(items))
        })
        .collect()
}

/// The samples of [`groups`] as PPO rollouts.
fn rollouts<A: AutodiffBackend>(model: &Transformer<A>, version: u64) -> anyhow::Result<Vec<Unit>> {
    Ok(groups(model, version)?
        .into_iter()
        .flat_map(|u| match u {
            Unit::Group(g) => g,
            _ => vec![],
        })
        .map(Unit::Rollout)
        .collect())
}

/// One optimizer step per update over every objective's test batch, clipped at 1.
const ONE_STEP: OptimSettings = OptimSettings {
    lr: 1e-2,
    weight_decay: 0.0,
    max_grad_norm: 1.0,
    batch_units: 8,
    epochs: 1,
};

/// The test batch of an objective's unit kind (groups and rollouts sampled by `base`).
fn batch_of<A: AutodiffBackend>(
    kind: UnitKind,
    base: &Transformer<A>,
) -> anyhow::Result<Vec<Unit>> {
    Ok(match kind {
        UnitKind::Groups => groups(base, 0)?,
        UnitKind::Rollouts => rollouts(base, 0)?,
        _ => units(kind),
    })
}

/// A critic loaded on its own from `dir`, with a fresh value head.
fn critic<A: AutodiffBackend>(dir: &Path) -> anyhow::Result<Transformer<A>> {
    Ok(Transformer::<A>::load(dir, &Default::default())?.with_score_head(1))
}

fn units(kind: UnitKind) -> Vec<Unit> {
    let (p, q) = ([5u32, 6, 7], [9u32, 10]);
    match kind {
        UnitKind::Pairs => vec![
            Unit::Pair(seq(&p, &[11, 12, 13], 1.0), seq(&p, &[14, 15], 0.0), 1.0),
            Unit::Pair(
                seq(&q, &[16, 17], 0.9),
                seq(&q, &[18, 19, 20, 21], 0.1),
                0.8,
            ),
        ],
        UnitKind::Lists => vec![
            Unit::List(vec![
                seq(&p, &[11, 12], 1.0),
                seq(&p, &[13], 0.5),
                seq(&p, &[14, 15, 16], 0.0),
            ]),
            Unit::List(vec![seq(&q, &[17], 0.7), seq(&q, &[18, 19], 0.2)]),
        ],
        UnitKind::Binary => vec![
            Unit::Binary(seq(&p, &[11, 12], 1.0), true),
            Unit::Binary(seq(&q, &[13, 14, 15], 0.0), false),
            Unit::Binary(seq(&p, &[16], 0.9), true),
        ],
        _ => vec![],
    }
}

#[test]
fn every_policy_objective_trains() -> anyhow::Result<()> {
    let dir = fixture();
    let base = Transformer::<B>::load(&dir, &Default::default())?;
    let probe = TokenBatch::unpadded(vec![5, 6, 7, 11, 12, 13], 1, 6)?;
    let before = host_vec(base.valid().token_logprobs(&probe)?.into_data())?;
    let settings = ONE_STEP;
    let mut trained = 0;
    for name in Objective::NAMES {
        let objective: Objective = serde_json::from_value(serde_json::json!({ "name": name }))?;
        let kind = objective.kind();
        let mut config = rlhf_learner::LearnerConfig::new(dir.clone());
        config.objective = objective;
        if let Some(why) = rlhf_learner::unsupported(&objective) {
            let err = config
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(name) && err.contains(why), "{name}: {err}");
            continue;
        }
        config.validate()?;
        let mut state = TrainState::new(base.clone(), base.valid(), objective, settings);
        if kind == UnitKind::Rollouts {
            state = state.with_critic(critic(&dir)?, 1e-2)?;
        }
        let batch = batch_of(kind, &base)?;
        let m = state.update(&batch)?;
        assert!(
            m.loss.is_finite() && m.steps == 1 && m.rejected_nonfinite == 0,
            "{name}: {m:?}"
        );
        let after = host_vec(state.policy.valid().token_logprobs(&probe)?.into_data())?;
        assert_ne!(before, after, "{name}: the update changed nothing");
        trained += 1;
    }
    assert!(trained >= 19, "only {trained} objectives trained");
    // A unit of the wrong kind is an error naming the objective.
    let mut state = TrainState::new(
        base.clone(),
        base.valid(),
        Objective::Dpo(Default::default()),
        settings,
    );
    let err = state
        .update(&units(UnitKind::Binary))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("dpo"), "{err}");
    Ok(())
}

#[test]
fn every_objective_trains_in_bf16_as_in_f32_with_f32_master_weights() -> anyhow::Result<()> {
    type F = burn::backend::Autodiff<burn_flex::Flex>;
    let dir = fixture();
    let base = Transformer::<F>::load(&dir, &Default::default())?;
    let bf16 = Precision::Bf16;
    let settings = ONE_STEP;
    let mut trained = 0;
    for name in Objective::NAMES {
        let objective: Objective = serde_json::from_value(serde_json::json!({ "name": name }))?;
        if rlhf_learner::unsupported(&objective).is_some() {
            continue;
        }
        let kind = objective.kind();
        let batch = batch_of(kind, &base)?;
        let mut metrics = vec![];
        for precision in [Precision::F32, bf16] {
            let policy = base.clone().with_precision(precision)?;
            let reference = base.valid().cast_weights(precision)?;
            let mut state = TrainState::new(policy, reference, objective, settings);
            if kind == UnitKind::Rollouts {
                let critic = critic::<F>(&dir)?.with_precision(precision)?;
                state = state.with_critic(critic, 1e-2)?;
            }
            let m = state.update(&batch)?;
            assert!(
                m.loss.is_finite() && m.rejected_nonfinite == 0,
                "{name} {precision}: {m:?}"
            );
            assert!(
                state
                    .policy
                    .weight_dtypes()
                    .iter()
                    .all(|d| *d == DType::F32),
                "{name}"
            );
            let want = if precision == bf16 {
                DType::BF16
            } else {
                DType::F32
            };
            assert!(
                state.reference.weight_dtypes().iter().all(|d| *d == want),
                "{name}"
            );
            metrics.push(m);
        }
        let (a, b) = (&metrics[0], &metrics[1]);
        let close = |x: f64, y: f64| (x - y).abs() <= 0.02 * x.abs().max(y.abs()).max(0.1);
        eprintln!(
            "{name}: loss {} / {}, grad norm {} / {}",
            a.loss, b.loss, a.grad_norm, b.grad_norm
        );
        assert!(
            close(a.loss, b.loss) && close(a.grad_norm, b.grad_norm),
            "{name}: f32 {a:?} bf16 {b:?}"
        );
        trained += 1;
    }
    assert!(trained >= 19, "only {trained} objectives trained");
    // Refreshing the reference keeps it in the policy's precision.
    let mut state = TrainState::new(
        base.clone().with_precision(bf16)?,
        base.valid().cast_weights(bf16)?,
        Objective::Dpo(Default::default()),
        settings,
    );
    state.update(&units(UnitKind::Pairs))?;
    state.refresh_reference()?;
    assert!(
        state
            .reference
            .weight_dtypes()
            .iter()
            .all(|d| *d == DType::BF16)
    );
    Ok(())
}

#[test]
fn every_objective_trains_with_gradient_checkpointing_as_without() -> anyhow::Result<()> {
    let dir = fixture();
    let base = Transformer::<B>::load(&dir, &Default::default())?;
    let probe = TokenBatch::unpadded(vec![5, 6, 7, 11, 12, 13], 1, 6)?;
    // Two passes: the second step runs on updated weights with AdamW's moments.
    let settings = OptimSettings {
        epochs: 2,
        ..ONE_STEP
    };
    let mut configs: Vec<serde_json::Value> = Objective::NAMES
        .iter()
        .map(|name| serde_json::json!({ "name": name }))
        .collect();
    // The entropy bonus takes another path through the logits.
    configs.push(serde_json::json!({ "name": "grpo", "entropy_coef": 0.01 }));
    let mut trained = 0;
    for config in configs {
        let objective: Objective = serde_json::from_value(config.clone())?;
        if rlhf_learner::unsupported(&objective).is_some() {
            continue;
        }
        let kind = objective.kind();
        let batch = batch_of(kind, &base)?;
        let mut results = vec![];
        for checkpointing in [false, true] {
            let mut state = TrainState::new(base.clone(), base.valid(), objective, settings)
                .with_gradient_checkpointing(checkpointing);
            if kind == UnitKind::Rollouts {
                state = state.with_critic(critic(&dir)?, 1e-2)?;
            }
            let m = state.update(&batch)?;
            assert!(m.steps == 2 && m.loss.is_finite(), "{config}: {m:?}");
            let after = host_vec(state.policy.valid().token_logprobs(&probe)?.into_data())?;
            let critic_out = match &state.ppo {
                Some(ppo) => host_vec(ppo.critic.valid().values(&probe)?.into_data())?,
                None => vec![],
            };
            results.push((m.loss, m.grad_norm, after, critic_out));
        }
        // The same arithmetic in other backward passes: equal up to rounding.
        let (a, b) = (&results[0], &results[1]);
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * (1.0 + x.abs());
        let max_diff = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            close(a.0, b.0) && close(a.1, b.1),
            "{config}: loss and grad norm {:?} vs {:?}",
            (a.0, a.1),
            (b.0, b.1)
        );
        let (lp, values) = (max_diff(&a.2, &b.2), max_diff(&a.3, &b.3));
        assert!(lp < 1e-4 && values < 1e-4, "{config}: {lp} {values}");
        trained += 1;
    }
    assert!(trained >= 20, "only {trained} objectives trained");
    Ok(())
}

fn extra(m: &rlhf_learner::UpdateMetrics, key: &str) -> Option<f64> {
    m.extra.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

#[test]
fn group_updates_follow_the_advantages_and_correct_stale_samples() -> anyhow::Result<()> {
    let dir = fixture();
    let base = Transformer::<B>::load(&dir, &Default::default())?;
    let settings = OptimSettings {
        lr: 1e-2,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        batch_units: 2,
        epochs: 1,
    };
    let objective: Objective = serde_json::from_value(serde_json::json!({ "name": "grpo" }))?;
    let mut state = TrainState::new(base.clone(), base.valid(), objective, settings);
    let fresh = groups(&base, 0)?;
    let m = state.update(&fresh)?;
    // On-policy: the samplers' log-probs are π_old, so the first step's ratio is 1 and nothing
    // is clipped; no importance weights.
    let ratio = extra(&m, "ratio_mean").unwrap_or(f64::NAN);
    assert!((ratio - 1.0).abs() < 1e-4, "ratio {ratio}: {m:?}");
    assert_eq!(extra(&m, "clip_fraction"), Some(0.0), "{m:?}");
    assert_eq!(extra(&m, "importance_weight"), None, "{m:?}");
    assert_eq!(state.version, 1);
    // The best sample of each group gained log-prob against the worst.
    let Unit::Group(g) = &fresh[0] else {
        anyhow::bail!("not a group")
    };
    let sum = |m: &Transformer<B>, s: &Seq| -> anyhow::Result<f32> {
        Ok(completion_logprobs(m, s)?.iter().sum())
    };
    let (best, worst) = (&g[0].seq, &g[1].seq);
    let gain_best = sum(&state.policy, best)? - sum(&base, best)?;
    let gain_worst = sum(&state.policy, worst)? - sum(&base, worst)?;
    assert!(
        gain_best > 0.0 && gain_best > gain_worst,
        "best {gain_best}, worst {gain_worst}"
    );
    // The same samples again, now one version stale: π_old comes from a forward pass of the
    // current policy, and the sampler's log-probs give truncated importance weights ≠ 1.
    let m = state.update(&fresh)?;
    let ratio = extra(&m, "ratio_mean").unwrap_or(f64::NAN);
    let weight = extra(&m, "importance_weight").unwrap_or(f64::NAN);
    assert!((ratio - 1.0).abs() < 1e-4, "ratio {ratio}: {m:?}");
    assert!(
        weight.is_finite() && (weight - 1.0).abs() > 1e-4,
        "weight {weight}: {m:?}"
    );
    // Malformed groups are errors naming the problem.
    let mut bad = groups(&base, 2)?;
    if let Unit::Group(g) = &mut bad[1] {
        g.pop();
    }
    let err = state
        .update(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("one size"), "{err}");
    let mut bad = groups(&base, 2)?;
    if let Unit::Group(g) = &mut bad[0] {
        g[0].behaviour_logprobs.pop();
    }
    let err = state
        .update(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("behaviour log-probs"), "{err}");
    Ok(())
}

#[test]
fn ppo_trains_policy_and_critic_with_an_adaptive_kl_penalty() -> anyhow::Result<()> {
    let dir = fixture();
    let base = Transformer::<B>::load(&dir, &Default::default())?;
    let settings = OptimSettings {
        lr: 1e-2,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        batch_units: 3,
        epochs: 2,
    };
    let objective: Objective = serde_json::from_value(serde_json::json!({
        "name": "ppo",
        "kl_reward": { "name": "adaptive", "init_coef": 0.2, "target": 0.001, "horizon": 10 }
    }))?;
    // A critic is required, and only PPO takes one.
    let no_critic = TrainState::new(base.clone(), base.valid(), objective, settings);
    let err = {
        let mut s = no_critic;
        s.update(&rollouts(&base, 0)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err.contains("critic"), "{err}");
    let dpo = Objective::Dpo(Default::default());
    let err = TrainState::new(base.clone(), base.valid(), dpo, settings)
        .with_critic(critic(&dir)?, 1e-2)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("only `ppo`"), "{err}");
    let err = TrainState::new(base.clone(), base.valid(), objective, settings)
        .with_critic(Transformer::<B>::load(&dir, &Default::default())?, 1e-2)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("score head"), "{err}");

    let mut state = TrainState::new(base.clone(), base.valid(), objective, settings)
        .with_critic(critic(&dir)?, 1e-2)?;
    let data = rollouts(&base, 0)?;
    let value_of = |state: &TrainState<B>, s: &Seq| -> anyhow::Result<Vec<f32>> {
        let ids: Vec<u32> = s.prompt.iter().chain(&s.completion).copied().collect();
        let n = ids.len();
        let critic = &state.ppo.as_ref().expect("critic").critic;
        let v = host_vec(
            critic
                .valid()
                .values(&TokenBatch::unpadded(ids, 1, n)?)?
                .into_data(),
        )?;
        Ok(v[s.prompt.len() - 1..n - 1].to_vec())
    };
    let Unit::Rollout(best) = &data[4] else {
        anyhow::bail!("not a rollout")
    };
    assert!(value_of(&state, &best.seq)?.iter().all(|&v| v == 0.0));
    let m = state.update(&data)?;
    assert_eq!(m.steps, 4, "{m:?}");
    assert!(extra(&m, "value_loss").is_some_and(|v| v > 0.0), "{m:?}");
    assert!(
        extra(&m, "critic_grad_norm").is_some_and(|v| v > 0.0),
        "{m:?}"
    );
    // The critic learned something: values of the best sample (reward 0.9) rose from 0.
    let v = value_of(&state, &best.seq)?;
    assert!(v.iter().sum::<f32>() > 0.0, "{v:?}");
    // The policy moved towards the best sample of its prompt, away from the worst (0.1).
    let Unit::Rollout(worst) = &data[5] else {
        anyhow::bail!("not a rollout")
    };
    let sum = |m: &Transformer<B>, s: &Seq| -> anyhow::Result<f32> {
        Ok(completion_logprobs(m, s)?.iter().sum())
    };
    let gain_best = sum(&state.policy, &best.seq)? - sum(&base, &best.seq)?;
    let gain_worst = sum(&state.policy, &worst.seq)? - sum(&base, &worst.seq)?;
    assert!(
        gain_best > gain_worst,
        "best {gain_best}, worst {gain_worst}"
    );
    // Adaptive β: the first update's samples came from the reference itself (KL 0 < target),
    // so β shrinks; the second update's come from the trained policy, whose log-ratio to the
    // reference on these (fixed, not sampled) tokens is non-zero.
    let beta0 = extra(&m, "kl_coef").unwrap_or(f64::NAN);
    let m = state.update(&rollouts(&state.policy, 1)?)?;
    let beta1 = extra(&m, "kl_coef").unwrap_or(f64::NAN);
    assert!(beta1 < beta0, "kl_coef {beta0} -> {beta1}");
    assert!(
        extra(&m, "sampled_kl").is_some_and(|k| k.is_finite() && k.abs() > 1e-3),
        "{m:?}"
    );
    Ok(())
}
