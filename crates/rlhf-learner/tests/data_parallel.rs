//! Data parallelism: a step split over two replicas (both on the CPU here; on a GPU node each
//! on its own `cuda:N`) gives the same gradient and the same trained weights as one device on
//! the whole step, for objectives whose loss is a mean over units; also with gradient
//! checkpointing.

use burn::module::AutodiffModule;
use rlhf_algo::Objective;
use rlhf_learner::{OptimSettings, Sampled, TrainState, Unit};
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, TokenBatch, Transformer};

mod common;
use common::{fixture, seq};

type B = burn::backend::Autodiff<Cpu>;

/// Five pairs (a step of five splits 3 + 2 over two devices).
fn pairs() -> Vec<Unit> {
    (0..5u32)
        .map(|i| {
            let p = [5 + i, 6, 7 + 2 * i];
            Unit::Pair(
                seq(&p, &[11 + i, 12, 13], 1.0),
                seq(&p, &[14, 15 + 3 * i], 0.0),
                1.0,
            )
        })
        .collect()
}

/// Three groups of three samples, with uniform-free rewards.
fn groups() -> Vec<Unit> {
    (0..3u32)
        .map(|g| {
            let p = [5 + g, 9, 10 + g];
            let items = [
                (vec![11 + g, 12], 1.0),
                (vec![14, 15, 16 + g], 0.2),
                (vec![17], 0.6),
            ]
            .into_iter()
            .map(|(c, r)| Sampled {
                behaviour_logprobs: vec![-6.0; c.len()],
                seq: seq(&p, &c, r),
                policy_version: 1,
            })
            .collect();
            Unit::Group(items)
        })
        .collect()
}

/// Three ranked lists of different lengths (padded to one width inside the objective).
fn lists() -> Vec<Unit> {
    (0..3u32)
        .map(|l| {
            let p = [5 + l, 8, 9 + l];
            let ranked = [
                vec![11 + l, 12],
                vec![13],
                vec![14, 15 + l, 16],
                vec![17 + l],
            ];
            Unit::List(
                ranked
                    .into_iter()
                    .take(2 + l as usize)
                    .enumerate()
                    .map(|(k, c)| seq(&p, &c, 1.0 - k as f64 * 0.25))
                    .collect(),
            )
        })
        .collect()
}

/// Log-probs of a few probe sequences: a functional fingerprint of the weights.
fn probe(model: &Transformer<B>) -> anyhow::Result<Vec<f32>> {
    let batch = TokenBatch::unpadded(
        vec![
            5, 6, 7, 11, 12, 13, 9, 10, 14, 15, 16, 17, 8, 30, 40, 50, 60, 70,
        ],
        3,
        6,
    )?;
    Ok(host_vec(model.valid().token_logprobs(&batch)?.into_data())?)
}

#[test]
fn two_replicas_train_like_one_device() -> anyhow::Result<()> {
    let dir = fixture();
    let base = Transformer::<B>::load(&dir, &Default::default())?;
    let settings = OptimSettings {
        lr: 1e-2,
        weight_decay: 0.0,
        // No clipping: the reported norm is then the raw gradient's, compared below.
        max_grad_norm: 0.0,
        batch_units: 5,
        epochs: 3,
    };
    for (name, units) in [
        ("dpo", pairs()),
        ("simpo", pairs()),
        ("pro", lists()),
        ("grpo", groups()),
    ] {
        let objective: Objective = serde_json::from_value(serde_json::json!({ "name": name }))?;
        let mut one = TrainState::new(base.clone(), base.valid(), objective, settings);
        let mut two = TrainState::new(base.clone(), base.valid(), objective, settings)
            .with_data_parallel(vec![Default::default()])?;
        assert_eq!((one.devices(), two.devices()), (1, 2));
        let a = one.update(&units)?;
        let b = two.update(&units)?;
        assert_eq!((a.steps, b.steps), (3, 3), "{name}");
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * (1.0 + x.abs());
        assert!(
            close(a.grad_norm, b.grad_norm) && close(a.loss, b.loss) && a.tokens == b.tokens,
            "{name}: one device {a:?}\ntwo devices {b:?}"
        );
        let (pa, pb) = (probe(&one.policy)?, probe(&two.policy)?);
        let moved = pa
            .iter()
            .zip(probe(&base)?)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let diff = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            moved > 1e-3,
            "{name}: training moved the probe by only {moved}"
        );
        assert!(
            diff < 1e-5,
            "{name}: replicas differ from one device by {diff}"
        );
        // Each replica's shard under gradient checkpointing: the same steps (up to rounding).
        let mut ckpt = TrainState::new(base.clone(), base.valid(), objective, settings)
            .with_data_parallel(vec![Default::default()])?
            .with_gradient_checkpointing(true);
        let c = ckpt.update(&units)?;
        let diff = probe(&ckpt.policy)?
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            close(c.loss, b.loss) && close(c.grad_norm, b.grad_norm) && diff < 1e-5,
            "{name}: checkpointed replicas {c:?} vs {b:?}, probe {diff}"
        );
    }
    Ok(())
}

#[test]
fn ppo_stays_on_one_device() {
    let dir = fixture();
    let base = match Transformer::<B>::load(&dir, &Default::default()) {
        Ok(m) => m,
        Err(e) => panic!("fixture: {e}"),
    };
    let ppo: Objective = match serde_json::from_value(serde_json::json!({ "name": "ppo" })) {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let settings = OptimSettings {
        lr: 1e-2,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        batch_units: 4,
        epochs: 1,
    };
    let err = TrainState::new(base.clone(), base.valid(), ppo, settings)
        .with_data_parallel(vec![Default::default()])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("learner.devices") && err.contains("ppo"),
        "{err}"
    );
}

#[test]
fn the_devices_setting_is_checked_naming_the_field() {
    let dir = fixture();
    let error = |devices: &[&str], device: &str, objective: &str| {
        let mut c = rlhf_learner::LearnerConfig::new(dir.clone());
        c.devices = devices.iter().map(|d| d.to_string()).collect();
        c.device = device.to_string();
        c.objective = match serde_json::from_value(serde_json::json!({ "name": objective })) {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        c.validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(error(&["cpu", "cpu"], "", "dpo"), "");
    assert_eq!(error(&["cpu", "cpu"], "cpu", "dpo"), "");
    let cases = [
        (error(&["cpu", "gpu"], "", "dpo"), "learner.devices[1]"),
        // "mixes cpu and cuda" in a CUDA build, "built without CUDA" otherwise.
        (error(&["cpu", "cuda:1"], "", "dpo"), "learner.devices"),
        // "disagree" in a CUDA build, "built without CUDA" otherwise.
        (error(&["cpu", "cpu"], "cuda:0", "dpo"), "learner.device"),
        (error(&["cpu", "cpu"], "", "ppo"), "learner.devices"),
    ];
    for (err, needle) in cases {
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}
