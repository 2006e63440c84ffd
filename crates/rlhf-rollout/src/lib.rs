//! rlhf-rollout: the rollout worker service.
//!
//! Holds one policy version, samples `n` completions per leased prompt (batched decoding with a
//! KV cache) and streams them back with token ids, policy log-probs and the version used. When a
//! request names another version, the worker fetches it from the learner (`FetchWeights`,
//! checksummed chunks), verifies the SHA-256 and switches — only between batches.
//!
//! Randomness: sample `i` of prompt `p` draws from a generator seeded by `(seed, p, i)`, so a
//! sample does not depend on which worker made it or what shared its batch.

mod service;

use std::net::SocketAddr;
use std::path::PathBuf;

use rlhf_core::CancellationToken;
use rlhf_model::{DeviceSpec, Precision};
use rlhf_proto::security::{Clients, Tls};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use service::{RolloutService, sample_seed};

/// Settings of one rollout worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// A name unique among workers.
    #[serde(default = "default_name")]
    pub name: String,
    /// The initial policy (Hugging Face checkpoint folder); version 0. `rlhf run` fills it
    /// from `[model]`.
    #[serde(default)]
    pub model: PathBuf,
    /// cpu or cuda:N.
    #[serde(default)]
    pub device: String,
    /// Compute precision: `f32` (default) or `bf16` (the worker keeps bf16 weights; needs a
    /// GPU). `rlhf run` fills it from `model.precision`.
    #[serde(default)]
    pub precision: String,
    /// Rows (prompt × sample) decoded together.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// Limit on gRPC messages, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_name() -> String {
    "rollout-0".into()
}
fn default_max_batch_rows() -> usize {
    64
}
fn default_max_message_bytes() -> usize {
    rlhf_proto::DEFAULT_MAX_MESSAGE_BYTES
}

impl RolloutConfig {
    /// A config with defaults for everything but the model.
    pub fn new(model: PathBuf) -> Self {
        Self {
            name: default_name(),
            model,
            device: String::new(),
            precision: String::new(),
            max_batch_rows: default_max_batch_rows(),
            max_message_bytes: default_max_message_bytes(),
        }
    }

    /// The parsed device (`cpu` when empty).
    pub fn device(&self) -> Result<DeviceSpec, RolloutError> {
        DeviceSpec::from_setting(&self.device)
            .map_err(|e| RolloutError::Config(format!("rollout.device: {e}")))
    }

    /// The parsed precision (`f32` when empty), checked against the device.
    pub fn precision(&self) -> Result<Precision, RolloutError> {
        Precision::for_device(&self.precision, self.device()?)
            .map_err(|e| RolloutError::Config(format!("rollout.precision: {e}")))
    }

    /// Checks the settings, naming the bad field.
    pub fn validate(&self) -> Result<(), RolloutError> {
        if self.model.as_os_str().is_empty() {
            return Err(RolloutError::Config(
                "rollout.model: missing (a Hugging Face checkpoint folder)".into(),
            ));
        }
        if self.max_batch_rows == 0 {
            return Err(RolloutError::Config(
                "rollout.max_batch_rows must be at least 1".into(),
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(RolloutError::Config(
                "rollout.max_message_bytes must be at least 1024".into(),
            ));
        }
        self.precision()?;
        Ok(())
    }
}

/// Rollout worker errors.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("config: {0}")]
    Config(String),
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

/// Serves the rollout worker on `listener` until `shutdown` is cancelled; with `tls`, over
/// mutual TLS (clients need a certificate of its CA), and weights are fetched over it too.
pub async fn run(
    config: RolloutConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<Tls>,
) -> Result<(), RolloutError> {
    let builder = rlhf_proto::security::server(tls.as_ref(), Clients::Members)
        .map_err(|e| RolloutError::Config(e.to_string()))?;
    config.validate()?;
    let addr: SocketAddr = listener.local_addr()?;
    match config.device()? {
        DeviceSpec::Cpu => {
            let device = Default::default();
            serve::<rlhf_model::Cpu>(config, builder, tls, listener, shutdown, device, addr).await
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            serve::<rlhf_model::backend::Cuda>(
                config,
                builder,
                tls,
                listener,
                shutdown,
                burn::backend::cuda::CudaDevice::new(n),
                addr,
            )
            .await
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(RolloutError::Config("built without CUDA support".into())),
    }
}

async fn serve<B: burn::tensor::backend::Backend>(
    config: RolloutConfig,
    mut builder: tonic::transport::Server,
    tls: Option<Tls>,
    listener: TcpListener,
    shutdown: CancellationToken,
    device: B::Device,
    addr: SocketAddr,
) -> Result<(), RolloutError> {
    let limit = config.max_message_bytes;
    let name = config.name.clone();
    let svc = tokio::task::spawn_blocking(move || RolloutService::<B>::load(config, device, tls))
        .await
        .map_err(|e| RolloutError::Config(format!("loading the policy panicked: {e}")))??;
    let server = rlhf_proto::v1::rollout_server::RolloutServer::new(svc)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    tracing::info!(worker = %name, %addr, "rollout worker serving");
    builder
        .add_service(server)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.cancelled_owned(),
        )
        .await
        .map_err(|source| RolloutError::Serve {
            addr: addr.to_string(),
            source,
        })
}
