//! The `Learner` gRPC service: Train (client stream of units, acks, final metrics),
//! FetchWeights (checksummed chunks of a version), SaveCheckpoint, Status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use bytes::Bytes;
use futures::StreamExt;
use rlhf_core::{ErrorKind, status};
use rlhf_model::Transformer;
use rlhf_proto::v1::{self, learner_server::Learner, training_unit};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::trainer::{Sampled, Seq, TrainState, Unit};
use crate::{LearnerConfig, LearnerError};

/// A serialized policy version: what workers fetch, and its SHA-256 (hex).
#[derive(Clone)]
pub struct Published {
    pub payload: Bytes,
    pub sha256: String,
}

/// The learner.
pub struct LearnerService<B: AutodiffBackend> {
    config: LearnerConfig,
    state: Arc<StdMutex<TrainState<B>>>,
    /// Serialises Train calls.
    training: Mutex<()>,
    versions: Arc<RwLock<BTreeMap<u64, Published>>>,
    /// (policy version, updates done).
    progress: Arc<StdMutex<(u64, u64)>>,
    /// This learner's line of versions (see `LearnerStatus.incarnation`).
    incarnation: AtomicU64,
    /// The policy's context length (`max_position_embeddings`): longer sequences are refused.
    max_len: usize,
}

/// A fresh, non-zero incarnation number.
fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    rlhf_core::mix(nanos, u64::from(std::process::id())).max(1)
}

/// Serializes a policy version for workers (safetensors in its compute precision) and hashes it.
pub fn publish<B: burn::tensor::backend::Backend>(
    model: &Transformer<B>,
) -> Result<Published, LearnerError> {
    let bytes = model.to_safetensors_bytes()?;
    let sha256 = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Published {
        payload: Bytes::from(bytes),
        sha256,
    })
}

impl<B: AutodiffBackend> LearnerService<B> {
    /// Loads the policy and reference and publishes version 0.
    pub fn load(config: LearnerConfig, device: B::Device) -> Result<Self, LearnerError> {
        Self::load_data_parallel(config, device, vec![])
    }

    /// [`LearnerService::load`] training data-parallel with one policy replica on each of
    /// `replicas` besides `device` (none: one device).
    pub fn load_data_parallel(
        config: LearnerConfig,
        device: B::Device,
        replicas: Vec<B::Device>,
    ) -> Result<Self, LearnerError> {
        let precision = config.precision()?;
        let in_precision =
            |e: rlhf_model::ModelError| LearnerError::Config(format!("learner.precision: {e}"));
        let policy = Transformer::<B>::load(&config.model, &device)?
            .with_precision(precision)
            .map_err(in_precision)?;
        // The frozen reference is only read: stored in the compute precision.
        let reference = match &config.reference {
            Some(dir) => Transformer::<B::InnerBackend>::load(dir, &device)?,
            None => policy.valid(),
        }
        .cast_weights(precision)
        .map_err(in_precision)?;
        if reference.config.vocab_size != policy.config.vocab_size {
            return Err(LearnerError::Config(format!(
                "learner.reference has vocabulary size {}, the policy {}",
                reference.config.vocab_size, policy.config.vocab_size
            )));
        }
        let v0 = publish(&policy.valid())?;
        let max_len = policy.config.max_position_embeddings;
        let mut state = TrainState::new(policy, reference, config.objective, config.optim())
            .with_gradient_checkpointing(config.gradient_checkpointing);
        if matches!(config.objective, rlhf_algo::Objective::Ppo(_)) {
            // Loaded on its own (never a clone of the policy): separate parameters.
            let dir = config.critic.as_ref().unwrap_or(&config.model);
            let critic = Transformer::<B>::load(dir, &device)?
                .with_precision(precision)
                .map_err(in_precision)?;
            let critic = match critic.config.architecture.head() {
                rlhf_model::HeadKind::CausalLm => critic.with_score_head(1),
                rlhf_model::HeadKind::SequenceClassification => critic,
            };
            state = state.with_critic(critic, config.critic_lr.unwrap_or(config.lr))?;
        }
        if !replicas.is_empty() {
            tracing::info!(devices = 1 + replicas.len(), "learner: data parallel");
            state = state.with_data_parallel(replicas)?;
        }
        Ok(Self {
            config,
            state: Arc::new(StdMutex::new(state)),
            training: Mutex::new(()),
            versions: Arc::new(RwLock::new(BTreeMap::from([(0, v0)]))),
            progress: Arc::new(StdMutex::new((0, 0))),
            incarnation: AtomicU64::new(new_incarnation()),
            max_len,
        })
    }

    fn progress(&self) -> (u64, u64) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn seq(s: Option<&v1::Sequence>, what: &str, max_len: usize) -> Result<Seq, Status> {
    let s = s.ok_or_else(|| status(ErrorKind::InvalidArgument, format!("missing `{what}`")))?;
    if s.prompt_ids.is_empty() || s.completion_ids.is_empty() {
        return Err(status(
            ErrorKind::InvalidArgument,
            format!("`{what}` has an empty prompt or completion"),
        ));
    }
    let n = s.prompt_ids.len() + s.completion_ids.len();
    if n > max_len {
        return Err(status(
            ErrorKind::InvalidArgument,
            format!(
                "`{what}` has {n} tokens, longer than the policy's context \
                 (max_position_embeddings = {max_len})"
            ),
        ));
    }
    if !s.reward.is_finite() {
        return Err(status(
            ErrorKind::InvalidArgument,
            format!("`{what}` has a non-finite reward"),
        ));
    }
    Ok(Seq {
        prompt: s.prompt_ids.clone(),
        completion: s.completion_ids.clone(),
        reward: s.reward,
    })
}

/// A sequence with the sampler's log-probs (group and rollout units).
fn sampled(s: &v1::Sequence, what: &str, max_len: usize) -> Result<Sampled, Status> {
    if s.behaviour_logprobs.len() != s.completion_ids.len() {
        return Err(status(
            ErrorKind::InvalidArgument,
            format!(
                "`{what}` has {} behaviour_logprobs for {} completion_ids",
                s.behaviour_logprobs.len(),
                s.completion_ids.len()
            ),
        ));
    }
    if let Some(bad) = s.behaviour_logprobs.iter().find(|l| !l.is_finite()) {
        return Err(status(
            ErrorKind::InvalidArgument,
            format!("`{what}` has a non-finite behaviour_logprob ({bad})"),
        ));
    }
    Ok(Sampled {
        seq: seq(Some(s), what, max_len)?,
        behaviour_logprobs: s.behaviour_logprobs.clone(),
        policy_version: s.policy_version,
    })
}

/// Converts a wire unit, validating it (every sequence within `max_len` tokens, the policy's
/// context).
fn unit(u: &v1::TrainingUnit, max_len: usize) -> Result<Unit, Status> {
    match &u.unit {
        Some(training_unit::Unit::Pair(p)) => {
            let strength = if p.strength == 0.0 { 1.0 } else { p.strength };
            if !(0.0..=1.0).contains(&strength) {
                return Err(status(
                    ErrorKind::InvalidArgument,
                    format!("pair strength {strength} outside [0, 1]"),
                ));
            }
            Ok(Unit::Pair(
                seq(p.chosen.as_ref(), "chosen", max_len)?,
                seq(p.rejected.as_ref(), "rejected", max_len)?,
                strength,
            ))
        }
        Some(training_unit::Unit::List(l)) => {
            if l.items.len() < 2 {
                return Err(status(
                    ErrorKind::InvalidArgument,
                    "a ranked list needs at least two items",
                ));
            }
            Ok(Unit::List(
                l.items
                    .iter()
                    .map(|s| seq(Some(s), "items", max_len))
                    .collect::<Result<_, _>>()?,
            ))
        }
        Some(training_unit::Unit::Binary(b)) => Ok(Unit::Binary(
            seq(b.sample.as_ref(), "sample", max_len)?,
            b.desirable,
        )),
        Some(training_unit::Unit::Group(g)) => {
            if g.items.is_empty() {
                return Err(status(ErrorKind::InvalidArgument, "an empty group"));
            }
            let items = g.items.iter().map(|s| sampled(s, "items", max_len));
            Ok(Unit::Group(items.collect::<Result<_, _>>()?))
        }
        Some(training_unit::Unit::Rollout(s)) => Ok(Unit::Rollout(sampled(s, "rollout", max_len)?)),
        None => Err(status(ErrorKind::InvalidArgument, "empty training unit")),
    }
}

type EventStream = ReceiverStream<Result<v1::TrainEvent, Status>>;
type ChunkStream = ReceiverStream<Result<v1::WeightChunk, Status>>;

#[tonic::async_trait]
impl<B: AutodiffBackend> Learner for LearnerService<B> {
    type TrainStream = EventStream;
    type FetchWeightsStream = ChunkStream;

    #[tracing::instrument(skip_all)]
    async fn train(
        &self,
        request: Request<Streaming<v1::TrainRequest>>,
    ) -> Result<Response<Self::TrainStream>, Status> {
        let guard = self.training.lock().await;
        let mut incoming = request.into_inner();
        let mut units = Vec::new();
        let mut lr = None;
        let (tx, rx) = mpsc::channel(16);
        let incarnation = self.incarnation.load(Ordering::SeqCst);
        while let Some(msg) = incoming.next().await {
            let msg = msg?;
            if msg.incarnation != 0 && msg.incarnation != incarnation {
                return Err(status(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "units for incarnation {} sent to this learner, incarnation \
                         {incarnation} (it restarted or resumed): not trained",
                        msg.incarnation
                    ),
                ));
            }
            if let Some(r) = msg.lr {
                if !(r.is_finite() && r > 0.0) {
                    return Err(status(
                        ErrorKind::InvalidArgument,
                        format!("lr: {r} is not a positive number"),
                    ));
                }
                lr = Some(r);
            }
            for u in &msg.units {
                units.push(unit(u, self.max_len)?);
            }
            let _ = tx
                .send(Ok(v1::TrainEvent {
                    event: Some(v1::train_event::Event::UnitsReceived(units.len() as u64)),
                }))
                .await;
        }
        if units.is_empty() {
            return Err(status(ErrorKind::InvalidArgument, "no training units"));
        }
        let state = self.state.clone();
        let versions = self.versions.clone();
        let progress = self.progress.clone();
        let keep = self.config.keep_versions;
        let refresh = self.config.reference_refresh_every;
        drop(guard);
        // Training holds the state lock on a blocking thread; a second Train waits for it.
        let outcome = tokio::task::spawn_blocking(
            move || -> Result<(u64, crate::UpdateMetrics, Published, f64), LearnerError> {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(lr) = lr
                    && lr != st.settings.lr
                {
                    tracing::info!(from = st.settings.lr, to = lr, "learning rate changed");
                    st.settings.lr = lr;
                }
                let metrics = st.update(&units)?;
                let lr = st.settings.lr;
                let published = publish(&st.policy.valid())?;
                let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
                p.0 = st.version;
                p.1 += 1;
                if refresh > 0 && p.1.is_multiple_of(refresh) {
                    st.refresh_reference()?;
                }
                Ok((p.0, metrics, published, lr))
            },
        )
        .await
        .map_err(|e| status(ErrorKind::Internal, format!("training panicked: {e}")))?
        .map_err(|e| match e {
            LearnerError::Invalid(m)
            | LearnerError::Objective(m)
            | LearnerError::Model(rlhf_model::ModelError::Input(m)) => {
                status(ErrorKind::InvalidArgument, m)
            }
            other => status(ErrorKind::Internal, other.to_string()),
        })?;
        let (version, m, published, lr) = outcome;
        {
            let mut v = versions.write().await;
            v.insert(version, published);
            while v.len() > keep + 1 {
                let Some(oldest) = v.keys().copied().find(|&k| k != 0) else {
                    break;
                };
                v.remove(&oldest);
            }
        }
        tracing::info!(version, loss = m.loss, steps = m.steps, "policy updated");
        let done = v1::TrainDone {
            policy_version: version,
            metrics: Some(v1::TrainMetrics {
                loss: m.loss,
                chosen_reward: m.chosen_reward,
                rejected_reward: m.rejected_reward,
                accuracy: m.accuracy,
                kl: m.kl,
                tokens: m.tokens,
                seconds: m.seconds,
                rejected_nonfinite: m.rejected_nonfinite,
                grad_norm: m.grad_norm,
                extra: m.extra.into_iter().collect(),
                lr,
            }),
        };
        let _ = tx
            .send(Ok(v1::TrainEvent {
                event: Some(v1::train_event::Event::Done(done)),
            }))
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_weights(
        &self,
        request: Request<v1::FetchWeightsRequest>,
    ) -> Result<Response<Self::FetchWeightsStream>, Status> {
        let request = request.into_inner();
        let version = request.version;
        let incarnation = self.incarnation.load(Ordering::SeqCst);
        if request.incarnation != 0 && request.incarnation != incarnation && version != 0 {
            return Err(status(
                ErrorKind::FailedPrecondition,
                format!(
                    "version {version} of incarnation {} asked, this learner is incarnation \
                     {incarnation} (it restarted or resumed)",
                    request.incarnation
                ),
            ));
        }
        let published = self
            .versions
            .read()
            .await
            .get(&version)
            .cloned()
            .ok_or_else(|| {
                status(
                    ErrorKind::NotFound,
                    format!(
                        "policy version {version} is not kept (current {})",
                        self.progress().0
                    ),
                )
            })?;
        let chunks = rlhf_proto::chunk_weights(
            version,
            &published.payload,
            &published.sha256,
            rlhf_proto::WEIGHT_CHUNK_BYTES,
        );
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for c in chunks {
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn save_checkpoint(
        &self,
        request: Request<v1::SaveCheckpointRequest>,
    ) -> Result<Response<v1::SaveCheckpointResponse>, Status> {
        let request = request.into_inner();
        let incarnation = self.incarnation.load(Ordering::SeqCst);
        if request.incarnation != 0 && request.incarnation != incarnation {
            return Err(status(
                ErrorKind::FailedPrecondition,
                format!(
                    "checkpoint of incarnation {} asked, this learner is incarnation \
                     {incarnation} (it restarted or resumed): not written",
                    request.incarnation
                ),
            ));
        }
        let path = PathBuf::from(request.path);
        if path.as_os_str().is_empty() {
            return Err(status(ErrorKind::InvalidArgument, "missing `path`"));
        }
        let state = self.state.clone();
        let tokenizer_from = self.config.model.clone();
        let progress = self.progress.clone();
        let out = path.clone();
        let training_state = request.training_state;
        let version = tokio::task::spawn_blocking(move || -> Result<u64, LearnerError> {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            let (version, updates) = *progress.lock().unwrap_or_else(|p| p.into_inner());
            st.policy
                .valid()
                .save_pretrained(&out, Some(&tokenizer_from))?;
            // PPO: the critic next to it (a `*ForSequenceClassification` folder that
            // `learner.critic` accepts, to continue from this checkpoint).
            if let Some(ppo) = &st.ppo {
                ppo.critic
                    .valid()
                    .save_pretrained(&out.join("critic"), Some(&tokenizer_from))?;
            }
            // Last: its state.json marks the checkpoint resumable.
            if training_state {
                st.save_training_state(&out, updates)?;
            }
            Ok(version)
        })
        .await
        .map_err(|e| status(ErrorKind::Internal, format!("saving panicked: {e}")))?
        .map_err(|e| {
            status(
                ErrorKind::Internal,
                format!("saving {}: {e}", path.display()),
            )
        })?;
        Ok(Response::new(v1::SaveCheckpointResponse {
            path: path.display().to_string(),
            policy_version: version,
            training_state,
        }))
    }

    async fn resume(
        &self,
        request: Request<v1::ResumeRequest>,
    ) -> Result<Response<v1::ResumeResponse>, Status> {
        let path = PathBuf::from(request.into_inner().path);
        if path.as_os_str().is_empty() {
            return Err(status(ErrorKind::InvalidArgument, "missing `path`"));
        }
        // No Train runs meanwhile.
        let _training = self.training.lock().await;
        let state = self.state.clone();
        let progress = self.progress.clone();
        let from = path.clone();
        let (version, updates, published) =
            tokio::task::spawn_blocking(move || -> Result<(u64, u64, Published), LearnerError> {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                let updates = st.load_training_state(&from)?;
                let published = publish(&st.policy.valid())?;
                *progress.lock().unwrap_or_else(|p| p.into_inner()) = (st.version, updates);
                Ok((st.version, updates, published))
            })
            .await
            .map_err(|e| status(ErrorKind::Internal, format!("resuming panicked: {e}")))?
            .map_err(|e| {
                status(
                    ErrorKind::FailedPrecondition,
                    format!("resuming from {}: {e}", path.display()),
                )
            })?;
        // The restored version and the initial policy are served; other versions belong to
        // the line that stopped, and the new incarnation says so to workers.
        {
            let mut versions = self.versions.write().await;
            let initial = versions.remove(&0);
            *versions = BTreeMap::from([(version, published)]);
            if let Some(v0) = initial {
                versions.insert(0, v0);
            }
        }
        let incarnation = new_incarnation();
        self.incarnation.store(incarnation, Ordering::SeqCst);
        tracing::info!(version, updates, incarnation, path = %path.display(), "learner resumed");
        Ok(Response::new(v1::ResumeResponse {
            policy_version: version,
            updates,
            incarnation,
        }))
    }

    async fn status(
        &self,
        _request: Request<v1::LearnerStatusRequest>,
    ) -> Result<Response<v1::LearnerStatus>, Status> {
        let (policy_version, updates) = self.progress();
        Ok(Response::new(v1::LearnerStatus {
            policy_version,
            updates,
            incarnation: self.incarnation.load(Ordering::SeqCst),
        }))
    }
}
