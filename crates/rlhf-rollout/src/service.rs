//! The `Rollout` gRPC service: version switching and batched sampling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::backend::Backend;
use rlhf_core::mix;
use rlhf_core::{ErrorKind, status};
use rlhf_model::{ModelConfig, SamplingParams, Tokenizer, Transformer};
use rlhf_proto::security::Tls;
use rlhf_proto::v1::{self, rollout_server::Rollout};
use tokio::sync::{Mutex, RwLock, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{RolloutConfig, RolloutError};

/// The policy in use, its version and the learner incarnation it came from (0: the initial
/// policy, loaded from disk).
struct Policy<B: Backend> {
    version: u64,
    incarnation: u64,
    model: Arc<Transformer<B>>,
}

impl<B: Backend> Policy<B> {
    /// Whether this is `version` of `incarnation` (0: any); version 0 is the same in every one.
    fn is(&self, version: u64, incarnation: u64) -> bool {
        self.version == version
            && (version == 0 || incarnation == 0 || self.incarnation == incarnation)
    }
}

/// A rollout worker.
pub struct RolloutService<B: Backend> {
    config: RolloutConfig,
    device: B::Device,
    base: ModelConfig,
    tokenizer: Arc<Tokenizer>,
    policy: RwLock<Policy<B>>,
    /// Serialises weight fetches so that concurrent requests fetch a version once.
    fetching: Mutex<()>,
    /// Completions and tokens generated since start (shared with sampling tasks).
    counters: Arc<(AtomicU64, AtomicU64)>,
    /// Mutual TLS to the learner when weights are fetched.
    tls: Option<Tls>,
}

/// The seed of sample `index` of prompt `prompt_id` under a request's base seed.
pub fn sample_seed(seed: u64, prompt_id: &str, index: u32) -> u64 {
    // FNV-1a over the prompt id, then SplitMix with the seed and the index.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(mix(seed, h), u64::from(index))
}

impl<B: Backend> RolloutService<B> {
    /// Loads the initial policy (version 0) and its tokenizer.
    pub fn load(
        config: RolloutConfig,
        device: B::Device,
        tls: Option<Tls>,
    ) -> Result<Self, RolloutError> {
        let tokenizer = Tokenizer::from_dir(&config.model)?;
        let precision = config.precision()?;
        let model = Transformer::<B>::load(&config.model, &device)?
            .cast_weights(precision)
            .map_err(|e| RolloutError::Config(format!("rollout.precision: {e}")))?;
        Ok(Self {
            base: model.config.clone(),
            config,
            device,
            tokenizer: Arc::new(tokenizer),
            policy: RwLock::new(Policy {
                version: 0,
                incarnation: 0,
                model: Arc::new(model),
            }),
            fetching: Mutex::new(()),
            counters: Arc::new((AtomicU64::new(0), AtomicU64::new(0))),
            tls,
        })
    }

    /// Makes `version` the policy in use, fetching it from `from` if needed; returns the
    /// seconds spent (0 when already current).
    async fn ensure_version(
        &self,
        version: u64,
        incarnation: u64,
        from: &str,
    ) -> Result<f64, Status> {
        if self.policy.read().await.is(version, incarnation) {
            return Ok(0.0);
        }
        let _guard = self.fetching.lock().await;
        if self.policy.read().await.is(version, incarnation) {
            return Ok(0.0);
        }
        if from.is_empty() {
            return Err(status(
                ErrorKind::FailedPrecondition,
                format!(
                    "policy version {version} requested, worker has {} and no `weights_from`",
                    self.policy.read().await.version
                ),
            ));
        }
        let start = Instant::now();
        let bytes = rlhf_proto::weights::fetch(
            from,
            version,
            incarnation,
            self.tls.as_ref(),
            self.config.max_message_bytes,
        )
        .await?;
        let base = self.base.clone();
        let device = self.device.clone();
        // Weights arrive in the learner's precision (read into f32) and are kept in the worker's
        // (checked at start-up).
        let precision = self.policy.read().await.model.precision;
        let model = tokio::task::spawn_blocking(move || {
            Transformer::<B>::from_safetensors_bytes(
                base,
                &bytes,
                std::path::Path::new("<weight stream>"),
                &device,
            )?
            .cast_weights(precision)
        })
        .await
        .map_err(|e| {
            status(
                ErrorKind::Internal,
                format!("loading weights panicked: {e}"),
            )
        })?
        .map_err(|e| {
            status(
                ErrorKind::InvalidArgument,
                format!("weights v{version}: {e}"),
            )
        })?;
        *self.policy.write().await = Policy {
            version,
            incarnation,
            model: Arc::new(model),
        };
        tracing::info!(worker = %self.config.name, version, incarnation, "switched policy version");
        Ok(start.elapsed().as_secs_f64())
    }

    /// Token ids of a prompt as the policy sees it.
    fn prompt_ids(&self, p: &v1::Prompt) -> Result<Vec<u32>, Status> {
        let ids = if p.messages.is_empty() {
            self.tokenizer.encode(&p.text, true)
        } else {
            let msgs: Vec<rlhf_core::ChatMessage> = p.messages.iter().map(Into::into).collect();
            self.tokenizer.encode_chat(&msgs, true)
        }
        .map_err(|e| {
            status(
                ErrorKind::InvalidArgument,
                format!("prompt `{}`: {e}", p.prompt_id),
            )
        })?;
        if ids.is_empty() {
            return Err(status(
                ErrorKind::InvalidArgument,
                format!("prompt `{}` is empty", p.prompt_id),
            ));
        }
        Ok(ids)
    }
}

fn sampling(req: &v1::GenerateRequest, stop: &[u32]) -> Result<SamplingParams, Status> {
    let s = rlhf_proto::required(req.sampling.as_ref(), "sampling")?;
    let mut stop_ids = stop.to_vec();
    for id in &s.stop_ids {
        if !stop_ids.contains(id) {
            stop_ids.push(*id);
        }
    }
    let p = SamplingParams {
        max_new_tokens: s.max_new_tokens as usize,
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        stop_ids,
        seed: req.seed,
    };
    p.validate()
        .map_err(|e| status(ErrorKind::InvalidArgument, format!("sampling: {e}")))?;
    Ok(p)
}

type GenerateStream = ReceiverStream<Result<v1::GenerateResponse, Status>>;

/// Completions one Generate request may ask for (prompts × n).
pub const MAX_ROWS_PER_REQUEST: u64 = 1 << 20;

#[tonic::async_trait]
impl<B: Backend> Rollout for RolloutService<B> {
    type GenerateStream = GenerateStream;

    #[tracing::instrument(skip_all, fields(worker = %self.config.name, lease = %request.get_ref().lease_id))]
    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        if req.n == 0 {
            return Err(status(ErrorKind::InvalidArgument, "n must be at least 1"));
        }
        if req.prompts.is_empty() {
            return Err(status(ErrorKind::InvalidArgument, "no prompts"));
        }
        let mut stop = self.base.eos_token_ids.clone();
        if let Some(id) = self.tokenizer.eos_id()
            && !stop.contains(&id)
        {
            stop.push(id);
        }
        let params = sampling(&req, &stop)?;
        let requested = req.prompts.len() as u64 * u64::from(req.n);
        if requested > MAX_ROWS_PER_REQUEST {
            return Err(status(
                ErrorKind::InvalidArgument,
                format!(
                    "{} prompts × n = {} is {requested} completions; at most \
                     {MAX_ROWS_PER_REQUEST} per request",
                    req.prompts.len(),
                    req.n
                ),
            ));
        }
        // The prompts are checked before any weights are fetched: the context is the
        // architecture's, the same for every version.
        let context = self
            .policy
            .read()
            .await
            .model
            .config
            .max_position_embeddings;
        // The KV cache is allocated for the whole sequence up front: a budget beyond the context
        // would allocate without bound (and sample past what the model knows).
        if params.max_new_tokens >= context {
            return Err(status(
                ErrorKind::InvalidArgument,
                format!(
                    "max_new_tokens {} leaves no room for a prompt in the policy's context \
                     (max_position_embeddings = {context})",
                    params.max_new_tokens
                ),
            ));
        }
        // One row per (prompt, sample index); a prompt too long for the context with the
        // budget added is skipped (reported, not sampled).
        let mut rows = Vec::with_capacity(req.prompts.len() * req.n as usize);
        let mut skipped = Vec::new();
        for p in &req.prompts {
            let ids = self.prompt_ids(p)?;
            if ids.len() + params.max_new_tokens > context {
                skipped.push(v1::SkippedPrompt {
                    prompt_id: p.prompt_id.clone(),
                    prompt_tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
                    reason: format!(
                        "{} prompt tokens + max_new_tokens {} exceed the policy's context \
                         (max_position_embeddings = {context})",
                        ids.len(),
                        params.max_new_tokens
                    ),
                });
                continue;
            }
            for i in 0..req.n {
                rows.push((
                    p.prompt_id.clone(),
                    i,
                    ids.clone(),
                    sample_seed(req.seed, &p.prompt_id, i),
                ));
            }
        }
        if rows.is_empty() {
            // Nothing to sample: no weights to fetch either.
            let only = v1::GenerateResponse {
                lease_id: req.lease_id.clone(),
                skipped,
                ..Default::default()
            };
            let (tx, rx) = mpsc::channel(1);
            // The receiver is alive: this send cannot fail.
            let _ = tx.send(Ok(only)).await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let sync_seconds = self
            .ensure_version(
                req.policy_version,
                req.weights_incarnation,
                &req.weights_from,
            )
            .await?;
        let (version, model) = {
            let p = self.policy.read().await;
            (p.version, p.model.clone())
        };
        let (tx, rx) = mpsc::channel(4);
        let chunk = self.config.max_batch_rows;
        let tokenizer = self.tokenizer.clone();
        let iteration = req.iteration;
        let lease_id = req.lease_id.clone();
        let stats = self.counters.clone();
        tokio::spawn(async move {
            let mut first = true;
            for batch in rows.chunks(chunk) {
                let prompts: Vec<Vec<u32>> = batch.iter().map(|r| r.2.clone()).collect();
                let seeds: Vec<u64> = batch.iter().map(|r| r.3).collect();
                let m = model.clone();
                let p = params.clone();
                let start = Instant::now();
                let out =
                    tokio::task::spawn_blocking(move || m.generate_seeded(&prompts, &p, &seeds))
                        .await;
                let out = match out {
                    Ok(Ok(out)) => out,
                    Ok(Err(e)) => {
                        let _ = tx
                            .send(Err(status(
                                ErrorKind::Internal,
                                format!("generation failed: {e}"),
                            )))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(status(
                                ErrorKind::Internal,
                                format!("generation panicked: {e}"),
                            )))
                            .await;
                        return;
                    }
                };
                let seconds = start.elapsed().as_secs_f64();
                let mut completions = Vec::with_capacity(out.len());
                for (row, c) in batch.iter().zip(out) {
                    let text = match tokenizer.decode(&c.completion_ids, true) {
                        Ok(t) => t,
                        Err(e) => {
                            let _ = tx
                                .send(Err(status(ErrorKind::Internal, e.to_string())))
                                .await;
                            return;
                        }
                    };
                    stats.0.fetch_add(1, Ordering::Relaxed);
                    stats
                        .1
                        .fetch_add(c.completion_ids.len() as u64, Ordering::Relaxed);
                    completions.push(v1::Completion {
                        id: Some(v1::SampleId {
                            iteration,
                            prompt_id: row.0.clone(),
                            sample_index: row.1,
                        }),
                        policy_version: version,
                        prompt_ids: c.prompt_ids,
                        completion_ids: c.completion_ids,
                        logprobs: c.logprobs,
                        text,
                        finish_reason: c.finish_reason.as_str().to_string(),
                    });
                }
                let resp = v1::GenerateResponse {
                    lease_id: lease_id.clone(),
                    completions,
                    weight_sync_seconds: if first { sync_seconds } else { 0.0 },
                    generate_seconds: seconds,
                    skipped: std::mem::take(&mut skipped),
                };
                first = false;
                if tx.send(Ok(resp)).await.is_err() {
                    // The coordinator went away (lease cancelled): stop sampling.
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        _request: Request<v1::RolloutStatusRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        Ok(Response::new(v1::RolloutStatus {
            policy_version: self.policy.read().await.version,
            completions: self.counters.0.load(Ordering::Relaxed),
            tokens: self.counters.1.load(Ordering::Relaxed),
        }))
    }
}
