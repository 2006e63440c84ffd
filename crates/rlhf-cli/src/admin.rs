//! `rlhf status`, `stop`, `pause` and `unpause`: a running coordinator's admin API, found by
//! address or through the run file (`cluster.coordinator`, or the coordinator registered in
//! etcd).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rlhf_membership::{EtcdMembership, Membership, Role};
use rlhf_proto::v1;
use rlhf_proto::v1::admin_client::AdminClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use crate::runfile::ClusterSection;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// host:port of the coordinator's admin API.
    #[arg(long, conflicts_with = "config")]
    coordinator: Option<String>,
    /// The run file: its `cluster.coordinator`, or the coordinator registered in `cluster.etcd`.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The admin API's address, as `http://host:port`.
async fn address(args: &AdminArgs) -> Result<String> {
    if let Some(a) = &args.coordinator {
        return Ok(with_scheme(a));
    }
    let Some(path) = &args.config else {
        bail!("pass --coordinator host:port or --config RUN_FILE");
    };
    let c = &ClusterSection::load(path)?;
    if !c.etcd.is_empty() {
        let m = EtcdMembership::connect(&c.etcd, &c.etcd_prefix, Duration::from_secs(10))
            .await
            .context("cluster.etcd")?;
        let found = m.members(Role::Coordinator).await?;
        return match found.first() {
            Some(member) => Ok(member.address.clone()),
            None => bail!(
                "no coordinator is registered under {} in etcd ({}): is it running with an admin \
                 address (cluster.coordinator or --listen)?",
                c.etcd_prefix,
                c.etcd.join(", ")
            ),
        };
    }
    match &c.coordinator {
        Some(a) => Ok(with_scheme(a)),
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

async fn client(args: &AdminArgs) -> Result<(AdminClient<Channel>, String)> {
    let at = address(args).await?;
    let channel = Endpoint::from_shared(at.clone())
        .with_context(|| format!("invalid coordinator address `{at}`"))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {at}"))?;
    Ok((AdminClient::new(channel), at))
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

/// The status as one JSON object (`last_metrics` and `last_timings` parsed, not strings).
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
        "members": s.members.iter().map(|m| json!({
            "role": m.role, "name": m.name, "address": m.address,
        })).collect::<Vec<_>>(),
        "error": s.error,
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
