//! Scoring a policy's samples with each configured scorer, through the cache. All samples of a
//! prompt go to the scorer in the same call (pairwise scorers compare within a prompt); only
//! successes are cached, so failures are retried by the next run.

use rlhf_data::PromptRecord;
use rlhf_reward::Scorer;
use serde_json::json;

use crate::cache::{Cache, Kind, key_of};
use crate::error::EvalError;
use crate::prompts::score_input;
use crate::report::WorkCounts;
use crate::sample::PromptSamples;
use crate::summary::ScoreGrid;

/// A built scorer with its report name and its identity in cache keys.
pub struct BuiltScorer {
    /// The report name.
    pub name: String,
    /// SHA-256 of the name and the scorer's config.
    pub fingerprint: String,
    /// The scorer.
    pub scorer: Box<dyn Scorer>,
}

/// Scores every sample; `batch_prompts` prompts per scorer call.
#[allow(clippy::too_many_arguments)]
pub async fn score(
    s: &BuiltScorer,
    policy: &str,
    records: &[PromptRecord],
    chat: bool,
    samples: &[PromptSamples],
    batch_prompts: usize,
    cache: &mut Cache,
    work: &mut WorkCounts,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ScoreGrid, EvalError> {
    let key = |gen_key: &str| key_of(&json!({"v": 1, "scorer": s.fingerprint, "sample": gen_key}));
    let mut grid: ScoreGrid = samples
        .iter()
        .map(|p| vec![Err("missing".to_owned()); p.samples.len()])
        .collect();
    let rows: Vec<usize> = (0..records.len()).collect();
    for chunk in rows.chunks(batch_prompts.max(1)) {
        let mut todo = Vec::new();
        for &i in chunk {
            for (k, gen_key) in samples[i].keys.iter().enumerate() {
                match cache.get::<f64>(Kind::Score, &key(gen_key)) {
                    Some(v) => {
                        work.cached_scores += 1;
                        grid[i][k] = Ok(v);
                    }
                    None => todo.push((i, k)),
                }
            }
        }
        if todo.is_empty() {
            continue;
        }
        let inputs: Vec<_> = todo
            .iter()
            .map(|&(i, k)| score_input(&records[i], chat, k as u32, &samples[i].samples[k].text))
            .collect();
        let results = s.scorer.score(&inputs).await;
        let mut fresh = Vec::new();
        for (idx, &(i, k)) in todo.iter().enumerate() {
            // A scorer that returns too few results leaves the rest as failures.
            grid[i][k] = match results.get(idx) {
                Some(Ok(score)) => {
                    fresh.push((key(&samples[i].keys[k]), score.value));
                    Ok(score.value)
                }
                Some(Err(e)) => {
                    tracing::debug!(scorer = %s.name, policy, error = %e, "sample not scored");
                    Err(e.kind().as_str().to_owned())
                }
                None => Err("internal".to_owned()),
            };
        }
        work.scored += todo.len() as u64;
        cache.put(Kind::Score, &fresh)?;
    }
    let failed = grid.iter().flatten().filter(|r| r.is_err()).count();
    progress(&format!(
        "policy `{policy}`: scored by `{}` ({failed} failures)",
        s.name
    ));
    Ok(grid)
}
