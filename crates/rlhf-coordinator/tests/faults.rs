//! Fault handling of the loop with real services on loopback: a dead rollout worker's leases
//! are expired and re-leased to a live one (nothing lost, nothing trained twice), and an
//! unreachable scorer fails the run with a clear error once the scoring deadline passes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlhf_algo::UnitKind;
use rlhf_coordinator::{CoordinatorConfig, CoordinatorDeps, DataConfig};
use rlhf_core::CancellationToken;
use rlhf_membership::{InMemoryMembership, Membership, Role};
use rlhf_reward::{ScorerConfig, ScorerServiceConfig};
use tokio::net::TcpListener;

const TTL: Duration = Duration::from_secs(3600);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2")
}

fn coordinator_config(out: &Path) -> (CoordinatorConfig, DataConfig) {
    let cfg: CoordinatorConfig = serde_json::from_value(serde_json::json!({
        "output_dir": out,
        "iterations": 2,
        "prompts_per_iteration": 8,
        "samples_per_prompt": 2,
        "prompts_per_lease": 2,
        "eval_prompts": 4,
        "lease_timeout_s": 20.0,
        "lease_attempts": 4,
        "score_deadline_s": 2.0,
        "sampling": {"max_new_tokens": 4},
    }))
    .expect("valid coordinator config");
    let data: DataConfig = serde_json::from_value(
        serde_json::json!({"builtin": "letters", "builtin_prompts": 32, "heldout_fraction": 0.0}),
    )
    .expect("valid data config");
    (cfg, data)
}

/// An address nothing listens on.
async fn dead_address() -> anyhow::Result<String> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = format!("http://{}", l.local_addr()?);
    drop(l);
    Ok(a)
}

async fn start_learner_and_worker(
    m: &Arc<dyn Membership>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    m.register(
        Role::Learner,
        "learner",
        &format!("http://{}", l.local_addr()?),
        TTL,
    )
    .await?;
    tokio::spawn(rlhf_learner::run(
        rlhf_learner::LearnerConfig::new(fixture()),
        l,
        stop.clone(),
        None,
    ));
    let r = TcpListener::bind("127.0.0.1:0").await?;
    m.register(
        Role::Rollout,
        "rollout-live",
        &format!("http://{}", r.local_addr()?),
        TTL,
    )
    .await?;
    tokio::spawn(rlhf_rollout::run(
        rlhf_rollout::RolloutConfig::new(fixture()),
        r,
        stop.clone(),
        None,
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_routed_around_and_nothing_is_lost() -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let m: Arc<dyn Membership> = Arc::new(InMemoryMembership::new());
    start_learner_and_worker(&m, &stop).await?;
    // A second worker is registered but dead: every lease it takes fails and is re-leased.
    m.register(Role::Rollout, "rollout-dead", &dead_address().await?, TTL)
        .await?;
    let s = TcpListener::bind("127.0.0.1:0").await?;
    m.register(
        Role::Scorer,
        "letters",
        &format!("http://{}", s.local_addr()?),
        TTL,
    )
    .await?;
    let scorer = ScorerServiceConfig {
        name: "letters".into(),
        scorer: serde_json::from_value::<ScorerConfig>(
            serde_json::json!({"type": "rule", "name": "letters"}),
        )?,
        max_message_bytes: 1 << 26,
    };
    let stop2 = stop.clone();
    tokio::spawn(async move {
        rlhf_reward::run(scorer, &rlhf_reward::builtin_rules(), s, stop2, None).await
    });
    let dir = tempfile::tempdir()?;
    let (cfg, data) = coordinator_config(dir.path());
    let deps = CoordinatorDeps {
        membership: m,
        listener: None,
        unit_kind: UnitKind::Pairs,
        quiet: true,
        tls: None,
        admin_auth: Default::default(),
    };
    let summary = rlhf_coordinator::run(cfg, data, deps, CancellationToken::new()).await?;
    stop.cancel();
    assert_eq!(summary.iterations, 2);
    assert_eq!(summary.ledger_violations, 0);
    let history = rlhf_data::read_history(dir.path().join("ledger.jsonl"))?.records;
    let expired = history
        .iter()
        .filter(|e| matches!(e, rlhf_data::LedgerEvent::Expired { .. }))
        .count();
    assert!(
        expired > 0,
        "the dead worker's leases must have been expired and re-leased"
    );
    let report = rlhf_data::validate(&history, rlhf_data::Expect::Finished);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let timings = rlhf_data::read_metrics(dir.path().join("timings.jsonl"))?.records;
    assert!(
        timings
            .iter()
            .any(|t| t.extra.get("lease_retries").copied().unwrap_or(0.0) > 0.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_scorer_fails_after_its_deadline() -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let m: Arc<dyn Membership> = Arc::new(InMemoryMembership::new());
    start_learner_and_worker(&m, &stop).await?;
    let dead = dead_address().await?;
    m.register(Role::Scorer, "judge", &dead, TTL).await?;
    let dir = tempfile::tempdir()?;
    let (cfg, data) = coordinator_config(dir.path());
    let deps = CoordinatorDeps {
        membership: m,
        listener: None,
        unit_kind: UnitKind::Pairs,
        quiet: true,
        tls: None,
        admin_auth: Default::default(),
    };
    let start = Instant::now();
    let err = rlhf_coordinator::run(cfg, data, deps, CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    stop.cancel();
    assert!(err.contains(&dead) && err.contains("deadline"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    Ok(())
}
