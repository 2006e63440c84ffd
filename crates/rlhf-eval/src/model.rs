//! The model behind a policy, on the backend the `device` setting picks: the CPU backend
//! always, the CUDA backend in builds with the `cuda` feature.

use rlhf_learner::trainer::{Seq, seq_logps};
use rlhf_model::{Completion, DeviceSpec, ModelConfig, ModelError, SamplingParams, Transformer};

/// A loaded model on one backend.
pub enum EvalModel {
    Cpu(Transformer<rlhf_model::Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(Transformer<rlhf_model::backend::Cuda>),
}

impl EvalModel {
    /// Loads a checkpoint folder onto `device`.
    pub fn load(path: &std::path::Path, device: DeviceSpec) -> Result<Self, ModelError> {
        match device {
            DeviceSpec::Cpu => Ok(EvalModel::Cpu(Transformer::load(
                path,
                &Default::default(),
            )?)),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(n) => Ok(EvalModel::Cuda(Transformer::load(
                path,
                &burn::backend::cuda::CudaDevice::new(n),
            )?)),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(ModelError::Input(format!(
                "device `{device}`: this binary was built without CUDA support"
            ))),
        }
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        match self {
            EvalModel::Cpu(m) => &m.config,
            #[cfg(feature = "cuda")]
            EvalModel::Cuda(m) => &m.config,
        }
    }

    /// Seeded batched sampling (see `Transformer::generate_seeded`).
    pub fn generate_seeded(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        seeds: &[u64],
    ) -> Result<Vec<Completion>, ModelError> {
        match self {
            EvalModel::Cpu(m) => m.generate_seeded(prompts, params, seeds),
            #[cfg(feature = "cuda")]
            EvalModel::Cuda(m) => m.generate_seeded(prompts, params, seeds),
        }
    }

    /// Summed completion log-probs of `seqs` (prompt tokens masked), on the host.
    pub fn seq_logps(&self, seqs: &[&Seq], pad: u32) -> Result<Vec<f32>, String> {
        fn host<B: burn::tensor::backend::Backend>(
            m: &Transformer<B>,
            seqs: &[&Seq],
            pad: u32,
        ) -> Result<Vec<f32>, String> {
            let (sums, _) = seq_logps(m, seqs, pad).map_err(|e| e.to_string())?;
            rlhf_model::load::host_vec(sums.into_data()).map_err(|e| e.to_string())
        }
        match self {
            EvalModel::Cpu(m) => host(m, seqs, pad),
            #[cfg(feature = "cuda")]
            EvalModel::Cuda(m) => host(m, seqs, pad),
        }
    }
}
