//! The fused CubeCL kernels (`src/cube/`: RMSNorm, RoPE, SiLU times up, masked softmax; forward
//! and, inside burn's autodiff graph, backward) against transformers' outputs and against the CPU
//! backend's composite operations and derived gradients, run on burn's wgpu backend: CubeCL compiles the same kernels for CUDA and for
//! Vulkan, and Mesa's CPU Vulkan device (lavapipe) runs them where there is no GPU. f32 only
//! (wgpu has no bf16; the bf16 instantiation runs on CUDA).
//!
//! ```sh
//! apt-get install mesa-vulkan-drivers
//! cargo test --release -p rlhf-model --features wgpu --test cube_kernels
//! ```

#![cfg(feature = "wgpu")]

use burn::backend::{Autodiff, Wgpu};
use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rlhf_model::load::host_vec;
use rlhf_model::model::RmsNorm;
use rlhf_model::{
    Cpu, CpuAutodiff, PaddingSide, Precision, TokenBatch, Transformer, concat_flat, cube,
};

mod common;
use common::{
    NamedGrads, by_name, causal_dirs, forward_checked, greedy_16, greedy_params, ids_u32,
    largest_relative_difference, logprob_loss, max_abs_diff, read_json, right_padded_rows,
    sampled_and_checked,
};

type W = Wgpu<f32, i32>;

/// Runs `f` and checks that it launched fused kernels (else the test would compare the composite
/// operations with themselves).
fn fused<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    assert!(cube::enabled(), "RLHF_GPU_KERNELS=off: nothing to test");
    let before = cube::launches();
    let out = f()?;
    assert!(
        cube::launches() > before,
        "{what}: no fused kernel ran on the wgpu backend"
    );
    Ok(out)
}

#[test]
fn fused_forward_matches_transformers_and_the_cpu_backend() -> anyhow::Result<()> {
    let device = Default::default();
    for dir in causal_dirs() {
        let model = Transformer::<W>::load(&dir, &device)?;
        let cpu = Transformer::<Cpu>::load(&dir, &Default::default())?;
        let (batch, logits) = fused("forward", || forward_checked(&model, &dir))?;
        let on_cpu = host_vec(cpu.forward_logits(&batch)?.into_data())?;
        let d = max_abs_diff(&logits, &on_cpu);
        eprintln!(
            "{}: fused vs CPU composite, max logit diff {d:e}",
            dir.display()
        );
        assert!(
            d < 1e-4,
            "{}: logits differ from the CPU's by {d}",
            dir.display()
        );
    }
    Ok(())
}

#[test]
fn fused_decoding_matches_greedy_transformers_and_teacher_forcing() -> anyhow::Result<()> {
    let device = Default::default();
    for dir in causal_dirs() {
        let model = Transformer::<W>::load(&dir, &device)?;
        let reference = read_json(&dir.join("reference.json"))?;
        let prompts: Vec<Vec<u32>> = reference["prompts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| ids_u32(&p["ids"]))
            .collect();
        // Left-padded rows of different lengths, decoded on the device with the KV cache.
        let out = fused("greedy decoding", || {
            Ok(model.generate(&prompts, &greedy_params())?)
        })?;
        for (i, want) in greedy_16(&reference).iter().enumerate() {
            assert_eq!(
                &out[i].completion_ids,
                want,
                "{}: greedy row {i}",
                dir.display()
            );
        }
        let (_, seqs) = sampled_and_checked(&model, &dir)?;
        // Right padding (a query row whose keys are all padding) as the CPU computes it.
        let batch = TokenBatch::pad(&seqs, 0, PaddingSide::Right)?;
        let cpu = Transformer::<Cpu>::load(&dir, &Default::default())?;
        let got = host_vec(model.token_logprobs(&batch)?.into_data())?;
        let want = host_vec(cpu.token_logprobs(&batch)?.into_data())?;
        let d = max_abs_diff(&got, &want);
        assert!(
            d < 1e-4,
            "{}: right-padded log-probs differ by {d}",
            dir.display()
        );
    }
    Ok(())
}

/// Training: the kernels as operations of the autodiff graph, their backward kernels against
/// burn's derived backward passes of the composite operations on the CPU — every parameter's
/// gradient of a weighted log-prob loss over a right-padded batch (padding rows' keys masked),
/// on every causal fixture (biases or none, tied head or not, a sliding window).
#[test]
fn fused_training_gradients_match_the_cpu_backend() -> anyhow::Result<()> {
    for dir in causal_dirs() {
        let model = Transformer::<Autodiff<W>>::load(&dir, &Default::default())?;
        let cpu = Transformer::<CpuAutodiff>::load(&dir, &Default::default())?;
        let (loss, fused_grads) = fused("forward", || loss_and_grads(&model, true))?;
        let (cpu_loss, cpu_grads) = loss_and_grads(&cpu, false)?;
        let what = dir.display().to_string();
        let worst = largest_relative_difference(&what, &cpu_grads, &fused_grads);
        eprintln!(
            "{what}: loss {loss} (CPU {cpu_loss}), {} parameters, largest relative gradient \
             difference {worst:.2e}",
            cpu_grads.len()
        );
        assert!(
            (loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs(),
            "{what}: loss {loss} vs {cpu_loss}"
        );
        assert!(worst < 1e-4, "{what}: gradients differ by {worst:.2e}");
    }
    Ok(())
}

/// Gradient checkpointing with the kernels: its forward pass without a graph (plain backend) and
/// its recomputation (autodiff) both run them, so the checkpointed gradients are the ordinary
/// ones (tiny-qwen2: biases, tied head; head in slices of one row).
#[test]
fn fused_checkpointed_gradients_equal_the_ordinary_ones() -> anyhow::Result<()> {
    let dir = common::fixtures().join("hf-tiny/tiny-qwen2");
    let model = Transformer::<Autodiff<W>>::load(&dir, &Default::default())?;
    let (loss, plain) = loss_and_grads(&model, true)?;
    let batch = right_padded_rows()?;
    let before = cube::launches();
    let (lp, checkpoints) = model.token_logprobs_checkpointed(&batch, 1)?;
    let ckpt_loss = logprob_loss(lp, &batch)?;
    let ckpt_value = host_vec(ckpt_loss.clone().into_data())?[0];
    let mut grads = ckpt_loss.backward();
    let ckpt = by_name(&model, &checkpoints.gradients(&model, &mut grads)?)?;
    assert!(cube::launches() > before, "no fused kernel ran");
    let worst = largest_relative_difference("checkpointed", &plain, &ckpt);
    eprintln!("loss {loss} / {ckpt_value}, largest relative gradient difference {worst:.2e}");
    assert!((loss - ckpt_value).abs() <= 1e-6 * loss.abs());
    assert!(worst < 1e-5, "checkpointed gradients differ by {worst:.2e}");
    Ok(())
}

/// The loss of [`logprob_loss`] and every parameter's gradient; with `fused`, checks that the
/// backward pass launched kernels of ours.
fn loss_and_grads<B: AutodiffBackend>(
    model: &Transformer<B>,
    fused: bool,
) -> anyhow::Result<(f32, NamedGrads)> {
    let batch = right_padded_rows()?;
    let loss = logprob_loss(model.token_logprobs(&batch)?, &batch)?;
    let value = host_vec(loss.clone().into_data())?[0];
    let before = cube::launches();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    assert!(
        !fused || cube::launches() > before,
        "no backward kernel of ours ran"
    );
    Ok((value, by_name(model, &grads)?))
}

/// The optimizer's flat concatenation: 37 parts of different lengths (an empty one among them)
/// in three launches of the kernel, the parts one after another.
#[test]
fn fused_concatenation_equals_cat() -> anyhow::Result<()> {
    let lengths: Vec<usize> = (0..37).map(|i| (i * 7919) % 1500).collect();
    assert!(lengths.contains(&0));
    let parts: Vec<Vec<f32>> = lengths
        .iter()
        .enumerate()
        .map(|(p, &n)| (0..n).map(|i| (p * 10_000 + i) as f32).collect())
        .collect();
    let on = |parts: &[Vec<f32>]| -> Vec<Tensor<W, 1>> {
        parts
            .iter()
            .map(|v| Tensor::from_data(TensorData::new(v.clone(), [v.len()]), &Default::default()))
            .collect()
    };
    let before = cube::launches();
    let flat = host_vec(concat_flat(on(&parts)).into_data())?;
    // At least: the other tests of this binary launch kernels concurrently.
    let launched = cube::launches() - before;
    assert!(
        launched >= 3,
        "{launched} launches: one per 16 parts expected"
    );
    let want: Vec<f32> = parts.concat();
    assert_eq!(flat, want);
    // A single part is returned as it is.
    let one = host_vec(concat_flat(on(&parts[1..2])).into_data())?;
    assert_eq!(one, parts[1]);
    Ok(())
}

/// Rows longer than a cube's threads and more rows than one grid dimension holds; RMSNorm alone
/// and after a residual addition.
#[test]
fn fused_rms_norm_handles_wide_rows_and_many_rows() -> anyhow::Result<()> {
    for (rows, width) in [(3, 1000), (70_000, 8)] {
        let values: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let weight: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / width as f32).collect();
        let fused_out = fused("rms_norm", || norm::<W>(&values, &weight, rows, width))?;
        let composite = norm::<Cpu>(&values, &weight, rows, width)?;
        for (what, a, b) in [
            ("RMSNorm", &fused_out.0, &composite.0),
            ("residual sum", &fused_out.1, &composite.1),
            ("RMSNorm of the sum", &fused_out.2, &composite.2),
        ] {
            let d = max_abs_diff(a, b);
            assert!(d < 1e-5, "{rows} x {width}: fused {what} differs by {d}");
        }
    }
    Ok(())
}

/// On backend `B`, read back: RMSNorm (eps 1e-6) of `values` as `[1, rows, width]`, then the
/// sum `values + values / 3` and its RMSNorm (`RmsNorm::forward_residual`).
fn norm<B: Backend>(
    values: &[f32],
    weight: &[f32],
    rows: usize,
    width: usize,
) -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let device = Default::default();
    let x = Tensor::<B, 3>::from_data(TensorData::new(values.to_vec(), [1, rows, width]), &device);
    let w = Tensor::<B, 1>::from_data(TensorData::new(weight.to_vec(), [width]), &device);
    let norm = RmsNorm {
        weight: Param::from_tensor(w),
        eps: 1e-6,
    };
    let alone = host_vec(norm.forward(x.clone(), Precision::F32).into_data())?;
    let delta = x.clone().div_scalar(3.0);
    let (sum, normed) = norm.forward_residual(x, delta, Precision::F32);
    Ok((
        alone,
        host_vec(sum.into_data())?,
        host_vec(normed.into_data())?,
    ))
}
