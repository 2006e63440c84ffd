//! Scoring phase: completions stream to a scorer in batches; every sample gets a value or an
//! explicit error. Transport failures are retried (on any live scorer) until the deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rlhf_membership::Role;
use rlhf_proto::v1;

use crate::CoordinatorError;
use crate::cluster::Cluster;
use crate::generate::PromptCtx;

/// Items per ScoreRequest message.
const SCORE_BATCH: usize = 64;

/// Why a sample has no reward.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    /// `non_finite`, `timeout`, `invalid`, ... (the scorer's error kind).
    pub kind: String,
    pub message: String,
}

/// The reward of one completion, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutcome {
    pub reward: Result<f64, Missing>,
    pub components: HashMap<String, f64>,
    pub provenance: String,
}

/// Scores completions (in order) against their prompts.
#[tracing::instrument(name = "score", skip_all, fields(completions = completions.len()))]
pub async fn score(
    cluster: &Cluster,
    prompts: &HashMap<&str, &PromptCtx>,
    completions: &[v1::Completion],
    deadline: Duration,
) -> Result<Vec<ScoreOutcome>, CoordinatorError> {
    let items: Vec<v1::ScoreItem> = completions
        .iter()
        .map(|c| {
            let pid =
                c.id.as_ref()
                    .map(|i| i.prompt_id.as_str())
                    .unwrap_or_default();
            let p = prompts.get(pid);
            v1::ScoreItem {
                id: c.id.clone(),
                prompt: p.map(|p| p.text.clone()).unwrap_or_default(),
                messages: p.map(|p| p.wire.messages.clone()).unwrap_or_default(),
                completion: c.text.clone(),
                answer: p.and_then(|p| p.record.answer.clone()),
                metadata_json: p
                    .map(|p| serde_json::Value::Object(p.record.metadata.clone()).to_string())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let scorers = cluster.members(Role::Scorer).await?;
        let scorer = &scorers[(attempt as usize - 1) % scorers.len()];
        let left = deadline.saturating_sub(start.elapsed());
        let result = tokio::time::timeout(left, score_once(cluster, &scorer.address, &items)).await;
        let err = match result {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => e,
            Err(_) => "deadline reached".to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(CoordinatorError::Scoring(format!(
                "scorer `{}` at {} failed within the {:.0}s deadline after {attempt} attempts: {err}",
                scorer.name,
                scorer.address,
                deadline.as_secs_f64()
            )));
        }
        tracing::warn!(scorer = %scorer.name, attempt, error = %err, "scoring failed; retrying");
        let backoff = Duration::from_millis(200 * u64::from(attempt.min(10)));
        tokio::time::sleep(backoff.min(deadline.saturating_sub(start.elapsed()))).await;
    }
}

async fn score_once(
    cluster: &Cluster,
    address: &str,
    items: &[v1::ScoreItem],
) -> Result<Vec<ScoreOutcome>, String> {
    let mut client = cluster.reward(address).map_err(|e| e.to_string())?;
    let requests: Vec<v1::ScoreRequest> = items
        .chunks(SCORE_BATCH)
        .map(|c| v1::ScoreRequest { items: c.to_vec() })
        .collect();
    let expected = requests.iter().map(|r| r.items.len()).collect::<Vec<_>>();
    let mut stream = client
        .score(futures::stream::iter(requests))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut out = Vec::with_capacity(items.len());
    let mut batch = 0;
    while let Some(resp) = stream.next().await {
        let resp = resp.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        if expected.get(batch) != Some(&resp.results.len()) {
            return Err(format!(
                "scorer answered batch {batch} with {} results",
                resp.results.len()
            ));
        }
        batch += 1;
        for r in resp.results {
            let reward = match (r.value, r.error.is_empty()) {
                (Some(v), true) if v.is_finite() => Ok(v),
                (Some(v), true) => Err(Missing {
                    kind: "non_finite".into(),
                    message: format!("non-finite score {v}"),
                }),
                (_, false) => Err(Missing {
                    kind: if r.error_kind.is_empty() {
                        "unknown".into()
                    } else {
                        r.error_kind
                    },
                    message: r.error,
                }),
                (None, true) => Err(Missing {
                    kind: "invalid".into(),
                    message: "the scorer returned neither a value nor an error".into(),
                }),
            };
            out.push(ScoreOutcome {
                reward,
                components: r.components.into_iter().collect(),
                provenance: r.provenance,
            });
        }
    }
    if out.len() != items.len() {
        return Err(format!("{} results for {} samples", out.len(), items.len()));
    }
    Ok(out)
}
