//! The learner's training state (`learner-state/` beside a checkpoint): a learner restored
//! from it continues exactly as the one that saved it (same bits), for DPO with a refreshed
//! reference, for BCO (whose running reward mean is state too) and for PPO (critic, its
//! optimizer, the adaptive KL coefficient); without the optimizer's moments it would not; a mismatched objective or a checkpoint without state is refused.

use burn::module::AutodiffModule;
use rlhf_algo::Objective;
use rlhf_learner::{OptimSettings, Sampled, TrainState, Unit};
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, TokenBatch, Transformer};

mod common;
use common::{fixture, seq};

type B = burn::backend::Autodiff<Cpu>;

/// Two optimizer steps per update, weight decay on: every part of AdamW's state matters.
const SETTINGS: OptimSettings = OptimSettings {
    lr: 1e-2,
    weight_decay: 0.01,
    max_grad_norm: 1.0,
    batch_units: 1,
    epochs: 1,
};

fn pairs(shift: u32) -> Vec<Unit> {
    let (p, q) = ([5u32, 6, 7], [9u32, 10]);
    vec![
        Unit::Pair(
            seq(&p, &[11 + shift, 12, 13], 1.0),
            seq(&p, &[14, 15 + shift], 0.0),
            1.0,
        ),
        Unit::Pair(
            seq(&q, &[16, 17], 0.9),
            seq(&q, &[18 + shift, 19], 0.1),
            1.0,
        ),
    ]
}

fn labels(shift: u32) -> Vec<Unit> {
    let (p, q) = ([5u32, 6, 7], [9u32, 10]);
    vec![
        Unit::Binary(seq(&p, &[11 + shift, 12], 0.8 + f64::from(shift)), true),
        Unit::Binary(seq(&q, &[13, 14 + shift, 15], -0.3), false),
    ]
}

fn fresh(objective: Objective) -> anyhow::Result<TrainState<B>> {
    // Loaded anew each time: new parameter ids, as in a restarted process.
    let base = Transformer::<B>::load(&fixture(), &Default::default())?;
    Ok(TrainState::new(
        base.clone(),
        base.valid(),
        objective,
        SETTINGS,
    ))
}

fn probe(state: &TrainState<B>) -> anyhow::Result<Vec<f32>> {
    let batch = TokenBatch::unpadded(vec![5, 6, 7, 11, 12, 13, 9, 10], 1, 8)?;
    Ok(host_vec(
        state.policy.valid().token_logprobs(&batch)?.into_data(),
    )?)
}

fn resumes_exactly(
    objective: Objective,
    units: fn(u32) -> Vec<Unit>,
    refresh: bool,
) -> anyhow::Result<()> {
    let name = objective.name();
    let dir = tempfile::tempdir()?;
    let mut a = fresh(objective)?;
    a.update(&units(0))?;
    if refresh {
        a.refresh_reference()?;
    }
    a.policy.valid().save_pretrained(dir.path(), None)?;
    a.save_training_state(dir.path(), 1)?;
    a.update(&units(1))?;
    let straight = probe(&a)?;

    let mut b = fresh(objective)?;
    assert_eq!(b.load_training_state(dir.path())?, 1);
    assert_eq!(b.version, 1);
    b.update(&units(1))?;
    assert_eq!(b.version, a.version);
    assert_eq!(probe(&b)?, straight, "{name}: resumed training differs");

    // The weights alone (a fresh optimizer) do not continue the same way.
    let reloaded = Transformer::<B>::load(dir.path(), &Default::default())?;
    let reference = if refresh {
        reloaded.valid()
    } else {
        Transformer::<B>::load(&fixture(), &Default::default())?.valid()
    };
    let mut c = TrainState::new(reloaded, reference, objective, SETTINGS);
    c.update(&units(1))?;
    assert_ne!(
        probe(&c)?,
        straight,
        "{name}: the optimizer state made no difference"
    );
    Ok(())
}

#[test]
fn dpo_with_a_refreshed_reference_resumes_exactly() -> anyhow::Result<()> {
    resumes_exactly(Objective::Dpo(Default::default()), pairs, true)
}

#[test]
fn bco_resumes_exactly_with_its_running_mean() -> anyhow::Result<()> {
    let bco: Objective = serde_json::from_value(serde_json::json!({ "name": "bco" }))?;
    resumes_exactly(bco, labels, false)
}

#[test]
fn a_mismatched_or_missing_state_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = fresh(Objective::Dpo(Default::default()))?;
    a.update(&pairs(0))?;
    a.policy.valid().save_pretrained(dir.path(), None)?;
    let mut b = fresh(Objective::Dpo(Default::default()))?;
    let e = refusal(&mut b, dir.path(), "loaded a checkpoint without state")?;
    assert!(e.contains("not a resumable checkpoint"), "{e}");
    a.save_training_state(dir.path(), 1)?;
    let ipo: Objective = serde_json::from_value(serde_json::json!({ "name": "ipo" }))?;
    let mut c = fresh(ipo)?;
    let e = refusal(&mut c, dir.path(), "an IPO learner took a DPO state")?;
    assert!(e.contains("dpo") && e.contains("ipo"), "{e}");
    // A state of the format before the merged projections is refused, saying why.
    let state = dir.path().join("learner-state/state.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state)?)?;
    json["format"] = 1.into();
    std::fs::write(&state, serde_json::to_string(&json)?)?;
    let e = refusal(&mut b, dir.path(), "a format-1 state was taken")?;
    assert!(
        e.contains("state format 1") && e.contains("model.safetensors"),
        "{e}"
    );
    Ok(())
}

/// The error `state` refuses the checkpoint in `dir` with (`taken`: the failure if it does not).
fn refusal(
    state: &mut TrainState<B>,
    dir: &std::path::Path,
    taken: &str,
) -> anyhow::Result<String> {
    match state.load_training_state(dir) {
        Ok(_) => anyhow::bail!("{taken}"),
        Err(e) => Ok(e.to_string()),
    }
}

/// Rollouts of two prompts as sampled by `state`'s current policy (behaviour log-probs).
fn rollouts(state: &TrainState<B>, shift: u32) -> anyhow::Result<Vec<Unit>> {
    let policy = state.policy.valid();
    let raw = [
        seq(&[5, 6, 7], &[11 + shift, 12, 13], 1.0),
        seq(&[5, 6, 7], &[14, 15], 0.0),
        seq(&[9, 10], &[17, 18 + shift], 0.4),
    ];
    raw.into_iter()
        .map(|s| {
            let ids: Vec<u32> = s.prompt.iter().chain(&s.completion).copied().collect();
            let n = ids.len();
            let lp = host_vec(
                policy
                    .token_logprobs(&TokenBatch::unpadded(ids, 1, n)?)?
                    .into_data(),
            )?;
            Ok(Unit::Rollout(Sampled {
                behaviour_logprobs: lp[s.prompt.len() - 1..].to_vec(),
                seq: s,
                policy_version: state.version,
            }))
        })
        .collect()
}

fn fresh_ppo() -> anyhow::Result<TrainState<B>> {
    let ppo: Objective = serde_json::from_value(serde_json::json!({
        "name": "ppo",
        "kl_reward": { "name": "adaptive", "init_coef": 0.1, "target": 0.01, "horizon": 100.0 }
    }))?;
    let critic = Transformer::<B>::load(&fixture(), &Default::default())?.with_score_head(1);
    Ok(fresh(ppo)?.with_critic(critic, 1e-2)?)
}

#[test]
fn ppo_resumes_exactly_with_its_critic_and_kl_controller() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut a = fresh_ppo()?;
    a.update(&rollouts(&a, 0)?)?;
    a.policy.valid().save_pretrained(dir.path(), None)?;
    let ppo = a.ppo.as_ref().ok_or_else(|| anyhow::anyhow!("no critic"))?;
    ppo.critic
        .valid()
        .save_pretrained(&dir.path().join("critic"), None)?;
    let kl = format!("{:?}", ppo.kl);
    a.save_training_state(dir.path(), 1)?;
    let second = rollouts(&a, 1)?;
    a.update(&second)?;
    let straight = probe(&a)?;

    let mut b = fresh_ppo()?;
    assert_eq!(b.load_training_state(dir.path())?, 1);
    let restored = b.ppo.as_ref().ok_or_else(|| anyhow::anyhow!("no critic"))?;
    assert_eq!(format!("{:?}", restored.kl), kl);
    b.update(&second)?;
    assert_eq!(probe(&b)?, straight, "ppo: resumed training differs");
    let value = |s: &TrainState<B>| -> anyhow::Result<Vec<f32>> {
        let ppo = s.ppo.as_ref().ok_or_else(|| anyhow::anyhow!("no critic"))?;
        let batch = TokenBatch::unpadded(vec![5, 6, 7, 11], 1, 4)?;
        Ok(host_vec(ppo.critic.valid().values(&batch)?.into_data())?)
    };
    assert_eq!(value(&b)?, value(&a)?, "ppo: the critic differs");
    Ok(())
}
