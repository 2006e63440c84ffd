//! Backend choice. Model code is generic over `B: Backend`; binaries pick a concrete backend at
//! run time from a `device` setting (`cpu`, `cuda:N`) through [`DeviceSpec`].

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use burn::tensor::backend::Backend;

use crate::batch::TokenBatch;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::generate::{Completion, SamplingParams};
use crate::load::host_vec;
use crate::model::{Precision, Transformer};

/// The CPU backend (burn's ndarray: measured 2.2× faster than flex for training here).
pub type Cpu = burn::backend::NdArray<f32>;
/// The CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;
/// The CUDA backend (loads CUDA at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
/// The CUDA backend with autodiff.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;

/// Where to run, as written in configs and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if s == "cuda" {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            return n
                .parse()
                .map(DeviceSpec::Cuda)
                .map_err(|_| format!("invalid device `{s}`: expected cuda:N with N a GPU index"));
        }
        Err(format!("invalid device `{s}`: expected `cpu` or `cuda:N`"))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Parses a `device` setting (empty means `cpu`) and checks this binary supports it.
    pub fn from_setting(setting: &str) -> Result<Self, String> {
        if setting.trim().is_empty() {
            return Ok(DeviceSpec::Cpu);
        }
        let d: DeviceSpec = setting.parse()?;
        d.check_supported()?;
        Ok(d)
    }

    /// Whether this binary can run on that device.
    pub fn check_supported(self) -> Result<(), String> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Cuda(_) if cfg!(feature = "cuda") => Ok(()),
            DeviceSpec::Cuda(_) => Err(format!(
                "device `{self}`: this binary was built without CUDA support (rebuild with `--features cuda`)"
            )),
        }
    }
}

/// A model loaded (for inference) on the backend a `device` setting chose: what services that
/// only read a model (scorers, evaluation) hold, instead of each writing the CPU/CUDA dispatch.
// One per service, never in a collection: the CUDA variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyModel {
    Cpu(Transformer<Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(Transformer<Cuda>),
}

/// A computation written once for every backend, run by [`AnyModel::run`].
pub trait OnModel {
    type Output;
    fn run<B: Backend>(self, model: &Transformer<B>) -> Self::Output;
}

impl AnyModel {
    /// Loads a checkpoint folder onto `device` (checked with [`DeviceSpec::check_supported`]),
    /// its weights stored in `precision` (see [`Transformer::cast_weights`]).
    pub fn load(path: &Path, device: DeviceSpec, precision: Precision) -> crate::Result<Self> {
        device.check_supported().map_err(ModelError::Input)?;
        precision.check_device(device).map_err(ModelError::Input)?;
        match device {
            DeviceSpec::Cpu => Ok(AnyModel::Cpu(
                Transformer::load(path, &Default::default())?.cast_weights(precision)?,
            )),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => Ok(AnyModel::Cuda(
                Transformer::load(path, &burn::backend::cuda::CudaDevice::new(n))?
                    .cast_weights(precision)?,
            )),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(ModelError::Input(format!(
                "device `{device}`: this binary was built without CUDA support"
            ))),
        }
    }

    /// A model of `config` from safetensors bytes (a weight stream from the learner) onto
    /// `device`, its weights stored in `precision`; `origin` names the source in errors.
    pub fn from_safetensors_bytes(
        config: ModelConfig,
        bytes: &[u8],
        origin: &Path,
        device: DeviceSpec,
        precision: Precision,
    ) -> crate::Result<Self> {
        device.check_supported().map_err(ModelError::Input)?;
        precision.check_device(device).map_err(ModelError::Input)?;
        match device {
            DeviceSpec::Cpu => Ok(AnyModel::Cpu(
                Transformer::from_safetensors_bytes(config, bytes, origin, &Default::default())?
                    .cast_weights(precision)?,
            )),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => Ok(AnyModel::Cuda(
                Transformer::from_safetensors_bytes(
                    config,
                    bytes,
                    origin,
                    &burn::backend::cuda::CudaDevice::new(n),
                )?
                .cast_weights(precision)?,
            )),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(ModelError::Input(format!(
                "device `{device}`: this binary was built without CUDA support"
            ))),
        }
    }

    /// Runs `f` on the model, whatever its backend.
    pub fn run<F: OnModel>(&self, f: F) -> F::Output {
        match self {
            AnyModel::Cpu(m) => f.run(m),
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => f.run(m),
        }
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        match self {
            AnyModel::Cpu(m) => &m.config,
            #[cfg(feature = "cuda")]
            AnyModel::Cuda(m) => &m.config,
        }
    }

    /// Seeded batched sampling (see [`Transformer::generate_seeded`]).
    pub fn generate_seeded(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        seeds: &[u64],
    ) -> crate::Result<Vec<Completion>> {
        struct Generate<'a>(&'a [Vec<u32>], &'a SamplingParams, &'a [u64]);
        impl OnModel for Generate<'_> {
            type Output = crate::Result<Vec<Completion>>;
            fn run<B: Backend>(self, m: &Transformer<B>) -> Self::Output {
                m.generate_seeded(self.0, self.1, self.2)
            }
        }
        self.run(Generate(prompts, params, seeds))
    }

    /// Token log-probs `[batch, len - 1]` (row-major, on the host) of a causal LM: position `t`
    /// of a row holds `log p(ids[t+1] | ids[..=t])` (see [`Transformer::token_logprobs`]).
    pub fn token_logprobs(&self, batch: &TokenBatch) -> crate::Result<Vec<f32>> {
        struct Logprobs<'a>(&'a TokenBatch);
        impl OnModel for Logprobs<'_> {
            type Output = crate::Result<Vec<f32>>;
            fn run<B: Backend>(self, m: &Transformer<B>) -> Self::Output {
                host_vec(m.token_logprobs(self.0)?.into_data())
            }
        }
        self.run(Logprobs(batch))
    }

    /// Reward scores `[batch, num_labels]` (row-major, on the host) of a sequence-classification
    /// model (see [`Transformer::scores`]).
    pub fn scores(&self, batch: &TokenBatch) -> crate::Result<Vec<f32>> {
        struct Scores<'a>(&'a TokenBatch);
        impl OnModel for Scores<'_> {
            type Output = crate::Result<Vec<f32>>;
            fn run<B: Backend>(self, m: &Transformer<B>) -> Self::Output {
                host_vec(m.scores(self.0)?.into_data())
            }
        }
        self.run(Scores(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::from_setting(""), Ok(DeviceSpec::Cpu));
        assert!(DeviceSpec::from_setting("gpu").is_err());
    }
}
