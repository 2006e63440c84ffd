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

/// Items per ScoreRequest message (more when one prompt has more samples).
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
    policy: &v1::PolicyRef,
    evaluation: bool,
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
                evaluation,
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
        let result =
            tokio::time::timeout(left, score_once(cluster, &scorer.address, &items, policy)).await;
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
    policy: &v1::PolicyRef,
) -> Result<Vec<ScoreOutcome>, String> {
    let mut client = cluster.reward(address).map_err(|e| e.to_string())?;
    let requests: Vec<v1::ScoreRequest> = batches(items, SCORE_BATCH)
        .into_iter()
        .map(|c| v1::ScoreRequest {
            items: c.to_vec(),
            policy: Some(policy.clone()),
        })
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

/// Splits `items` into runs of at most `size` that never cut between two consecutive samples of
/// the same prompt (scorers that compare a prompt's samples, pairwise judges and human labels,
/// see all of them at once); a prompt with more than `size` samples is a batch of its own.
fn batches(items: &[v1::ScoreItem], size: usize) -> Vec<&[v1::ScoreItem]> {
    let prompt = |i: &v1::ScoreItem| i.id.as_ref().map(|id| (id.iteration, id.prompt_id.clone()));
    let mut out = Vec::new();
    let mut start = 0;
    let mut k = 0;
    while k < items.len() {
        let mut end = k + 1;
        while end < items.len() && prompt(&items[end]) == prompt(&items[k]) {
            end += 1;
        }
        if end - start > size && k > start {
            out.push(&items[start..k]);
            start = k;
        }
        k = end;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(prompt: &str, index: u32) -> v1::ScoreItem {
        v1::ScoreItem {
            id: Some(v1::SampleId {
                iteration: 1,
                prompt_id: prompt.into(),
                sample_index: index,
            }),
            ..Default::default()
        }
    }

    fn shape(items: &[v1::ScoreItem], size: usize) -> Vec<Vec<String>> {
        batches(items, size)
            .iter()
            .map(|b| {
                b.iter()
                    .map(|i| {
                        let id =
                            i.id.as_ref()
                                .map(|id| (id.prompt_id.as_str(), id.sample_index));
                        id.map(|(p, s)| format!("{p}{s}")).unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn batches_keep_a_prompts_samples_together() {
        let three: Vec<_> = ["a", "b", "c"]
            .iter()
            .flat_map(|p| (0..3).map(move |s| item(p, s)))
            .collect();
        assert_eq!(
            shape(&three, 4),
            vec![
                vec!["a0", "a1", "a2"],
                vec!["b0", "b1", "b2"],
                vec!["c0", "c1", "c2"]
            ]
        );
        assert_eq!(
            shape(&three, 6),
            vec![
                vec!["a0", "a1", "a2", "b0", "b1", "b2"],
                vec!["c0", "c1", "c2"]
            ]
        );
        assert_eq!(
            shape(&three, 2).len(),
            3,
            "a prompt larger than a batch stays whole"
        );
        assert_eq!(shape(&three, 64).len(), 1);
        assert!(batches(&[], 4).is_empty());
        let total: usize = batches(&three, 4).iter().map(|b| b.len()).sum();
        assert_eq!(total, 9);
    }
}
