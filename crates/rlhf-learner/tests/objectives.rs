//! Every objective that trains on pairs, lists or binary labels can be selected by name in the
//! learner's config and runs a real update on the tiny Qwen2 fixture (finite loss, changed
//! weights); objectives the learner cannot serve yet are rejected with a clear error.

use std::path::Path;

use burn::module::AutodiffModule;
use rlhf_algo::{Objective, UnitKind};
use rlhf_learner::{OptimSettings, Seq, TrainState, Unit};
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, TokenBatch, Transformer};

type B = burn::backend::Autodiff<Cpu>;

fn seq(prompt: &[u32], completion: &[u32], reward: f64) -> Seq {
    Seq {
        prompt: prompt.to_vec(),
        completion: completion.to_vec(),
        reward,
    }
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
fn every_pair_list_and_binary_objective_trains() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2");
    let base = Transformer::<B>::load(&dir, &Default::default())?;
    let probe = TokenBatch::unpadded(vec![5, 6, 7, 11, 12, 13], 1, 6)?;
    let before = host_vec(base.valid().token_logprobs(&probe)?.into_data())?;
    let settings = OptimSettings {
        lr: 1e-2,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        batch_units: 8,
        epochs: 1,
    };
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
        let m = state.update(&units(kind))?;
        assert!(
            m.loss.is_finite() && m.steps == 1 && m.rejected_nonfinite == 0,
            "{name}: {m:?}"
        );
        let after = host_vec(state.policy.valid().token_logprobs(&probe)?.into_data())?;
        assert_ne!(before, after, "{name}: the update changed nothing");
        trained += 1;
    }
    assert!(trained >= 14, "only {trained} objectives trained");
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
