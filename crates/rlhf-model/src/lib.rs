//! rlhf-model: Hugging Face Llama / Qwen2 / Mistral decoders on burn.
//!
//! - [`config`]: `config.json` → [`ModelConfig`] (both RoPE layouts, GQA, biases, tied heads).
//! - [`weights`]: safetensors in (single or sharded; f32/bf16/f16) and out.
//! - [`tokenizer`]: `tokenizer.json` and the chat template.
//! - [`model`]: the decoder as a burn module; logits, token log-probs, scores and values.
//! - [`checkpoint`]: gradient checkpointing (layers and output head) for training steps.
//! - [`generate`]: batched sampling with a KV cache, returning policy log-probs.
//! - [`load`]: building from a checkpoint or random weights, saving in HF format.
//! - [`memory`]: estimates of what training steps and generation calls hold.
//! - [`backend`]: the CPU/CUDA backends and the `device` setting.
//! - `cube` (CUDA and wgpu builds only): fused kernels (inference and training) for burn's CubeCL
//!   backends.
//! - [`kernel_cache`]: where a GPU backend keeps compiled kernels and autotune results.

pub mod backend;
pub mod batch;
pub mod checkpoint;
pub mod config;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
pub mod error;
pub mod generate;
pub mod kernel_cache;
pub mod load;
pub mod memory;
pub mod model;
pub mod tokenizer;
pub mod weights;

pub use backend::{AnyModel, Cpu, CpuAutodiff, DeviceSpec, OnModel};
pub use batch::{PaddingSide, TokenBatch};
pub use checkpoint::Checkpoints;
pub use config::{Architecture, HeadKind, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::{Completion, FinishReason, SamplingParams};
pub use model::{
    KvCache, Precision, Transformer, concat_flat, gather_logprobs, masked_mean, masked_sum,
    target_mask,
};
pub use tokenizer::{ChatMessage, Tokenizer};
