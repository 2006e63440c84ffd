//! `rlhf status`, `stop`, `pause` and `unpause`: a running coordinator's admin API, found by
//! address or through the run file (`cluster.coordinator`, or the coordinator registered in
//! etcd), over TLS when `cluster.tls` (or `--ca`) says so, with a token when one is given.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rlhf_membership::{EtcdMembership, Membership, Role};
use rlhf_proto::security::{BearerToken, Tls, endpoint};
use rlhf_proto::v1;
use rlhf_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::runfile::ClusterSection;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// host:port of the coordinator's admin API.
    #[arg(long, conflicts_with = "config")]
    coordinator: Option<String>,
    /// The run file: its `cluster.coordinator`, or the coordinator registered in `cluster.etcd`;
    /// its `cluster.tls` (the certificate and key are optional here) and `cluster.etcd_tls`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --coordinator: speak TLS, checking the coordinator's certificate against this CA
    /// (PEM).
    #[arg(long, requires = "coordinator")]
    ca: Option<PathBuf>,
    /// With --ca: the name to check in the coordinator's certificate instead of the host of
    /// --coordinator (e.g. the chart's tls.serverName behind `kubectl port-forward`).
    #[arg(long, requires = "ca")]
    server_name: Option<String>,
    /// A file holding the admin token (when the coordinator has `cluster.admin_tokens`); else
    /// the token in the environment variable RLHF_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// The admin API's address, and the TLS to reach it with.
async fn address(args: &AdminArgs) -> Result<(String, Option<Tls>)> {
    if let Some(a) = &args.coordinator {
        let tls = match &args.ca {
            Some(ca) => Some(Tls::load(ca, None, args.server_name.clone()).context("--ca")?),
            None if a.starts_with("https://") => {
                bail!("--coordinator {a}: pass --ca with the CA that signed its certificate")
            }
            None => None,
        };
        return Ok((with_scheme(a), tls));
    }
    let Some(path) = &args.config else {
        bail!("pass --coordinator host:port or --config RUN_FILE");
    };
    let c = &ClusterSection::load(path)?;
    let sec = c
        .security(crate::runfile::Process::AdminClient)
        .with_context(|| format!("{}", path.display()))?;
    if !c.etcd.is_empty() {
        let timeout = Duration::from_secs(10);
        let m = EtcdMembership::connect(&c.etcd, &c.etcd_prefix, timeout, sec.etcd_tls.as_ref())
            .await
            .context("cluster.etcd")?;
        let found = m.members(Role::Coordinator).await?;
        return match found.first() {
            Some(member) => Ok((member.address.clone(), sec.tls)),
            None => bail!(
                "no coordinator is registered under {} in etcd ({}): is it running with an admin \
                 address (cluster.coordinator or --listen)?",
                c.etcd_prefix,
                c.etcd.join(", ")
            ),
        };
    }
    match &c.coordinator {
        Some(a) => Ok((with_scheme(a), sec.tls)),
        None => bail!(
            "{}: cluster.coordinator is not set (and no cluster.etcd): pass --coordinator",
            path.display()
        ),
    }
}

fn with_scheme(a: &str) -> String {
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// The admin token: `--token-file`, else `RLHF_TOKEN`, else none.
fn token(args: &AdminArgs) -> Result<Option<String>> {
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("--token-file {}", p.display()))?,
        ),
        None => std::env::var("RLHF_TOKEN").ok(),
    };
    match token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => bail!("the admin token is empty (--token-file or RLHF_TOKEN)"),
        t => Ok(t),
    }
}

type Admin = AdminClient<InterceptedService<Channel, BearerToken>>;

async fn client(args: &AdminArgs) -> Result<(Admin, String)> {
    let (at, tls) = address(args).await?;
    let bearer = BearerToken::new(token(args)?.as_deref())?;
    let channel = endpoint(&at, tls.as_ref())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {at}"))?;
    Ok((AdminClient::with_interceptor(channel, bearer), at))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A JSON text as a value (null when empty; the text itself when it does not parse).
fn parsed(text: &str) -> serde_json::Value {
    if text.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// The status as one JSON object (`last_metrics`, `last_timings` and `settings` parsed, not
/// strings).
fn status_json(s: &v1::StatusResponse) -> serde_json::Value {
    json!({
        "state": s.state,
        "iteration": s.iteration,
        "iterations_total": s.iterations_total,
        "policy_version": s.policy_version,
        "samples_trained": s.samples_trained,
        "samples_rejected": s.samples_rejected,
        "last_metrics": parsed(&s.last_metrics_json),
        "last_timings": parsed(&s.last_timings_json),
        "settings": parsed(&s.settings_json),
        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
        "error": s.error,
    })
}

fn member_json(m: &v1::MemberStatus) -> serde_json::Value {
    json!({ "role": m.role, "name": m.name, "address": m.address, "evicted": m.evicted })
}

#[derive(Debug, Args)]
pub struct EvictArgs {
    /// The member's name, as `rlhf status` lists it (e.g. rollout-1, scorer-0).
    name: String,
    /// Readmit an evicted member instead.
    #[arg(long)]
    readmit: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `rlhf evict`: prints the evicted members after the request.
pub fn evict(args: EvictArgs) -> Result<()> {
    runtime()?.block_on(async {
        let (mut c, at) = client(&args.admin).await?;
        let r = c
            .evict(v1::EvictRequest {
                name: args.name.clone(),
                readmit: args.readmit,
            })
            .await
            .with_context(|| format!("Admin.Evict {} at {at}", args.name))?
            .into_inner();
        let evicted: Vec<_> = r.evicted.iter().map(member_json).collect();
        println!("{}", json!({ "evicted": evicted }));
        Ok(())
    })
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// `key=value`, one or more: iterations, eval_every, checkpoint_every, lr (the policy's
    /// learning rate from the next update on).
    #[arg(required = true)]
    settings: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `rlhf set`: prints the live settings after the changes (applied in order; the first that is
/// refused stops).
pub fn set(args: SetArgs) -> Result<()> {
    let mut pairs = Vec::new();
    for s in &args.settings {
        let Some((k, v)) = s.split_once('=') else {
            bail!("`{s}`: expected key=value (iterations, eval_every, checkpoint_every, lr)");
        };
        pairs.push((k.trim().to_string(), v.trim().to_string()));
    }
    runtime()?.block_on(async {
        let (mut c, at) = client(&args.admin).await?;
        let mut last = String::new();
        for (key, value) in pairs {
            last = c
                .set(v1::SetRequest {
                    key: key.clone(),
                    value: value.clone(),
                })
                .await
                .with_context(|| format!("Admin.Set {key}={value} at {at}"))?
                .into_inner()
                .settings_json;
        }
        println!("{}", parsed(&last));
        Ok(())
    })
}

/// `rlhf status`.
pub fn status(args: AdminArgs) -> Result<()> {
    runtime()?.block_on(async {
        let (mut c, at) = client(&args).await?;
        let s = c
            .status(v1::StatusRequest {})
            .await
            .with_context(|| format!("Admin.Status at {at}"))?
            .into_inner();
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
        Ok(())
    })
}

/// `rlhf stop`.
pub fn stop(args: AdminArgs) -> Result<()> {
    runtime()?.block_on(async {
        let (mut c, at) = client(&args).await?;
        let r = c
            .stop(v1::StopRequest {})
            .await
            .with_context(|| format!("Admin.Stop at {at}"))?
            .into_inner();
        println!("{}", json!({ "state": r.state }));
        Ok(())
    })
}

/// `rlhf pause` (`on`) and `rlhf unpause`.
pub fn pause(args: AdminArgs, on: bool) -> Result<()> {
    runtime()?.block_on(async {
        let (mut c, at) = client(&args).await?;
        let r = if on {
            c.pause(v1::PauseRequest {})
                .await
                .with_context(|| format!("Admin.Pause at {at}"))?
        } else {
            c.unpause(v1::UnpauseRequest {})
                .await
                .with_context(|| format!("Admin.Unpause at {at}"))?
        }
        .into_inner();
        println!("{}", json!({ "state": r.state }));
        Ok(())
    })
}
