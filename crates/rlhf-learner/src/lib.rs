//! rlhf-learner: the learner service.
//!
//! Receives the training units of one update over a client stream (`Train`), computes sequence
//! log-probs under the policy and the reference, applies the configured objective from
//! rlhf-algo with global-norm clipping and AdamW, and publishes the new policy version. Versions
//! are kept serialized (safetensors, SHA-256) and streamed to rollout workers in chunks
//! (`FetchWeights`): weights go learner → generators directly, never through the coordinator.

pub mod adamw;
mod groups;
mod parallel;
mod ppo;
pub mod resume;
pub mod reward_model;
mod service;
pub mod sft;
pub mod trainer;

use std::net::SocketAddr;
use std::path::PathBuf;

use rlhf_algo::Objective;
use rlhf_core::CancellationToken;
use rlhf_model::{DeviceSpec, Precision};
use rlhf_proto::security::{Clients, Tls};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use ppo::PpoState;
pub use service::{LearnerService, Published, publish};
pub use trainer::{OptimSettings, Sampled, Seq, TrainState, Unit, UpdateMetrics};

/// Settings of the learner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerConfig {
    /// The initial policy (Hugging Face checkpoint folder); `rlhf run` fills it from `[model]`.
    #[serde(default)]
    pub model: PathBuf,
    /// The reference policy; defaults to the initial policy.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// cpu or cuda:N.
    #[serde(default)]
    pub device: String,
    /// Data parallelism (docs/gpu.md): the devices each optimizer step's units are split over,
    /// one policy replica each, e.g. `["cuda:0", "cuda:1"]`. The first holds the optimizer and
    /// replaces `device`. Empty: one device.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Compute precision: `f32` (default) or `bf16` (f32 master weights and AdamW moments,
    /// bf16 matmuls and activations, a bf16 reference; needs a GPU). `rlhf run` fills it from
    /// `model.precision`.
    #[serde(default)]
    pub precision: String,
    /// Gradient checkpointing: the training forward keeps only each decoder layer's input (and
    /// no logits); the backward pass recomputes the output head a slice of rows at a time and
    /// the layers one at a time. The same gradients up to rounding for one more forward pass;
    /// saves most of the activations' and logits' memory (docs/gpu.md). Off by default.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// The objective and its hyperparameters (`{ name = "dpo", beta = 0.1 }`).
    #[serde(default = "default_objective")]
    pub objective: Objective,
    /// AdamW learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f32,
    /// Global gradient-norm limit (0 = no clipping).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Training units per optimizer step.
    #[serde(default = "default_batch_units")]
    pub batch_units: usize,
    /// Passes over each update's units.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// PPO's critic: a checkpoint with a one-output score head, or a causal LM that gets a fresh
    /// (zero) value head. Defaults to the initial policy with a fresh value head.
    #[serde(default)]
    pub critic: Option<PathBuf>,
    /// The critic's learning rate (defaults to `lr`).
    #[serde(default)]
    pub critic_lr: Option<f64>,
    /// Replace the reference by the policy every k updates (0 = fixed reference).
    #[serde(default)]
    pub reference_refresh_every: u64,
    /// Serialized policy versions kept for FetchWeights (version 0 is always kept).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
    /// Limit on gRPC messages, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_objective() -> Objective {
    Objective::Dpo(Default::default())
}
fn default_lr() -> f64 {
    1e-4
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_batch_units() -> usize {
    8
}
fn default_epochs() -> usize {
    1
}
fn default_keep_versions() -> usize {
    4
}
fn default_max_message_bytes() -> usize {
    rlhf_proto::DEFAULT_MAX_MESSAGE_BYTES
}

impl LearnerConfig {
    /// A config with defaults for everything but the model.
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            reference: None,
            device: String::new(),
            devices: vec![],
            precision: String::new(),
            gradient_checkpointing: false,
            objective: default_objective(),
            lr: default_lr(),
            weight_decay: 0.0,
            max_grad_norm: default_max_grad_norm(),
            batch_units: default_batch_units(),
            epochs: default_epochs(),
            critic: None,
            critic_lr: None,
            reference_refresh_every: 0,
            keep_versions: default_keep_versions(),
            max_message_bytes: default_max_message_bytes(),
        }
    }

    /// The parsed device (`cpu` when empty): the first of `devices` when those are given.
    pub fn device(&self) -> Result<DeviceSpec, LearnerError> {
        match self.data_parallel()?.first() {
            Some(first) => Ok(*first),
            None => DeviceSpec::from_setting(&self.device)
                .map_err(|e| LearnerError::Config(format!("learner.device: {e}"))),
        }
    }

    /// The parsed precision (`f32` when empty), checked against the device.
    pub fn precision(&self) -> Result<Precision, LearnerError> {
        Precision::for_device(&self.precision, self.device()?)
            .map_err(|e| LearnerError::Config(format!("learner.precision: {e}")))
    }

    /// The parsed `devices` (empty without data parallelism), all of one kind.
    pub fn data_parallel(&self) -> Result<Vec<DeviceSpec>, LearnerError> {
        let specs = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                DeviceSpec::from_setting(d)
                    .map_err(|e| LearnerError::Config(format!("learner.devices[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cpu = |d: &DeviceSpec| matches!(d, DeviceSpec::Cpu);
        if let Some(first) = specs.first()
            && specs.iter().any(|d| cpu(d) != cpu(first))
        {
            return Err(LearnerError::Config(
                "learner.devices: mixes cpu and cuda devices; list devices of one kind".into(),
            ));
        }
        Ok(specs)
    }

    /// Checks the settings, naming the bad field.
    pub fn validate(&self) -> Result<(), LearnerError> {
        let bad = |m: &str| Err(LearnerError::Config(m.to_string()));
        if self.model.as_os_str().is_empty() {
            return bad("learner.model: missing (a Hugging Face checkpoint folder)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("learner.lr must be a positive number");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("learner.weight_decay must be >= 0");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad("learner.max_grad_norm must be >= 0");
        }
        if self.batch_units == 0 {
            return bad("learner.batch_units must be at least 1");
        }
        if self.epochs == 0 {
            return bad("learner.epochs must be at least 1");
        }
        if self.keep_versions == 0 {
            return bad("learner.keep_versions must be at least 1");
        }
        let is_ppo = matches!(self.objective, Objective::Ppo(_));
        if self.critic.is_some() && !is_ppo {
            return bad("learner.critic: only the `ppo` objective trains a critic");
        }
        if self.critic_lr.is_some() && !is_ppo {
            return bad("learner.critic_lr: only the `ppo` objective trains a critic");
        }
        if let Some(lr) = self.critic_lr
            && !(lr > 0.0 && lr.is_finite())
        {
            return bad("learner.critic_lr must be a positive number");
        }
        self.objective
            .validate()
            .map_err(|e| LearnerError::Config(format!("learner.objective: {e}")))?;
        if let Some(why) = unsupported(&self.objective) {
            return Err(LearnerError::Config(format!(
                "learner.objective: `{}` {why}",
                self.objective.name()
            )));
        }
        self.precision()?;
        if !self.devices.is_empty() {
            let device = DeviceSpec::from_setting(&self.device)
                .map_err(|e| LearnerError::Config(format!("learner.device: {e}")))?;
            if !self.device.trim().is_empty() && device != self.device()? {
                return bad(
                    "learner.device and learner.devices disagree: with devices, leave device out \
                     (the first of devices holds the optimizer)",
                );
            }
            if is_ppo {
                return bad(
                    "learner.devices: `ppo` trains on one device (its critic is not replicated)",
                );
            }
        }
        Ok(())
    }

    fn optim(&self) -> OptimSettings {
        OptimSettings {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            batch_units: self.batch_units,
            epochs: self.epochs,
        }
    }
}

/// Why the policy learner cannot train with an objective, if it cannot.
pub fn unsupported(objective: &Objective) -> Option<&'static str> {
    match objective {
        Objective::BradleyTerry(_) | Objective::ArmoRegression(_) => {
            Some("trains a reward model, not a policy: use `rlhf rm` (docs/user-guide.md)")
        }
        _ => None,
    }
}

/// Learner errors.
#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    #[error("config: {0}")]
    Config(String),
    #[error("invalid training data: {0}")]
    Invalid(String),
    #[error("objective: {0}")]
    Objective(String),
    #[error(transparent)]
    Model(#[from] rlhf_model::ModelError),
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves the learner on `listener` until `shutdown` is cancelled; over mutual TLS when `tls`
/// is given (clients need a certificate of its CA).
pub async fn run(
    config: LearnerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<Tls>,
) -> Result<(), LearnerError> {
    let builder = rlhf_proto::security::server(tls.as_ref(), Clients::Members)
        .map_err(|e| LearnerError::Config(e.to_string()))?;
    config.validate()?;
    let addr: SocketAddr = listener.local_addr()?;
    // Replicas: every data-parallel device after the first (of the first's kind, validated).
    let replicas = config.data_parallel()?.into_iter().skip(1);
    match config.device()? {
        DeviceSpec::Cpu => {
            serve::<burn::backend::Autodiff<rlhf_model::Cpu>>(
                config,
                builder,
                listener,
                shutdown,
                Default::default(),
                replicas.map(|_| Default::default()).collect(),
                addr,
            )
            .await
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            let cuda = |d: DeviceSpec| match d {
                DeviceSpec::Cuda(k) => burn::backend::cuda::CudaDevice::new(k),
                DeviceSpec::Cpu => burn::backend::cuda::CudaDevice::new(n),
            };
            serve::<burn::backend::Autodiff<rlhf_model::backend::Cuda>>(
                config,
                builder,
                listener,
                shutdown,
                burn::backend::cuda::CudaDevice::new(n),
                replicas.map(cuda).collect(),
                addr,
            )
            .await
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(LearnerError::Config("built without CUDA support".into())),
    }
}

async fn serve<B: burn::tensor::backend::AutodiffBackend>(
    config: LearnerConfig,
    mut builder: tonic::transport::Server,
    listener: TcpListener,
    shutdown: CancellationToken,
    device: B::Device,
    replicas: Vec<B::Device>,
    addr: SocketAddr,
) -> Result<(), LearnerError> {
    let limit = config.max_message_bytes;
    let svc = tokio::task::spawn_blocking(move || {
        LearnerService::<B>::load_data_parallel(config, device, replicas)
    })
    .await
    .map_err(|e| LearnerError::Config(format!("loading the policy panicked: {e}")))??;
    let server = rlhf_proto::v1::learner_server::LearnerServer::new(svc)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    tracing::info!(%addr, "learner serving");
    builder
        .add_service(server)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| LearnerError::Serve {
            addr: addr.to_string(),
            source,
        })
}
