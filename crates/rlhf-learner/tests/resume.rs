//! The learner's training state (`learner-state/` beside a checkpoint): a learner restored
//! from it continues exactly as the one that saved it (same bits), for DPO with a refreshed
//! reference and for BCO (whose running reward mean is state too); without the optimizer's
//! moments it would not; a mismatched objective or a checkpoint without state is refused.

use burn::module::AutodiffModule;
use rlhf_algo::Objective;
use rlhf_learner::{OptimSettings, TrainState, Unit};
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
    assert!(a.save_training_state(dir.path(), 1)?);
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
    let e = b
        .load_training_state(dir.path())
        .err()
        .ok_or_else(|| anyhow::anyhow!("loaded a checkpoint without state"))?;
    assert!(e.to_string().contains("not a resumable checkpoint"), "{e}");
    a.save_training_state(dir.path(), 1)?;
    let ipo: Objective = serde_json::from_value(serde_json::json!({ "name": "ipo" }))?;
    let mut c = fresh(ipo)?;
    let e = c
        .load_training_state(dir.path())
        .err()
        .ok_or_else(|| anyhow::anyhow!("an IPO learner took a DPO state"))?;
    assert!(
        e.to_string().contains("dpo") && e.to_string().contains("ipo"),
        "{e}"
    );
    Ok(())
}
