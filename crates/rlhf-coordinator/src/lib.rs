//! rlhf-coordinator: the coordinator service — the online loop.
//!
//! Each iteration leases prompts to rollout workers ([`generate`]), streams the completions to
//! a scorer ([`score`]), builds training units for the objective ([`learn`]), sends them to the
//! learner, and logs metrics, every sample (audit log) and every ledger event. Weights go from
//! the learner to the workers directly; the coordinator only names the version to use.
//!
//! Outputs under `output_dir`: `metrics.jsonl` (deterministic learning metrics: identical for
//! two synchronous runs with one seed), `timings.jsonl` (wall-clock split per phase, learner
//! idle fraction), `samples.jsonl` (audit), `ledger.jsonl` (sample history, validated at the
//! end), `summary.json`, `plot.svg`, `checkpoints/iter-N/` and `final/` (Hugging Face format).

pub mod admin;
pub mod cluster;
pub mod config;
mod driver;
pub mod generate;
pub mod learn;
pub mod live;
pub mod metrics;
pub mod resume;
pub mod score;
pub mod status;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rlhf_algo::UnitKind;
use rlhf_core::CancellationToken;
use rlhf_data::{Expect, Ledger, LoadOptions, PromptCursor, PromptRecord};
use rlhf_membership::{Membership, Role};
use rlhf_proto::security::{AdminAuth, Clients, Tls};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use config::{CoordinatorConfig, DataConfig, PairStrategy, SamplingConfig, UnitsConfig};
pub use status::SharedStatus;

use crate::driver::{Consumer, Producer, run_loop};
use crate::generate::PromptCtx;
use crate::status::Progress;

/// Coordinator errors.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("config: {0}")]
    Config(String),
    #[error("data: {0}")]
    Data(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("rollout: {0}")]
    Rollout(String),
    #[error("scoring: {0}")]
    Scoring(String),
    #[error("learner: {0}")]
    Learner(String),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("writing outputs: {0}")]
    Io(String),
}

/// What the coordinator needs besides its config.
pub struct CoordinatorDeps {
    pub membership: Arc<dyn Membership>,
    /// Where to serve the Admin and Coordinator APIs (none: not served).
    pub listener: Option<TcpListener>,
    /// The training units the learner's objective consumes.
    pub unit_kind: UnitKind,
    /// No progress bar (log lines only).
    pub quiet: bool,
    /// Mutual TLS: the roles are called over TLS with this process's certificate, and the
    /// admin API is served over TLS (clients' certificates optional there; tokens decide).
    pub tls: Option<Tls>,
    /// Who may call the admin API (open by default).
    pub admin_auth: AdminAuth,
}

/// The end-of-run summary (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub iterations: u64,
    pub policy_version: u64,
    /// Mean held-out reward of the initial policy (fixed-seed sampling).
    pub initial_heldout_reward: Option<f64>,
    /// Mean held-out reward of the final policy (same prompts and seed).
    pub final_heldout_reward: Option<f64>,
    pub heldout_prompts: usize,
    pub samples_trained: u64,
    /// Samples not trained on, by reason (stale, score_missing, non_finite_*).
    pub samples_rejected: std::collections::BTreeMap<String, u64>,
    /// Ledger events and violations found by the validator (must be 0).
    pub ledger_events: usize,
    pub ledger_violations: usize,
    pub wall_seconds: f64,
    /// Where the final policy was written.
    pub final_checkpoint: String,
}

fn load_prompts(
    data: &DataConfig,
    seed: u64,
) -> Result<(Vec<PromptRecord>, usize), CoordinatorError> {
    if let Some(task) = &data.builtin {
        let task: rlhf_data::BuiltinTask = task
            .parse()
            .map_err(|e| CoordinatorError::Config(format!("data.builtin: {e}")))?;
        return Ok((rlhf_data::builtin_task(task, data.builtin_prompts, seed), 0));
    }
    let path = data
        .prompts
        .as_ref()
        .ok_or_else(|| CoordinatorError::Config("data.prompts: missing".into()))?;
    let report = rlhf_data::load_prompts(
        path,
        LoadOptions {
            skip_malformed: data.skip_malformed,
        },
    )
    .map_err(|e| CoordinatorError::Data(e.to_string()))?;
    for skipped in &report.skipped {
        tracing::warn!(error = %skipped, "skipped a malformed record");
    }
    Ok((report.records, report.skipped.len()))
}

/// Runs the whole loop and returns its summary; serves the admin API meanwhile when a listener
/// is given. Cancelling `shutdown` stops after the current iteration and still writes the
/// final checkpoint, logs and summary.
pub async fn run(
    mut config: CoordinatorConfig,
    data: DataConfig,
    deps: CoordinatorDeps,
    shutdown: CancellationToken,
) -> Result<RunSummary, CoordinatorError> {
    config.validate(&data, deps.unit_kind)?;
    let settings = live::resolve(&mut config)?;
    let live = live::Live::new(settings, &config.output_dir);
    let start = Instant::now();
    let status = SharedStatus::default();
    status.update(|s| {
        s.state = "starting".into();
        s.iterations_total = config.iterations;
    });
    // The admin API serves until the run has ended (through a stop's last iteration).
    let serve_stop = CancellationToken::new();
    let (pause, paused) = tokio::sync::watch::channel(false);
    let evicted = cluster::Evictions::kept_in(&config.output_dir, config.resume)?;
    let server = match deps.listener {
        None => None,
        Some(listener) => {
            let limit = config.max_message_bytes;
            let admin = rlhf_proto::v1::admin_server::AdminServer::new(admin::AdminService {
                status: status.clone(),
                membership: deps.membership.clone(),
                stop: shutdown.clone(),
                pause,
                auth: deps.admin_auth.clone(),
                evicted: evicted.clone(),
                live: live.clone(),
            })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
            let members = rlhf_proto::v1::coordinator_server::CoordinatorServer::new(
                admin::MembershipService {
                    membership: deps.membership.clone(),
                    auth: deps.admin_auth.clone(),
                },
            )
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
            let addr: Option<SocketAddr> = listener.local_addr().ok();
            let mut builder = rlhf_proto::security::server(deps.tls.as_ref(), Clients::Anyone)
                .map_err(|e| CoordinatorError::Config(format!("admin API: {e}")))?;
            tracing::info!(
                ?addr,
                tls = deps.tls.is_some(),
                tokens = deps.admin_auth.is_enforced(),
                "admin API serving"
            );
            let stop = serve_stop.clone();
            Some(tokio::spawn(
                builder
                    .add_service(admin)
                    .add_service(members)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    ),
            ))
        }
    };
    let metrics = match &config.metrics_address {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CoordinatorError::Config(format!("coordinator.metrics_address {addr}: {e}"))
            })?;
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics serving at /metrics");
            Some(metrics::serve(
                listener,
                status.clone(),
                deps.membership.clone(),
                evicted.clone(),
                serve_stop.clone(),
            ))
        }
        None => None,
    };
    let cluster =
        cluster::Cluster::new(deps.membership, config.max_message_bytes, deps.tls, evicted);
    let result = run_inner(
        &config,
        &data,
        cluster,
        live,
        deps.unit_kind,
        deps.quiet,
        &status,
        &shutdown,
        paused,
        start,
    )
    .await;
    status.update(|s| match &result {
        Ok(_) => s.state = "finished".into(),
        Err(e) => {
            s.state = "failed".into();
            s.error = e.to_string();
        }
    });
    serve_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    if let Some(h) = metrics {
        let _ = h.await;
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    config: &CoordinatorConfig,
    data: &DataConfig,
    cluster: cluster::Cluster,
    live: live::Live,
    kind: UnitKind,
    quiet: bool,
    status: &SharedStatus,
    shutdown: &CancellationToken,
    paused: tokio::sync::watch::Receiver<bool>,
    start: Instant,
) -> Result<RunSummary, CoordinatorError> {
    let out = &config.output_dir;
    std::fs::create_dir_all(out)
        .map_err(|e| CoordinatorError::Io(format!("{}: {e}", out.display())))?;
    let (records, skipped) = load_prompts(data, config.seed)?;
    let (train, heldout) = rlhf_data::split(records, data.heldout_fraction, config.seed)
        .map_err(|e| CoordinatorError::Data(e.to_string()))?;
    if train.is_empty() {
        return Err(CoordinatorError::Data(
            "no training prompts (the dataset is empty or entirely held out)".into(),
        ));
    }
    tracing::info!(
        train = train.len(),
        heldout = heldout.len(),
        skipped,
        "prompts loaded"
    );
    let heldout: Vec<PromptCtx> = heldout
        .into_iter()
        .take(config.eval_prompts)
        .map(|r| PromptCtx::new(r, config.chat))
        .collect();
    let resumed = if config.resume {
        resume::latest(out)?
    } else {
        None
    };
    let (cursor, ledger, abandoned_on_resume, history_written) = match &resumed {
        Some((dir, state)) => {
            let r = resume::restore(out, config, train, dir, state)?;
            if state.iterations_done >= config.iterations
                && let Some(summary) = finished(out, dir)?
            {
                tracing::info!(
                    iterations = state.iterations_done,
                    "the run in {} already finished (summary.json): nothing to do",
                    out.display()
                );
                return Ok(summary);
            }
            (r.cursor, r.ledger, r.abandoned, r.on_disk)
        }
        None => {
            resume::forget(out)?;
            // A summary belongs to the run that wrote it (and marks it finished for a resume).
            let _ = std::fs::remove_file(out.join("summary.json"));
            let cursor = PromptCursor::new(train, config.seed)
                .map_err(|e| CoordinatorError::Data(e.to_string()))?;
            let ledger = Ledger::new(config.samples_per_prompt)
                .map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
            (cursor, ledger, 0, 0)
        }
    };
    let open = |name: &str| -> Result<_, CoordinatorError> {
        let path = out.join(name);
        // A fresh run replaces old logs of the same name; a resumed one appends.
        if resumed.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        Ok(path)
    };
    let io = |e: rlhf_data::DataError| CoordinatorError::Io(e.to_string());
    let producer = Producer {
        cfg: config.clone(),
        cluster,
        ledger: Arc::new(Mutex::new(ledger)),
        incarnation: Arc::default(),
        heldout_too_long_said: Arc::default(),
    };
    let mut consumer = Consumer {
        producer,
        kind,
        audit: rlhf_data::AuditWriter::open(open("samples.jsonl")?).map_err(io)?,
        metrics: rlhf_data::MetricsWriter::open(open("metrics.jsonl")?).map_err(io)?,
        timings: rlhf_data::MetricsWriter::open(open("timings.jsonl")?).map_err(io)?,
        history: rlhf_data::HistoryWriter::open(open("ledger.jsonl")?).map_err(io)?,
        // Events replayed from ledger.jsonl are already on disk.
        history_written,
        version: 0,
        heldout,
        status: status.clone(),
        progress: Progress::new(config.iterations, quiet),
        start,
        idle_s: 0.0,
        trained: 0,
        dropped: Default::default(),
        heldout_rewards: vec![],
        initial_heldout: None,
        last_cursor: None,
        live,
    };
    // Wait for every role to be registered.
    for role in [Role::Rollout, Role::Scorer, Role::Learner] {
        wait_for(&consumer.producer.cluster, role, shutdown).await?;
    }
    status.update(|s| {
        // A stop asked for while starting stays visible.
        if s.state == "starting" {
            s.state = "running".into();
        }
    });
    let learner = consumer.producer.cluster.members(Role::Learner).await?[0]
        .address
        .clone();
    // Workers are asked for versions of the learner's current line (incarnation) only: read
    // here, or the new one a resume starts.
    let start_at = match &resumed {
        Some((dir, state)) => {
            let (version, incarnation) =
                learn::resume(&consumer.producer.cluster, &learner, dir).await?;
            consumer.producer.set_incarnation(incarnation);
            if version != state.policy_version {
                return Err(CoordinatorError::Learner(format!(
                    "resume from {}: the learner restored version {version}, the coordinator \
                     recorded {}",
                    dir.display(),
                    state.policy_version
                )));
            }
            consumer.version = state.policy_version;
            consumer.trained = state.samples_trained;
            consumer.dropped = state.dropped.clone();
            if abandoned_on_resume > 0 {
                *consumer.dropped.entry("abandoned".into()).or_default() +=
                    abandoned_on_resume as u64;
            }
            consumer.heldout_rewards = state.heldout_rewards.clone();
            consumer.last_cursor = Some(state.cursor);
            consumer.progress.resumed_at(state.iterations_done);
            status.update(|s| {
                s.iteration = state.iterations_done;
                s.policy_version = state.policy_version;
                s.samples_trained = state.samples_trained;
            });
            state.iterations_done
        }
        None => {
            let incarnation = learn::incarnation(&consumer.producer.cluster, &learner).await?;
            consumer.producer.set_incarnation(incarnation);
            0
        }
    };
    let initial = match &resumed {
        Some((_, state)) => state.initial_heldout_reward,
        None => consumer.producer.evaluate(&consumer.heldout, 0).await?,
    };
    if let (Some(r), None) = (initial, &resumed) {
        tracing::info!(heldout_reward = r, "initial policy evaluated");
    }
    consumer.initial_heldout = initial;
    let loop_result = run_loop(&mut consumer, cursor, shutdown, paused, start_at).await;
    // Whatever happened, the ledger ends consistent and is written out.
    let abandoned = consumer
        .producer
        .ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .abandon_unfinished(if loop_result.is_ok() {
            "run stopped"
        } else {
            "run failed"
        })
        .map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
    consumer.flush_history()?;
    consumer.progress.finish();
    let done = loop_result?;
    let learner = consumer.producer.cluster.members(Role::Learner).await?[0]
        .address
        .clone();
    let final_dir = out.join("final");
    consumer.checkpoint(&learner, &final_dir, done).await?;
    let history = consumer
        .producer
        .ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .history()
        .to_vec();
    let report = rlhf_data::validate(&history, Expect::Finished);
    for v in report.violations.iter().take(10) {
        tracing::error!(violation = %v.message, "ledger violation");
    }
    let metrics = rlhf_data::read_metrics(out.join("metrics.jsonl"))
        .map_err(io)?
        .records;
    let mut heldout_points: Vec<(u64, f64)> = initial.map(|r| vec![(0, r)]).unwrap_or_default();
    heldout_points.extend(consumer.heldout_rewards.iter().copied());
    status::write_plot(&out.join("plot.svg"), &metrics, &heldout_points)
        .map_err(|e| CoordinatorError::Io(format!("plot.svg: {e}")))?;
    let mut rejected = consumer.dropped.clone();
    if abandoned > 0 {
        rejected.insert("abandoned".into(), abandoned as u64);
    }
    let summary = RunSummary {
        iterations: done,
        policy_version: consumer.version,
        initial_heldout_reward: initial,
        final_heldout_reward: consumer.heldout_rewards.last().map(|(_, r)| *r),
        heldout_prompts: consumer.heldout.len(),
        samples_trained: consumer.trained,
        samples_rejected: rejected,
        ledger_events: history.len(),
        ledger_violations: report.violations.len(),
        wall_seconds: start.elapsed().as_secs_f64(),
        final_checkpoint: final_dir.display().to_string(),
    };
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| CoordinatorError::Io(e.to_string()))?;
    std::fs::write(out.join("summary.json"), text)
        .map_err(|e| CoordinatorError::Io(format!("summary.json: {e}")))?;
    if !report.violations.is_empty() {
        return Err(CoordinatorError::Ledger(format!(
            "{} ledger violations (first: {})",
            report.violations.len(),
            report.violations[0].message
        )));
    }
    Ok(summary)
}

/// The summary of a run whose newest resume point is its `final/` checkpoint: a coordinator
/// that resumes it (a standby taking over after the leader finished, a restarted pod) has
/// nothing left to do. None when the run stopped before writing its summary.
/// The summary of the run in `config.output_dir` when it already finished (its newest resume
/// point is `final/` and `summary.json` is there): resuming it would do nothing.
pub fn finished_run(config: &CoordinatorConfig) -> Result<Option<RunSummary>, CoordinatorError> {
    let out = &config.output_dir;
    // Iterations as the run last had them (extended live: settings.json).
    let iterations = live::load(out)?.map_or(config.iterations, |s| s.iterations);
    match resume::latest(out)? {
        Some((dir, state)) if state.iterations_done >= iterations => finished(out, &dir),
        _ => Ok(None),
    }
}

fn finished(out: &Path, resume_point: &Path) -> Result<Option<RunSummary>, CoordinatorError> {
    if resume_point != out.join("final") {
        return Ok(None);
    }
    let path = out.join("summary.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CoordinatorError::Io(format!("{}: {e}", path.display()))),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| CoordinatorError::Io(format!("{}: {e}", path.display())))
}

async fn wait_for(
    cluster: &cluster::Cluster,
    role: Role,
    shutdown: &CancellationToken,
) -> Result<(), CoordinatorError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if cluster.members(role).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline || shutdown.is_cancelled() {
            return Err(CoordinatorError::Cluster(format!(
                "no {role} registered within 120 s"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
