//! Table-driven tests of the ledger and the validator: histories that pass, histories that break
//! each rule, and a cross-check that the ledger refuses exactly what the validator reports.

use rlhf_core::{PolicyVersion, SampleId};

use super::*;
use crate::hash::SplitMix64;

fn sid(iteration: u64, prompt: &str, index: u32) -> SampleId {
    SampleId {
        iteration,
        prompt_id: prompt.into(),
        sample_index: index,
    }
}

fn lease(id: u64, iteration: u64, prompt: &str, samples: u32) -> LedgerEvent {
    LedgerEvent::Leased {
        lease: LeaseId(id),
        iteration,
        prompt_id: prompt.into(),
        worker: format!("w{id}"),
        samples,
    }
}

fn expire(id: u64) -> LedgerEvent {
    LedgerEvent::Expired { lease: LeaseId(id) }
}

fn gen_(id: u64, iteration: u64, prompt: &str, index: u32) -> LedgerEvent {
    LedgerEvent::Generated {
        lease: LeaseId(id),
        sample: sid(iteration, prompt, index),
        policy_version: PolicyVersion(iteration),
    }
}

fn score(iteration: u64, prompt: &str, index: u32) -> LedgerEvent {
    LedgerEvent::Scored {
        sample: sid(iteration, prompt, index),
    }
}

fn train(iteration: u64, prompt: &str, index: u32) -> LedgerEvent {
    LedgerEvent::Trained {
        sample: sid(iteration, prompt, index),
    }
}

fn drop_(iteration: u64, prompt: &str, index: u32, reason: DropReason) -> LedgerEvent {
    LedgerEvent::Dropped {
        sample: sid(iteration, prompt, index),
        reason,
    }
}

fn too_long() -> DropReason {
    DropReason::PromptTooLong {
        detail: "300 tokens + max_new_tokens 16 exceed 256".into(),
    }
}

/// Prompt `a` of iteration 0 with 2 samples, all the way through (lease 0).
fn complete_a() -> Vec<LedgerEvent> {
    vec![
        lease(0, 0, "a", 2),
        gen_(0, 0, "a", 0),
        gen_(0, 0, "a", 1),
        score(0, "a", 0),
        score(0, "a", 1),
        train(0, "a", 0),
        train(0, "a", 1),
    ]
}

fn with(
    mut base: Vec<LedgerEvent>,
    more: impl IntoIterator<Item = LedgerEvent>,
) -> Vec<LedgerEvent> {
    base.extend(more);
    base
}

fn passing_cases() -> Vec<(&'static str, Vec<LedgerEvent>)> {
    let missing = DropReason::ScoreMissing {
        detail: "judge timed out".into(),
    };
    let nan = DropReason::NonFinite {
        detail: "reward NaN".into(),
    };
    let stale = DropReason::Stale { lag: 3, max_lag: 1 };
    let stopped = DropReason::Abandoned {
        detail: "run stopped".into(),
    };
    vec![
        ("one prompt through", complete_a()),
        (
            "re-leased after the worker died mid-prompt",
            vec![
                lease(0, 0, "b", 2),
                gen_(0, 0, "b", 0),
                expire(0),
                lease(1, 0, "b", 2),
                gen_(1, 0, "b", 1),
                score(0, "b", 1),
                score(0, "b", 0),
                train(0, "b", 0),
                train(0, "b", 1),
            ],
        ),
        (
            "every drop reason",
            vec![
                lease(0, 0, "c", 4),
                gen_(0, 0, "c", 0),
                gen_(0, 0, "c", 1),
                gen_(0, 0, "c", 2),
                gen_(0, 0, "c", 3),
                drop_(0, "c", 0, missing),
                score(0, "c", 1),
                drop_(0, "c", 1, nan),
                drop_(0, "c", 2, stale),
                score(0, "c", 3),
                drop_(0, "c", 3, DropReason::Unselected),
                lease(1, 1, "c", 1),
                expire(1),
                drop_(1, "c", 0, stopped),
                lease(2, 2, "d", 2),
                drop_(2, "d", 0, too_long()),
                drop_(2, "d", 1, too_long()),
            ],
        ),
        (
            "the same prompt in two iterations",
            with(
                complete_a(),
                [
                    lease(1, 1, "a", 1),
                    gen_(1, 1, "a", 0),
                    score(1, "a", 0),
                    train(1, "a", 0),
                ],
            ),
        ),
    ]
}

/// Histories that break one rule each, and the violations they must produce.
fn failing_cases() -> Vec<(&'static str, Vec<LedgerEvent>, Vec<ViolationKind>)> {
    use ViolationKind::*;
    let missing = || DropReason::ScoreMissing { detail: "x".into() };
    vec![
        (
            "unknown lease",
            with(complete_a(), [gen_(9, 0, "a", 0)]),
            vec![UnknownLease],
        ),
        (
            "lease id reused",
            vec![lease(0, 0, "a", 1), lease(0, 0, "b", 1)],
            vec![LeaseIdReused, Lost, Lost],
        ),
        (
            "leased twice",
            vec![lease(0, 0, "a", 1), lease(1, 0, "a", 1)],
            vec![AlreadyLeased, Lost],
        ),
        (
            "leased when complete",
            with(complete_a(), [lease(1, 0, "a", 2)]),
            vec![LeasedWhenComplete],
        ),
        (
            "expired twice",
            with(complete_a(), [expire(0)]),
            vec![LeaseNotActive],
        ),
        (
            "late submission from an expired lease",
            vec![
                lease(0, 0, "a", 1),
                expire(0),
                lease(1, 0, "a", 1),
                gen_(0, 0, "a", 0),
                score(0, "a", 0),
                train(0, "a", 0),
            ],
            vec![LateSubmission],
        ),
        (
            "submitted under another prompt's lease",
            with(
                complete_a(),
                [
                    lease(1, 0, "b", 1),
                    gen_(0, 0, "b", 0),
                    score(0, "b", 0),
                    train(0, "b", 0),
                ],
            ),
            vec![LeaseMismatch],
        ),
        (
            "sample index out of range",
            with(complete_a(), [gen_(0, 0, "a", 2)]),
            vec![SampleOutOfRange],
        ),
        (
            "scored a prompt never leased",
            with(complete_a(), [score(0, "z", 0)]),
            vec![NotLeased],
        ),
        (
            "generated twice",
            vec![
                lease(0, 0, "a", 2),
                gen_(0, 0, "a", 0),
                gen_(0, 0, "a", 0),
                gen_(0, 0, "a", 1),
            ],
            vec![GeneratedTwice, Lost, Lost],
        ),
        (
            "scored before generated",
            vec![lease(0, 0, "a", 1), score(0, "a", 0), train(0, "a", 0)],
            vec![NotGenerated],
        ),
        (
            "scored twice",
            with(complete_a(), [score(0, "a", 0)]),
            vec![AlreadyFinal],
        ),
        (
            "scored twice before training",
            vec![
                lease(0, 0, "a", 1),
                gen_(0, 0, "a", 0),
                score(0, "a", 0),
                score(0, "a", 0),
                train(0, "a", 0),
            ],
            vec![ScoredTwice],
        ),
        (
            "trained unscored",
            vec![lease(0, 0, "a", 1), gen_(0, 0, "a", 0), train(0, "a", 0)],
            vec![NotScored],
        ),
        (
            "trained twice",
            with(complete_a(), [train(0, "a", 1)]),
            vec![TrainedTwice],
        ),
        (
            "trained after drop",
            vec![
                lease(0, 0, "a", 1),
                gen_(0, 0, "a", 0),
                drop_(0, "a", 0, missing()),
                train(0, "a", 0),
            ],
            vec![TrainedAfterDrop],
        ),
        (
            "too long after generation",
            vec![
                lease(0, 0, "a", 1),
                gen_(0, 0, "a", 0),
                drop_(0, "a", 0, too_long()),
            ],
            vec![InvalidDrop],
        ),
        (
            "score-missing after scoring",
            vec![
                lease(0, 0, "a", 1),
                gen_(0, 0, "a", 0),
                score(0, "a", 0),
                drop_(0, "a", 0, missing()),
            ],
            vec![InvalidDrop],
        ),
        (
            "dropped after training",
            with(complete_a(), [drop_(0, "a", 1, DropReason::Unselected)]),
            vec![AlreadyFinal],
        ),
        (
            "lost: leased, generated, scored, never finished",
            vec![
                lease(0, 0, "a", 3),
                gen_(0, 0, "a", 0),
                gen_(0, 0, "a", 1),
                score(0, "a", 1),
            ],
            vec![Lost, Lost, Lost],
        ),
    ]
}

#[test]
fn passing_histories_validate_and_replay() -> Result<(), DataError> {
    for (name, history) in passing_cases() {
        let report = validate(&history, Expect::Finished);
        assert!(report.is_ok(), "{name}: {report}");
        assert_eq!(report.unfinished, 0, "{name}");
        Ledger::replay(2, history.clone())?;
        // Any prefix of a sound history is sound while running.
        for end in 0..history.len() {
            let prefix = validate(&history[..end], Expect::Running);
            assert!(prefix.is_ok(), "{name}[..{end}]: {prefix}");
        }
    }
    Ok(())
}

#[test]
fn failing_histories_report_each_violation() {
    for (name, history, expected) in failing_cases() {
        let report = validate(&history, Expect::Finished);
        assert_eq!(report.kinds(), expected, "{name}: {report}");
        // The ledger refuses the first event the validator flags, and nothing before it.
        let first = report
            .violations
            .iter()
            .find_map(|v| v.event_index.map(|i| (i, v.kind)));
        match (first, Ledger::replay(2, history.clone())) {
            (Some((index, kind)), Err(error)) => {
                let text = error.to_string();
                assert!(
                    text.contains(&format!("event {index}: {kind}:")),
                    "{name}: {text}"
                );
            }
            (None, Ok(_)) => assert!(expected.iter().all(|k| *k == ViolationKind::Lost), "{name}"),
            (first, replayed) => panic!("{name}: validator {first:?}, ledger {:?}", replayed.err()),
        }
    }
}

#[test]
fn ledger_refuses_illegal_transitions() -> Result<(), Box<dyn std::error::Error>> {
    let mut ledger = Ledger::new(2)?;
    let first = ledger.lease(0, "p", "w1")?;
    let s0 = sid(0, "p", 0);
    let s1 = sid(0, "p", 1);
    assert_eq!(ledger.pending(first), vec![s0.clone(), s1.clone()]);
    ledger.generated(first, &s0, PolicyVersion(0))?;
    assert_eq!(
        ledger.lease(0, "p", "w2").map_err(|e| e.kind),
        Err(ViolationKind::AlreadyLeased)
    );
    assert_eq!(
        ledger.scored(&s1).map_err(|e| e.kind),
        Err(ViolationKind::NotGenerated)
    );

    // The worker dies: its lease expires, the prompt is re-leased for the missing sample only,
    // and the zombie's late submission is refused.
    ledger.expire(first)?;
    let second = ledger.lease(0, "p", "w2")?;
    assert_eq!(ledger.pending(second), vec![s1.clone()]);
    let late = ledger.generated(first, &s1, PolicyVersion(0));
    assert_eq!(late.map_err(|e| e.kind), Err(ViolationKind::LateSubmission));
    ledger.generated(second, &s1, PolicyVersion(0))?;
    assert!(ledger.pending(second).is_empty(), "fulfilled");
    assert_eq!(
        ledger.expire(second).map_err(|e| e.kind),
        Err(ViolationKind::LeaseNotActive)
    );

    ledger.scored(&s0)?;
    ledger.scored(&s1)?;
    ledger.trained(&s0)?;
    assert_eq!(
        ledger.trained(&s0).map_err(|e| e.kind),
        Err(ViolationKind::TrainedTwice)
    );
    ledger.dropped(&s1, DropReason::Unselected)?;
    assert_eq!(
        ledger.sample_state(&s1),
        Some(SampleState::Dropped(DropReason::Unselected))
    );
    assert_eq!(ledger.sample_state(&sid(0, "p", 2)), None);

    let report = validate(ledger.history(), Expect::Finished);
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        (
            report.trained,
            report.dropped,
            report.leases,
            report.leases_expired
        ),
        (1, 1, 2, 1)
    );
    assert!(Ledger::new(0).is_err());
    Ok(())
}

#[test]
fn random_legal_runs_always_validate() -> Result<(), Box<dyn std::error::Error>> {
    for seed in 0..30 {
        let mut rng = SplitMix64::new(seed);
        let mut ledger = Ledger::new(3)?;
        for iteration in 0..3 {
            for prompt in ["a", "b", "c"] {
                let mut lease = ledger.lease(iteration, prompt, "w")?;
                loop {
                    let pending = ledger.pending(lease);
                    let Some(sample) = pending.first() else { break };
                    if rng.below(4) == 0 {
                        ledger.expire(lease)?;
                        lease = ledger.lease(iteration, prompt, "w")?;
                        continue;
                    }
                    ledger.generated(lease, sample, PolicyVersion(iteration))?;
                }
                for index in 0..3 {
                    let sample = sid(iteration, prompt, index);
                    match rng.below(3) {
                        0 => ledger
                            .dropped(&sample, DropReason::ScoreMissing { detail: "x".into() })?,
                        1 => {
                            ledger.scored(&sample)?;
                            ledger.trained(&sample)?;
                        }
                        _ => {
                            ledger.scored(&sample)?;
                            ledger.dropped(&sample, DropReason::Unselected)?;
                        }
                    }
                }
            }
        }
        let report = validate(ledger.history(), Expect::Finished);
        assert!(report.is_ok(), "seed {seed}: {report}");
        assert_eq!(report.trained + report.dropped, 27, "seed {seed}");
    }
    Ok(())
}

#[test]
fn abandoning_a_stopped_run_leaves_a_finished_history() -> Result<(), LedgerError> {
    let mut l = Ledger::new(2).map_err(|e| LedgerError {
        kind: ViolationKind::Lost,
        message: e.to_string(),
    })?;
    // p: fully trained; q: generated, one scored; r: leased only.
    let lp = l.lease(0, "p", "w")?;
    for i in 0..2 {
        l.generated(lp, &sid(0, "p", i), PolicyVersion(0))?;
        l.scored(&sid(0, "p", i))?;
        l.trained(&sid(0, "p", i))?;
    }
    let lq = l.lease(0, "q", "w")?;
    l.generated(lq, &sid(0, "q", 0), PolicyVersion(0))?;
    l.generated(lq, &sid(0, "q", 1), PolicyVersion(0))?;
    l.scored(&sid(0, "q", 0))?;
    l.lease(0, "r", "w")?;
    assert_eq!(l.unfinished().len(), 4);
    assert!(
        !validate(l.history(), Expect::Finished)
            .violations
            .is_empty()
    );
    assert_eq!(l.abandon_unfinished("stopped")?, 4);
    assert!(l.unfinished().is_empty());
    let report = validate(l.history(), Expect::Finished);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(l.sample_state(&sid(0, "p", 0)), Some(SampleState::Trained));
    Ok(())
}

#[test]
fn history_before_keeps_earlier_iterations_and_replays_clean() {
    // Iteration 0 finished; iteration 1 was in flight (one lease expired, one sample scored).
    let history = vec![
        lease(0, 0, "a", 1),
        gen_(0, 0, "a", 0),
        lease(1, 1, "b", 1),
        score(0, "a", 0),
        expire(1),
        lease(2, 1, "b", 1),
        train(0, "a", 0),
        gen_(2, 1, "b", 0),
        score(1, "b", 0),
    ];
    let kept = history_before(history.clone(), 1);
    assert_eq!(kept, history_before(kept.clone(), 1));
    assert_eq!(
        kept,
        vec![
            lease(0, 0, "a", 1),
            gen_(0, 0, "a", 0),
            score(0, "a", 0),
            train(0, "a", 0)
        ]
    );
    let mut ledger = Ledger::replay(1, kept).expect("replays");
    assert!(ledger.unfinished().is_empty());
    // Iteration 1 can be leased again from scratch.
    ledger.lease(1, "b", "w").expect("re-lease");
    assert!(history_before(history, 0).is_empty());
}
