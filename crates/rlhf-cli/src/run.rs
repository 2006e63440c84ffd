//! `rlhf run` (every role in this process, real gRPC on loopback ports, in-memory membership)
//! and `rlhf coordinator | rollout | scorer | learner` (one role per process: static addresses
//! from the run file's `[cluster]` section, or, with `cluster.etcd`, members that register
//! themselves in etcd and a coordinator that finds them there).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rlhf_core::CancellationToken;
use rlhf_membership::{EtcdMembership, InMemoryMembership, Membership, Registration, Role};
use rlhf_proto::security::url;
use tokio::net::TcpListener;

use crate::runfile::{Process, RunFile, Security};

/// Registrations of static or in-process members never expire on their own.
const STATIC_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The run file (TOML), e.g. examples/quickstart.toml.
    config: PathBuf,
    /// Override coordinator.iterations.
    #[arg(long)]
    iterations: Option<u64>,
    /// Override coordinator.output_dir.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Override coordinator.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override coordinator.max_policy_lag (0 = synchronous).
    #[arg(long)]
    max_policy_lag: Option<u64>,
    /// Override learner.objective: a name (`grpo`: its default hyperparameters) or a JSON
    /// object (`'{"name": "dpo", "beta": 0.2}'`).
    #[arg(long)]
    objective: Option<String>,
    /// Sample from the initial policy only (the offline-DPO baseline).
    #[arg(long)]
    offline: bool,
    /// Continue from the newest resumable checkpoint in the output folder (coordinator.resume).
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// The run file (TOML) with a `[cluster]` section.
    #[arg(long)]
    config: PathBuf,
    /// Which rollout worker or scorer of `[cluster]` this process is (0-based; on Kubernetes
    /// the Helm chart passes a StatefulSet pod's ordinal through `RLHF_INDEX`).
    #[arg(long, env = "RLHF_INDEX", default_value_t = 0)]
    index: usize,
    /// host:port to listen on, instead of this role's address in `[cluster]` (port 0: any free
    /// port).
    #[arg(long)]
    listen: Option<String>,
    /// host:port the other roles reach this process at, registered in etcd (default: the
    /// address it listens on). Only with `cluster.etcd`.
    #[arg(long)]
    advertise: Option<String>,
    /// Coordinator only: continue from the newest resume point in the output folder, else start
    /// afresh (`coordinator.resume`); a run that already finished is left as it is.
    #[arg(long)]
    resume: bool,
    /// Coordinator only: serve Prometheus metrics at host:port (`coordinator.metrics_address`).
    #[arg(long)]
    metrics_address: Option<String>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// `rlhf run`.
pub fn run(args: RunArgs) -> Result<()> {
    let mut f = RunFile::load(&args.config)?;
    if let Some(n) = args.iterations {
        f.coordinator.iterations = n;
    }
    if let Some(d) = args.output_dir {
        f.coordinator.output_dir = d;
    }
    if let Some(s) = args.seed {
        f.coordinator.seed = s;
    }
    if let Some(l) = args.max_policy_lag {
        f.coordinator.max_policy_lag = l;
    }
    if args.resume {
        f.coordinator.resume = true;
    }
    f.coordinator.offline |= args.offline;
    if let Some(o) = &args.objective {
        f.learner.objective = parse_objective(o)?;
        f.learner
            .validate()
            .with_context(|| format!("--objective {o}"))?;
    }
    f.coordinator
        .validate(&f.data, f.learner.objective.kind())
        .with_context(|| format!("{}: after command-line overrides", args.config.display()))?;
    let base = args.config.parent().map(PathBuf::from).unwrap_or_default();
    runtime()?.block_on(run_all(f, args.quiet, base))
}

/// `--objective`: a bare name or a JSON object.
fn parse_objective(text: &str) -> Result<rlhf_algo::Objective> {
    let value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).with_context(|| format!("--objective: not JSON: {text}"))?
    } else {
        serde_json::json!({ "name": text.trim() })
    };
    serde_json::from_value(value).with_context(|| {
        format!(
            "--objective {text}: expected one of {}",
            rlhf_algo::Objective::NAMES.join(", ")
        )
    })
}

/// Evaluates the initial policy, every checkpoint and the final policy with `[eval]`.
async fn evaluate_checkpoints(f: &RunFile, base: PathBuf) -> Result<()> {
    let out = &f.coordinator.output_dir;
    let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let mut policies = vec![("initial".to_string(), abs(f.model.path.clone()))];
    let mut checkpoints: Vec<PathBuf> = std::fs::read_dir(out.join("checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    checkpoints.sort();
    for c in checkpoints {
        let name = c
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        policies.push((name, abs(c)));
    }
    policies.push(("final".to_string(), abs(out.join("final"))));
    let config = f.eval_config(policies, &base)?;
    eprintln!("evaluating {} policies ([eval]) ...", config.policies.len());
    let report = rlhf_eval::run_eval(&config, |line| tracing::info!("eval: {line}")).await?;
    print!("{}", report.to_table());
    Ok(())
}

async fn run_all(f: RunFile, quiet: bool, base: PathBuf) -> Result<()> {
    let sec = f.cluster.security(Process::Coordinator)?;
    let tls = sec.tls.clone();
    let shutdown = CancellationToken::new();
    rlhf_core::lifecycle::cancel_on_signals(shutdown.clone());
    let membership: Arc<dyn Membership> = Arc::new(InMemoryMembership::new());
    let services = CancellationToken::new();
    let mut tasks = vec![];

    let learner = bind("127.0.0.1:0").await?;
    let addr = url(&learner.local_addr()?.to_string(), tls.as_ref());
    membership
        .register(Role::Learner, "learner", &addr, STATIC_TTL)
        .await?;
    tasks.push(tokio::spawn({
        let (c, s, t) = (f.learner.clone(), services.clone(), tls.clone());
        async move {
            rlhf_learner::run(c, learner, s, t)
                .await
                .map_err(anyhow::Error::from)
                .context("learner")
        }
    }));
    for i in 0..f.rollout.worker_count() {
        let l = bind("127.0.0.1:0").await?;
        let addr = url(&l.local_addr()?.to_string(), tls.as_ref());
        let c = f.rollout_config(i);
        membership
            .register(Role::Rollout, &c.name, &addr, STATIC_TTL)
            .await?;
        let (s, t) = (services.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            rlhf_rollout::run(c, l, s, t)
                .await
                .map_err(anyhow::Error::from)
                .context("rollout worker")
        }));
    }
    let scorer = bind("127.0.0.1:0").await?;
    let addr = url(&scorer.local_addr()?.to_string(), tls.as_ref());
    membership
        .register(Role::Scorer, &f.scorer.name, &addr, STATIC_TTL)
        .await?;
    tasks.push(tokio::spawn({
        let (c, s, t) = (f.scorer.clone(), services.clone(), tls.clone());
        async move {
            let registry = rlhf_reward::builtin_rules();
            rlhf_reward::run(c, &registry, scorer, s, t)
                .await
                .map_err(anyhow::Error::from)
                .context("scorer")
        }
    }));
    let admin = bind(f.cluster.coordinator.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let deps = rlhf_coordinator::CoordinatorDeps {
        membership: membership.clone(),
        listener: Some(admin),
        unit_kind: f.learner.objective.kind(),
        quiet,
        tls: sec.tls,
        admin_auth: sec.admin,
    };
    // A service that dies early fails the run instead of leaving the coordinator waiting.
    let mut coordinator = Box::pin(rlhf_coordinator::run(
        f.coordinator.clone(),
        f.data.clone(),
        deps,
        shutdown.clone(),
    ));
    let mut watch = Box::pin(futures::future::select_all(tasks));
    let result = tokio::select! {
        r = &mut coordinator => r.map_err(anyhow::Error::from),
        (r, _, rest) = &mut watch => {
            shutdown.cancel();
            for t in rest { t.abort(); }
            match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("a service stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("a service panicked: {e}")),
            }
        }
    };
    services.cancel();
    let summary = result?;
    let out = &f.coordinator.output_dir;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if f.eval.is_some() {
        evaluate_checkpoints(&f, base).await?;
    }
    eprintln!(
        "run finished: {} iterations, held-out reward {} -> {}; outputs in {} (metrics.jsonl, samples.jsonl, plot.svg, final/)",
        summary.iterations,
        summary
            .initial_heldout_reward
            .map(|r| format!("{r:.4}"))
            .unwrap_or_else(|| "-".into()),
        summary
            .final_heldout_reward
            .map(|r| format!("{r:.4}"))
            .unwrap_or_else(|| "-".into()),
        out.display()
    );
    Ok(())
}

/// Waits up to two minutes for `addr` (host:port) to accept TCP connections.
async fn wait_reachable(addr: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if reachable(addr).await {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{addr} did not accept connections within 120 s (is the role process running?)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn addr_of(list: &[String], index: usize, role: &str) -> Result<String> {
    list.get(index).cloned().with_context(|| {
        format!(
            "cluster.{role}: no address at index {index} (the run file lists {}; or pass --listen)",
            list.len()
        )
    })
}

/// The membership of distributed mode (`cluster.etcd`), if the run file names etcd.
async fn etcd_membership(f: &RunFile, sec: &Security) -> Result<Option<Arc<EtcdMembership>>> {
    let c = &f.cluster;
    if c.etcd.is_empty() {
        return Ok(None);
    }
    let timeout = Duration::from_secs(10);
    let m = EtcdMembership::connect(&c.etcd, &c.etcd_prefix, timeout, sec.etcd_tls.as_ref())
        .await
        .context("cluster.etcd")?;
    Ok(Some(Arc::new(m)))
}

/// Whether `address` (`host:port`, `http://` or `https://host:port`) accepts a connection
/// within a second.
async fn reachable(address: &str) -> bool {
    let addr = rlhf_proto::security::authority(address);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The coordinator's members in distributed mode: waits until etcd lists at least one learner,
/// rollout worker and scorer that accepts connections (a dead member's registration lingers
/// until its lease expires).
async fn wait_for_members(m: &dyn Membership, f: &RunFile) -> Result<()> {
    let c = &f.cluster;
    let deadline = std::time::Instant::now() + Duration::from_secs(c.wait_members_s);
    let mut said = std::time::Instant::now();
    loop {
        let mut missing = Vec::new();
        let mut found = Vec::new();
        for role in [Role::Learner, Role::Rollout, Role::Scorer] {
            let mut live = Vec::new();
            for member in m.members(role).await? {
                if reachable(&member.address).await {
                    live.push(member);
                }
            }
            if live.is_empty() {
                missing.push(role.to_string());
            }
            found.extend(live);
        }
        if missing.is_empty() {
            eprintln!(
                "members: {}",
                found
                    .iter()
                    .map(|m| format!("{} {} at {}", m.role, m.name, m.address))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no {} registered under {} in etcd ({}) and reachable within \
                 cluster.wait_members_s = {} s",
                missing.join(", no "),
                c.etcd_prefix,
                c.etcd.join(", "),
                c.wait_members_s
            );
        }
        if said.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "waiting for members to register: no reachable {} yet",
                missing.join(", no ")
            );
            said = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The coordinator's members in static mode: the run file's `[cluster]` addresses.
async fn static_members(f: &RunFile, sec: &Security) -> Result<Arc<dyn Membership>> {
    let c = &f.cluster;
    let membership: Arc<dyn Membership> = Arc::new(InMemoryMembership::new());
    let learner = c.learner.clone().context("cluster.learner: missing")?;
    membership
        .register(
            Role::Learner,
            "learner",
            &url(&learner, sec.tls.as_ref()),
            STATIC_TTL,
        )
        .await?;
    if c.rollout.is_empty() || c.scorer.is_empty() {
        bail!(
            "cluster.rollout and cluster.scorer must list at least one address each (or name cluster.etcd)"
        );
    }
    for (role, list) in [(Role::Rollout, &c.rollout), (Role::Scorer, &c.scorer)] {
        for (i, a) in list.iter().enumerate() {
            membership
                .register(
                    role,
                    &format!("{role}-{i}"),
                    &url(a, sec.tls.as_ref()),
                    STATIC_TTL,
                )
                .await?;
        }
    }
    // Static members may still be loading their models: wait until each accepts.
    for a in c
        .rollout
        .iter()
        .chain(&c.scorer)
        .chain(std::iter::once(&learner))
    {
        wait_reachable(a).await?;
    }
    Ok(membership)
}

/// `rlhf learner | rollout | scorer | coordinator`.
pub fn role(role: Role, args: RoleArgs) -> Result<()> {
    let f = RunFile::load(&args.config)?;
    if role != Role::Coordinator {
        if args.resume {
            bail!("--resume: only `rlhf coordinator` resumes a run (it restores the other roles)");
        }
        if args.metrics_address.is_some() {
            bail!("--metrics-address: only `rlhf coordinator` serves metrics");
        }
    }
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        rlhf_core::lifecycle::cancel_on_signals(shutdown.clone());
        let c = &f.cluster;
        let process = if role == Role::Coordinator {
            Process::Coordinator
        } else {
            Process::Role
        };
        let sec = c.security(process)?;
        let etcd = etcd_membership(&f, &sec).await?;
        if role == Role::Coordinator {
            return coordinate(&f, &args, etcd, sec, shutdown).await;
        }
        let (addr, name) = match role {
            Role::Learner => (
                args.listen
                    .clone()
                    .or_else(|| c.learner.clone())
                    .context("cluster.learner: missing (or pass --listen)")?,
                "learner".to_string(),
            ),
            Role::Rollout => (
                listen_at(&args, &c.rollout, "rollout")?,
                format!("rollout-{}", args.index),
            ),
            _ => (
                listen_at(&args, &c.scorer, "scorer")?,
                format!("scorer-{}", args.index),
            ),
        };
        if role == Role::Rollout {
            let devices = f.rollout.devices.len();
            if devices > 0 && args.index >= devices {
                bail!(
                    "--index {}: rollout.devices lists {devices} devices (indices 0..{devices})",
                    args.index
                );
            }
        }
        let listener = bind(&addr).await?;
        let registration = match etcd {
            Some(e) => {
                if c.exit_after_run && exit_after_run(&e, c, shutdown.clone()).await? {
                    return Ok(());
                }
                let at = advertised(&args, &listener.local_addr()?.to_string(), &sec);
                let m: Arc<dyn Membership> = e;
                Some(register(&m, role, &name, &at, &f).await?)
            }
            None => None,
        };
        let tls = sec.tls;
        let served = match role {
            Role::Learner => rlhf_learner::run(f.learner.clone(), listener, shutdown, tls)
                .await
                .map_err(anyhow::Error::from),
            Role::Rollout => {
                rlhf_rollout::run(f.rollout_config(args.index), listener, shutdown, tls)
                    .await
                    .map_err(anyhow::Error::from)
            }
            _ => {
                let mut cfg = f.scorer.clone();
                cfg.name = format!("{}-{}", cfg.name, args.index);
                rlhf_reward::run(cfg, &rlhf_reward::builtin_rules(), listener, shutdown, tls)
                    .await
                    .map_err(anyhow::Error::from)
            }
        };
        leave(registration).await;
        served
    })
}

/// The run-end mark the coordinator leaves in etcd (`{etcd_prefix}/run/ended`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RunEnd {
    #[serde(default)]
    run_id: Option<String>,
    iterations: u64,
}

impl RunEnd {
    /// Whether this mark ends the run of a role with `run_id` (any mark when it has none).
    fn ends(&self, run_id: &Option<String>) -> bool {
        run_id.is_none() || self.run_id == *run_id
    }
}

/// `cluster.exit_after_run`: true when this role's run (`cluster.run_id`) has already ended (it
/// should exit now); else stops it later through `shutdown`, as SIGTERM would, once a run
/// ends after this moment, as the coordinator marks it in etcd (checked every 2 s).
async fn exit_after_run(
    e: &Arc<EtcdMembership>,
    c: &crate::runfile::ClusterSection,
    shutdown: CancellationToken,
) -> Result<bool> {
    let since = e.revision().await.context("cluster.etcd")?;
    let run_id = c.run_id.clone();
    let parse = |note: &str| serde_json::from_str::<RunEnd>(note).ok();
    if run_id.is_some()
        && let Some((_, note)) = e.run_end().await.context("cluster.etcd")?
        && parse(&note).is_some_and(|end| end.run_id == run_id)
    {
        eprintln!(
            "run {} already ended: exiting (cluster.exit_after_run)",
            run_id.as_deref().unwrap_or_default()
        );
        return Ok(true);
    }
    let e = e.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            match e.run_end().await {
                Ok(Some((at, note)))
                    if at > since && parse(&note).is_some_and(|end| end.ends(&run_id)) =>
                {
                    eprintln!("the run ended ({note}): exiting (cluster.exit_after_run)");
                    shutdown.cancel();
                    return;
                }
                Ok(_) => {}
                Err(err) => tracing::debug!("checking for the run's end: {err}"),
            }
        }
    });
    Ok(false)
}

fn listen_at(args: &RoleArgs, list: &[String], what: &str) -> Result<String> {
    match &args.listen {
        Some(a) => Ok(a.clone()),
        None => addr_of(list, args.index, what),
    }
}

/// `rlhf coordinator`: static members, or in distributed mode leadership, members from etcd and
/// restarts of a failed run from its newest resume point (`cluster.restarts`).
async fn coordinate(
    f: &RunFile,
    args: &RoleArgs,
    etcd: Option<Arc<EtcdMembership>>,
    sec: Security,
    shutdown: CancellationToken,
) -> Result<()> {
    let c = &f.cluster;
    let listen = args.listen.as_ref().or(c.coordinator.as_ref());
    let mut config = f.coordinator.clone();
    config.resume |= args.resume;
    if let Some(a) = &args.metrics_address {
        config.metrics_address = Some(a.clone());
    }
    let marker = etcd.clone();
    let (membership, registration, leadership, mut listener, admin_at) = match etcd {
        Some(e) => {
            // The admin port is bound (port 0 picks one) but closed again until this process
            // leads: a standby refuses connections, so a readiness check or a Kubernetes Service
            // only ever reaches the leader.
            let admin_at = match listen {
                Some(a) => Some(bind(a).await?.local_addr()?),
                None => None,
            };
            let at = match admin_at {
                Some(a) => advertised(args, &a.to_string(), &sec),
                None => format!("pid {}", std::process::id()),
            };
            let leadership = lead(&e, &at, f, &mut config, &shutdown).await?;
            // A standby that takes over a run that already finished needs no members (they
            // may have left: cluster.exit_after_run).
            if config.resume
                && let Some(summary) = rlhf_coordinator::finished_run(&config)?
            {
                eprintln!(
                    "the run in {} already finished: nothing to do",
                    config.output_dir.display()
                );
                // Again, in case its leader died before marking it.
                mark_ended(&e, c, &summary).await;
                leadership.resign().await;
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(());
            }
            let m: Arc<dyn Membership> = e;
            wait_for_members(m.as_ref(), f).await?;
            // Registered before the port opens: once it accepts connections (ready), `rlhf
            // status --config` finds it in etcd.
            let registration = match admin_at {
                Some(_) => Some(register(&m, Role::Coordinator, "coordinator", &at, f).await?),
                None => None,
            };
            let listener = bind_admin(admin_at).await?;
            (m, registration, Some(leadership), listener, admin_at)
        }
        None => {
            let listener = match listen {
                Some(a) => Some(bind(a).await?),
                None => None,
            };
            let admin_at = listener.as_ref().map(|l| l.local_addr()).transpose()?;
            (
                static_members(f, &sec).await?,
                None,
                None,
                listener,
                admin_at,
            )
        }
    };
    let mut restarts = 0;
    let summary = loop {
        let deps = rlhf_coordinator::CoordinatorDeps {
            membership: membership.clone(),
            listener: listener.take(),
            unit_kind: f.learner.objective.kind(),
            quiet: false,
            tls: sec.tls.clone(),
            admin_auth: sec.admin.clone(),
        };
        let result =
            rlhf_coordinator::run(config.clone(), f.data.clone(), deps, shutdown.clone()).await;
        let Err(e) = &result else { break result };
        let resumable = rlhf_coordinator::resume::latest(&config.output_dir)
            .ok()
            .flatten()
            .is_some();
        if leadership.is_none()
            || restarts >= c.restarts
            || shutdown.is_cancelled()
            || !transient(e)
            || !resumable
        {
            break result;
        }
        restarts += 1;
        eprintln!(
            "the run failed ({e}); restart {restarts} of cluster.restarts = {}: continuing from \
             its newest resume point once every role is back",
            c.restarts
        );
        config.resume = true;
        wait_for_members(membership.as_ref(), f).await?;
        listener = bind_admin(admin_at).await?;
    };
    leave(registration).await;
    if let Some(l) = leadership {
        // The run ended (finished, or stopped with its final checkpoint): roles with
        // cluster.exit_after_run leave.
        if let (Ok(s), Some(e)) = (&summary, &marker) {
            mark_ended(e, c, s).await;
        }
        l.resign().await;
    }
    println!("{}", serde_json::to_string_pretty(&summary?)?);
    Ok(())
}

/// Marks the run's end in etcd for roles with `cluster.exit_after_run` (a failure is logged:
/// they then stay until stopped).
async fn mark_ended(
    e: &EtcdMembership,
    c: &crate::runfile::ClusterSection,
    s: &rlhf_coordinator::RunSummary,
) {
    let end = RunEnd {
        run_id: c.run_id.clone(),
        iterations: s.iterations,
    };
    let marked = match serde_json::to_string(&end) {
        Ok(note) => e.mark_run_ended(&note).await.map_err(anyhow::Error::from),
        Err(err) => Err(err.into()),
    };
    if let Err(err) = marked {
        tracing::warn!("marking the run's end in etcd: {err}");
    }
}

/// The admin listener at the address chosen at start (none: the admin API is not served).
async fn bind_admin(at: Option<std::net::SocketAddr>) -> Result<Option<TcpListener>> {
    match at {
        Some(a) => Ok(Some(bind(&a.to_string()).await?)),
        None => Ok(None),
    }
}

/// Failures a restart can cure: a role died or could not be reached.
fn transient(e: &rlhf_coordinator::CoordinatorError) -> bool {
    use rlhf_coordinator::CoordinatorError as E;
    matches!(
        e,
        E::Learner(_) | E::Rollout(_) | E::Scoring(_) | E::Cluster(_)
    )
}

/// Leads the run (`{etcd_prefix}/leader/coordinator`), waiting as a standby while another
/// coordinator does. A standby that takes over continues the run from its newest resume point
/// (`coordinator.resume`); losing leadership stops the run after its current iteration.
async fn lead(
    e: &EtcdMembership,
    at: &str,
    f: &RunFile,
    config: &mut rlhf_coordinator::config::CoordinatorConfig,
    shutdown: &CancellationToken,
) -> Result<rlhf_membership::Leadership> {
    let waited = std::sync::atomic::AtomicBool::new(false);
    let ttl = Duration::from_secs(f.cluster.member_ttl_s);
    let leadership = e
        .lead("coordinator", at, ttl, |holder| {
            if !waited.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!(
                    "standby: the coordinator at {holder} leads this run; taking over if it stops"
                );
            }
        })
        .await
        .context("leader election in etcd")?;
    if waited.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("taking over the run: continuing from its newest resume point");
        config.resume = true;
    } else {
        eprintln!("leading the run");
    }
    let lost = leadership.lost();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        lost.await;
        eprintln!("lost leadership (etcd unreachable): stopping after this iteration");
        stop.cancel();
    });
    Ok(leadership)
}

/// `--advertise`, else the address this process listens on, as a URL (`https://` with TLS).
fn advertised(args: &RoleArgs, listening: &str, sec: &Security) -> String {
    url(
        args.advertise.as_deref().unwrap_or(listening),
        sec.tls.as_ref(),
    )
}

async fn register(
    m: &Arc<dyn Membership>,
    role: Role,
    name: &str,
    address: &str,
    f: &RunFile,
) -> Result<Registration> {
    let ttl = Duration::from_secs(f.cluster.member_ttl_s);
    Registration::start(m.clone(), role, name, address, ttl)
        .await
        .with_context(|| format!("registering {role} `{name}` in etcd"))
}

/// Removes this process's registration on its way out (a failure only costs the TTL).
async fn leave(r: Option<Registration>) {
    if let Some(r) = r
        && let Err(e) = r.leave().await
    {
        tracing::warn!("leaving the membership: {e} (the registration expires by itself)");
    }
}
