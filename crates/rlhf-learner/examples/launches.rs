//! Counts the GPU kernels a training step and a decoding call launch, without a GPU: burn's
//! wgpu backend runs the same CubeCL kernels as the CUDA one on any Vulkan device, including
//! Mesa's CPU implementation (lavapipe). On an H200 a step's time followed its launches, not its
//! arithmetic (docs/benchmarks.md), so the count is what the model and optimizer code control.
//!
//! ```sh
//! apt-get install mesa-vulkan-drivers      # lavapipe, where there is no GPU
//! scripts/count_launches.sh                # every phase, launches per repetition
//! ```
//! Arguments: the phase — `forward` (token log-probs), `backward` (and the backward pass),
//! `step` (and gather, clip and AdamW), `decode` (8 new tokens for 4 rows), `infer` (token
//! log-probs without autodiff, as a frozen reference or a scorer computes them) —, the number of
//! repetitions (default 2) and of layers (default 4; Qwen2.5-0.5B has 24). With `CUBECL_DEBUG_LOG=FILE CUBECL_DEBUG_OPTION=profile` CubeCL writes one line
//! per kernel; the script takes the difference between 2 and 1 repetitions (the first compiles
//! and autotunes).

use std::time::Instant;

use burn::backend::{Autodiff, Wgpu};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use rlhf_learner::adamw::FlatAdamW;
use rlhf_model::{
    Architecture, ModelConfig, SamplingParams, TokenBatch, Transformer, masked_mean, target_mask,
};

type B = Autodiff<Wgpu<f32, i32>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let phase = args.next().unwrap_or_else(|| "step".into());
    let reps: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(2);
    let layers: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(4);
    let device = Default::default();
    // Qwen2-shaped (biases on q/k/v, grouped KV heads, tied head), small enough for a CPU
    // Vulkan device: the launch count depends on the layer count, not on the widths.
    let config = ModelConfig::synthetic(Architecture::Qwen2ForCausalLM, 512, 64, layers, 4, 2, 128);
    let mut model = Transformer::<B>::random(config, 1, &device);
    let (rows, len) = (4, 32);
    let ids: Vec<u32> = (0..rows * len).map(|i| (i * 7 % 512) as u32).collect();
    let batch = TokenBatch::unpadded(ids, rows, len)?;
    let mask = Tensor::<B, 2>::from_data(
        TensorData::new(target_mask(&batch), [rows, len - 1]),
        &device,
    );
    let mut optim = FlatAdamW::<B>::new(0.0);
    for rep in 0..reps {
        let start = Instant::now();
        if phase == "infer" {
            model.valid().token_logprobs(&batch)?.into_data();
        } else if phase == "decode" {
            let prompts: Vec<Vec<u32>> = (0..rows).map(|r| vec![r as u32 + 1; 8]).collect();
            let sp = SamplingParams {
                max_new_tokens: 8,
                temperature: 1.0,
                seed: 1,
                ..Default::default()
            };
            model.valid().generate(&prompts, &sp)?;
        } else {
            let (lp, checkpoints) = model.token_logprobs_for_training(&batch, false)?;
            let loss = masked_mean(lp, mask.clone()).mean().neg();
            if phase == "forward" {
                loss.into_data();
            } else {
                let mut grads = loss.backward();
                let grads = model.param_gradients(checkpoints, &mut grads)?;
                if phase == "step" {
                    let mut flat = optim.gather(&model, grads);
                    flat.clip(1.0);
                    model = optim.step_flat(1e-3, model, flat)?;
                }
                model.embed_tokens.weight.val().into_data();
            }
        }
        eprintln!(
            "{phase}: repetition {rep} took {:.2}s ({layers} layers)",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
