//! Policies and their samples: loading a checkpoint on the configured device, batched seeded
//! generation through the cache, and teacher-forced sequence log-probs (for KL under the
//! reference and for ranking accuracy).
//!
//! Sample `k` of prompt `p` is drawn with `rlhf_rollout::sample_seed(seed, p, k)`, the seed a
//! rollout worker uses, so an eval with a run's seed sees the same samples the loop would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rlhf_data::PromptRecord;
use rlhf_learner::trainer::Seq;
use rlhf_model::{AnyModel, DeviceSpec, FinishReason, Precision, SamplingParams, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cache::{Cache, Kind, fingerprint, key_of};
use crate::config::{Fingerprint, GenerationConfig};
use crate::error::{EvalError, joined};
use crate::model::completion_logps;
use crate::prompts;
use crate::report::WorkCounts;

/// A loaded checkpoint.
pub struct Policy {
    /// The name in the report.
    pub name: String,
    /// The checkpoint folder.
    pub path: PathBuf,
    /// Its identity in cache keys.
    pub fingerprint: String,
    /// The model (shared with blocking workers).
    pub model: Arc<AnyModel>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl Policy {
    /// Loads a checkpoint folder and fingerprints it, off the async threads.
    pub async fn load(
        name: &str,
        path: &Path,
        how: Fingerprint,
        (device, precision): (DeviceSpec, Precision),
    ) -> Result<Self, EvalError> {
        let (name, path) = (name.to_owned(), path.to_path_buf());
        let task = tokio::task::spawn_blocking(move || {
            let err = |e: &dyn std::fmt::Display| {
                EvalError::model(&name, format!("{}: {e}", path.display()))
            };
            let tokenizer = Tokenizer::from_dir(&path).map_err(|e| err(&e))?;
            let model = AnyModel::load(&path, device, precision).map_err(|e| err(&e))?;
            let fingerprint = match precision {
                // f32 keeps the identity it always had (existing caches stay valid).
                Precision::F32 => fingerprint(&path, how)?,
                p => key_of(
                    &json!({"checkpoint": fingerprint(&path, how)?, "precision": p.to_string()}),
                ),
            };
            Ok(Policy {
                name,
                path,
                fingerprint,
                model: Arc::new(model),
                tokenizer,
            })
        });
        joined(task.await)?
    }

    /// The ids that end a completion: the model's EOS ids and the tokenizer's EOS.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut stop = self.model.config().eos_token_ids.clone();
        if let Some(id) = self.tokenizer.eos_id()
            && !stop.contains(&id)
        {
            stop.push(id);
        }
        stop
    }
}

/// One completion, as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The generated ids (with the stop token when one ended it).
    pub completion_ids: Vec<u32>,
    /// Decoded, special tokens removed.
    pub text: String,
    /// Σ_t log π(y_t): the summed log-prob under the unmodified policy.
    pub logprob: f64,
    /// Whether a stop (EOS) token ended it, rather than the length limit.
    pub finished: bool,
}

impl Sample {
    /// Response tokens, not counting the stop token that ended it.
    pub fn tokens(&self) -> usize {
        self.completion_ids.len() - usize::from(self.finished)
    }
}

/// A prompt's samples under one policy.
#[derive(Debug, Clone)]
pub struct PromptSamples {
    /// The rendered prompt.
    pub prompt_ids: Vec<u32>,
    /// The cache key of each sample (identifies it in score and comparison keys).
    pub keys: Vec<String>,
    /// Sample `k` at index `k`.
    pub samples: Vec<Sample>,
}

/// Samples `samples_per_prompt` completions of every prompt, in batches of `batch_prompts`
/// prompts, taking what the cache has and caching the rest after each batch.
pub async fn generate(
    policy: &Policy,
    records: &[PromptRecord],
    g: &GenerationConfig,
    cache: &mut Cache,
    work: &mut WorkCounts,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<PromptSamples>, EvalError> {
    let params = SamplingParams {
        max_new_tokens: g.max_new_tokens,
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        stop_ids: policy.stop_ids(),
        seed: g.seed,
    };
    let n = g.samples_per_prompt;
    let (generated_before, cached_before) = (work.generated, work.cached_generations);
    let mut out = Vec::with_capacity(records.len());
    for (chunk_no, chunk) in records.chunks(g.batch_prompts).enumerate() {
        // Rows still to generate: (index into `out`, sample index, prompt ids, seed).
        let mut todo: Vec<(usize, u32, Vec<u32>, u64)> = Vec::new();
        for record in chunk {
            let ids = prompts::render(&policy.tokenizer, record, g.chat)
                .map_err(|e| EvalError::model(&policy.name, e))?;
            let keys: Vec<String> = (0..n)
                .map(|k| {
                    key_of(&json!({
                        "v": 1, "sampler": rlhf_model::generate::SAMPLER_VERSION,
                        "policy": policy.fingerprint, "prompt_id": record.id,
                        "prompt_ids": key_of(&ids), "index": k, "seed": g.seed,
                        "max_new_tokens": params.max_new_tokens, "temperature": params.temperature,
                        "top_k": params.top_k, "top_p": params.top_p, "stop_ids": params.stop_ids,
                    }))
                })
                .collect();
            let mut samples = Vec::with_capacity(n as usize);
            for (k, key) in (0..n).zip(&keys) {
                match cache.get::<Sample>(Kind::Generation, key) {
                    Some(s) => {
                        work.cached_generations += 1;
                        samples.push(s);
                    }
                    None => {
                        let seed = rlhf_rollout::sample_seed(g.seed, &record.id, k);
                        todo.push((out.len(), k, ids.clone(), seed));
                        samples.push(Sample {
                            completion_ids: vec![],
                            text: String::new(),
                            logprob: 0.0,
                            finished: false,
                        });
                    }
                }
            }
            out.push(PromptSamples {
                prompt_ids: ids,
                keys,
                samples,
            });
        }
        if !todo.is_empty() {
            let model = policy.model.clone();
            let (rows, seeds): (Vec<Vec<u32>>, Vec<u64>) =
                todo.iter().map(|t| (t.2.clone(), t.3)).unzip();
            let p = params.clone();
            let generated =
                tokio::task::spawn_blocking(move || model.generate_seeded(&rows, &p, &seeds));
            let generated =
                joined(generated.await)?.map_err(|e| EvalError::model(&policy.name, e))?;
            let mut fresh = Vec::with_capacity(todo.len());
            for ((i, k, _, _), c) in todo.iter().zip(generated) {
                let text = policy
                    .tokenizer
                    .decode(&c.completion_ids, true)
                    .map_err(|e| EvalError::model(&policy.name, e))?;
                let sample = Sample {
                    logprob: c.logprobs.iter().map(|&x| f64::from(x)).sum(),
                    finished: c.finish_reason == FinishReason::Stop,
                    completion_ids: c.completion_ids,
                    text,
                };
                fresh.push((out[*i].keys[*k as usize].clone(), sample.clone()));
                out[*i].samples[*k as usize] = sample;
            }
            work.generated += fresh.len() as u64;
            cache.put(Kind::Generation, &fresh)?;
        }
        let done = (chunk_no * g.batch_prompts + chunk.len()).min(records.len());
        progress(&format!(
            "policy `{}`: sampled {done}/{} prompts ({} generated, {} from the cache)",
            policy.name,
            records.len(),
            work.generated - generated_before,
            work.cached_generations - cached_before
        ));
    }
    Ok(out)
}

/// Summed completion log-probs of `seqs` under `model`, `batch` sequences per forward pass.
pub async fn sequence_logps(
    model: &Arc<AnyModel>,
    seqs: Vec<Seq>,
    batch: usize,
) -> Result<Vec<f64>, String> {
    let pad = model.config().pad_token_id.unwrap_or(0);
    let vocab = model.config().vocab_size;
    if let Some(bad) = seqs
        .iter()
        .flat_map(|s| s.prompt.iter().chain(&s.completion))
        .find(|&&id| id as usize >= vocab)
    {
        return Err(format!(
            "token id {bad} is outside the vocabulary ({vocab}): the models must share a tokenizer"
        ));
    }
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch.max(1)) {
        let (m, chunk) = (model.clone(), chunk.to_vec());
        let task = tokio::task::spawn_blocking(move || {
            let refs: Vec<&Seq> = chunk.iter().collect();
            completion_logps(&m, &refs, pad)
        });
        let sums = task
            .await
            .map_err(|e| format!("a worker task failed: {e}"))??;
        out.extend(sums.into_iter().map(f64::from));
    }
    Ok(out)
}

/// Σ_t log π_ref(y_t) of every sample (teacher-forced under the reference), via the cache.
pub async fn reference_logps(
    reference: &Policy,
    samples: &[PromptSamples],
    batch: usize,
    cache: &mut Cache,
    work: &mut WorkCounts,
) -> Result<Vec<Vec<f64>>, EvalError> {
    let key = |gen_key: &str| {
        key_of(&json!({"v": 1, "reference": reference.fingerprint, "sample": gen_key}))
    };
    let mut out: Vec<Vec<f64>> = samples
        .iter()
        .map(|p| vec![f64::NAN; p.samples.len()])
        .collect();
    let mut todo = Vec::new();
    for (i, p) in samples.iter().enumerate() {
        for (k, gen_key) in p.keys.iter().enumerate() {
            match cache.get::<f64>(Kind::ReferenceLogp, &key(gen_key)) {
                Some(v) => {
                    work.cached_logps += 1;
                    out[i][k] = v;
                }
                None => todo.push((i, k)),
            }
        }
    }
    // One cache write per forward pass, so an interruption loses at most one batch.
    for part in todo.chunks(batch.max(1)) {
        let seqs = part
            .iter()
            .map(|&(i, k)| Seq {
                prompt: samples[i].prompt_ids.clone(),
                completion: samples[i].samples[k].completion_ids.clone(),
                reward: 0.0,
            })
            .collect();
        let values = sequence_logps(&reference.model, seqs, batch)
            .await
            .map_err(|e| EvalError::model("reference", e))?;
        let mut fresh = Vec::with_capacity(part.len());
        for (&(i, k), v) in part.iter().zip(values) {
            out[i][k] = v;
            fresh.push((key(&samples[i].keys[k]), v));
        }
        work.computed_logps += fresh.len() as u64;
        cache.put(Kind::ReferenceLogp, &fresh)?;
    }
    Ok(out)
}
