//! Prometheus metrics of a run (`coordinator.metrics_address`): `GET /metrics` in the text
//! exposition format, rendered from the same status the admin API serves, so a dashboard and
//! `rlhf status` never disagree.
//!
//! - `rlhf_state{state="..."}` 1 for the current state (`starting`, `running`, `pausing`,
//!   `paused`, `stopping`, `finished`, `failed`: [`crate::status::STATES`]);
//! - `rlhf_iteration`, `rlhf_iterations_planned`, `rlhf_policy_version`;
//! - `rlhf_samples_trained_total`, `rlhf_samples_rejected_total` (counters);
//! - `rlhf_members{role="..."}`: live members per role, and `rlhf_members_evicted{role="..."}`
//!   those of them evicted through the admin API;
//! - `rlhf_last_iteration{name="..."}`: every number of the last line of `metrics.jsonl`
//!   (reward mean and std, loss, KL, margin, accuracy, grad norm, held-out reward, ...);
//! - `rlhf_last_timing{name="..."}`: every number of the last line of `timings.jsonl`
//!   (seconds per phase, tokens/s, learner idle fraction, lease retries).

use std::fmt::Write as _;
use std::sync::Arc;

use rlhf_core::CancellationToken;
use rlhf_membership::{Membership, Role};
use rlhf_proto::v1;
use tokio::net::TcpListener;

use crate::status::SharedStatus;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every finite number of a JSON object, by key; numbers under `extra` by their own key.
fn numbers(json: &str) -> Vec<(String, f64)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return vec![];
    };
    let mut out = vec![];
    for (k, v) in &map {
        match v {
            serde_json::Value::Object(extra) if k == "extra" => {
                for (k, v) in extra {
                    if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                        out.push((k.clone(), x));
                    }
                }
            }
            _ => {
                if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                    out.push((k.clone(), x));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text of a status and the member counts (role, live, evicted).
pub fn render(s: &v1::StatusResponse, members: &[(Role, usize, usize)]) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "rlhf_state",
        "gauge",
        "1 for the run's current state.",
    );
    for state in crate::status::STATES {
        let on = u8::from(s.state == state);
        let _ = writeln!(out, "rlhf_state{{state=\"{state}\"}} {on}");
    }
    for (name, kind, help, value) in [
        (
            "rlhf_iteration",
            "gauge",
            "Iterations completed.",
            s.iteration,
        ),
        (
            "rlhf_iterations_planned",
            "gauge",
            "Iterations the run plans.",
            s.iterations_total,
        ),
        (
            "rlhf_policy_version",
            "gauge",
            "The newest policy version.",
            s.policy_version,
        ),
        (
            "rlhf_samples_trained_total",
            "counter",
            "Samples trained on.",
            s.samples_trained,
        ),
        (
            "rlhf_samples_rejected_total",
            "counter",
            "Samples rejected (non-finite, unscored, stale, abandoned).",
            s.samples_rejected,
        ),
    ] {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(&mut out, "rlhf_members", "gauge", "Live members per role.");
    for (role, n, _) in members {
        let _ = writeln!(out, "rlhf_members{{role=\"{role}\"}} {n}");
    }
    family(
        &mut out,
        "rlhf_members_evicted",
        "gauge",
        "Live members per role evicted through the admin API (given no work).",
    );
    for (role, _, evicted) in members {
        let _ = writeln!(out, "rlhf_members_evicted{{role=\"{role}\"}} {evicted}");
    }
    for (name, help, json) in [
        (
            "rlhf_last_iteration",
            "The last iteration's metrics (metrics.jsonl).",
            &s.last_metrics_json,
        ),
        (
            "rlhf_last_timing",
            "The last iteration's timings (timings.jsonl).",
            &s.last_timings_json,
        ),
    ] {
        let values = numbers(json);
        if values.is_empty() {
            continue;
        }
        family(&mut out, name, "gauge", help);
        for (k, v) in values {
            let _ = writeln!(out, "{name}{{name=\"{}\"}} {v}", label(&k));
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled.
pub fn serve(
    listener: TcpListener,
    status: SharedStatus,
    membership: Arc<dyn Membership>,
    evicted: crate::cluster::Evictions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (status, membership) = (status.clone(), membership.clone());
            let evicted = evicted.clone();
            async move {
                let mut members = vec![];
                for role in [Role::Learner, Role::Rollout, Role::Scorer] {
                    let live = membership.members(role).await.unwrap_or_default();
                    let out = live
                        .iter()
                        .filter(|m| evicted.contains(role, &m.name))
                        .count();
                    members.push((role, live.len(), out));
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    render(&status.get(), &members),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!("metrics endpoint: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_line_is_a_name_labels_and_a_number() {
        let s = v1::StatusResponse {
            state: "running".into(),
            iteration: 3,
            iterations_total: 10,
            policy_version: 3,
            samples_trained: 40,
            samples_rejected: 2,
            last_metrics_json: r#"{"iteration":2,"reward_mean":0.25,"loss":null,"extra":{"heldout_reward":0.5,"we\"ird":1}}"#.into(),
            last_timings_json: r#"{"tokens_per_s":1234.5,"extra":{"train_s":0.75}}"#.into(),
            ..Default::default()
        };
        let text = render(&s, &[(Role::Rollout, 2, 1), (Role::Scorer, 1, 0)]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("rlhf_"), "{line}");
        }
        for want in [
            "rlhf_state{state=\"running\"} 1",
            "rlhf_state{state=\"failed\"} 0",
            "rlhf_iteration 3",
            "rlhf_samples_trained_total 40",
            "rlhf_members{role=\"rollout\"} 2",
            "rlhf_members_evicted{role=\"rollout\"} 1",
            "rlhf_members_evicted{role=\"scorer\"} 0",
            "rlhf_last_iteration{name=\"reward_mean\"} 0.25",
            "rlhf_last_iteration{name=\"heldout_reward\"} 0.5",
            "rlhf_last_iteration{name=\"we\\\"ird\"} 1",
            "rlhf_last_timing{name=\"tokens_per_s\"} 1234.5",
            "rlhf_last_timing{name=\"train_s\"} 0.75",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} not in:\n{text}");
        }
        // A missing number (null) is left out, not written as NaN.
        assert!(!text.contains("\"loss\""), "{text}");
        // Every state has its series.
        for state in crate::status::STATES {
            let s = v1::StatusResponse {
                state: state.into(),
                ..Default::default()
            };
            let want = format!("rlhf_state{{state=\"{state}\"}} 1");
            assert!(render(&s, &[]).lines().any(|l| l == want), "{want}");
        }
    }
}
