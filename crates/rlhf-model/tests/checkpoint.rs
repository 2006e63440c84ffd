//! Gradient checkpointing (`Transformer::hidden_checkpointed`,
//! `Transformer::token_logprobs_checkpointed` and `Checkpoints::gradients`) gives the gradients
//! of the ordinary backward pass: on the fixtures (Llama, Qwen2 with tied embeddings, Mistral
//! with a sliding window), with a right-padded batch, in f32 on the CPU backend and in bf16 on
//! flex; for the layers alone, the same bits. With an entropy term computed slice by slice too
//! (`Transformer::token_logprobs_entropy_checkpointed`).

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use burn_flex::Flex;
use rlhf_model::checkpoint::token_entropy;
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, Precision, TokenBatch, Transformer, gather_logprobs};

mod common;
use common::{
    by_name, fixtures, largest_relative_difference, logprob_loss, right_padded_rows as batch,
    weighted_target_loss,
};

fn fixture_dirs() -> Vec<PathBuf> {
    vec![
        fixtures().join("hf-tiny/tiny-llama3"),
        fixtures().join("hf-tiny/tiny-qwen2"),
        fixtures().join("hf-extra/mistral-window"),
    ]
}

/// A loss with different weights per row over the real targets: `-Σ_r w_r Σ_t log p`.
fn loss<B: AutodiffBackend>(
    model: &Transformer<B>,
    hidden: Tensor<B, 3>,
    batch: &TokenBatch,
) -> anyhow::Result<Tensor<B, 1>> {
    logprob_loss(gather_logprobs(model.logits(hidden)?, batch), batch)
}

/// How the checkpointed forward is run.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `hidden_checkpointed`: the layers checkpointed, the head an ordinary graph.
    Hidden,
    /// `token_logprobs_checkpointed` with this many rows per head slice.
    Logprobs(usize),
    /// `token_logprobs_entropy_checkpointed` with this many rows per head slice; the loss adds
    /// an entropy term.
    Entropy(usize),
}

/// An entropy bonus over the real targets' positions, weighted per row differently from the
/// log-prob loss.
fn entropy_loss<B: AutodiffBackend>(
    entropy: Tensor<B, 2>,
    batch: &TokenBatch,
) -> anyhow::Result<Tensor<B, 1>> {
    Ok(weighted_target_loss(entropy, batch, [0.3, 0.7, 0.1]))
}

/// Loss and gradients, ordinary and checkpointed; returns the largest difference of a gradient
/// relative to that gradient's largest magnitude.
fn compare<B: AutodiffBackend>(
    model: &Transformer<B>,
    mode: Mode,
    what: &str,
) -> anyhow::Result<f32> {
    let batch = batch()?;
    let plain_loss = match mode {
        Mode::Entropy(_) => {
            let logits = model.logits(model.hidden(&batch)?)?;
            let entropy = token_entropy(logits.clone());
            logprob_loss(gather_logprobs(logits, &batch), &batch)? + entropy_loss(entropy, &batch)?
        }
        _ => loss(model, model.hidden(&batch)?, &batch)?,
    };
    let plain_value = host_vec(plain_loss.clone().into_data())?[0];
    let plain = GradientsParams::from_grads(plain_loss.backward(), model);

    let (ckpt_loss, checkpoints) = match mode {
        Mode::Hidden => {
            let (hidden, checkpoints) = model.hidden_checkpointed(&batch)?;
            (loss(model, hidden, &batch)?, checkpoints)
        }
        Mode::Logprobs(rows) => {
            let (lp, checkpoints) = model.token_logprobs_checkpointed(&batch, rows)?;
            (logprob_loss(lp, &batch)?, checkpoints)
        }
        Mode::Entropy(rows) => {
            let (lp, entropy, checkpoints) =
                model.token_logprobs_entropy_checkpointed(&batch, rows)?;
            (
                logprob_loss(lp, &batch)? + entropy_loss(entropy, &batch)?,
                checkpoints,
            )
        }
    };
    let ckpt_value = host_vec(ckpt_loss.clone().into_data())?[0];
    let mut grads = ckpt_loss.backward();
    let ckpt = checkpoints.gradients(model, &mut grads)?;

    match mode {
        // Slices of fewer rows than the batch multiply other shapes: last bits may differ.
        Mode::Logprobs(rows) | Mode::Entropy(rows) if rows < batch.batch => assert!(
            (plain_value - ckpt_value).abs() <= 1e-6 * plain_value.abs(),
            "{what}: the checkpointed forward computes another loss ({plain_value} vs {ckpt_value})"
        ),
        _ => assert_eq!(
            plain_value.to_bits(),
            ckpt_value.to_bits(),
            "{what}: the checkpointed forward computes another loss ({plain_value} vs {ckpt_value})"
        ),
    }
    let plain = by_name(model, &plain)?;
    let ckpt = by_name(model, &ckpt)?;
    let worst = largest_relative_difference(what, &plain, &ckpt);
    eprintln!(
        "{what} {mode:?}: {} parameters, largest relative gradient difference {worst:.2e}",
        plain.len()
    );
    Ok(worst)
}

fn load<B: AutodiffBackend>(dir: &Path, precision: Precision) -> anyhow::Result<Transformer<B>> {
    Ok(Transformer::<B>::load(dir, &Default::default())?.with_precision(precision)?)
}

#[test]
fn checkpointed_gradients_equal_the_ordinary_ones_in_f32() -> anyhow::Result<()> {
    for dir in fixture_dirs() {
        let model = load::<Autodiff<Cpu>>(&dir, Precision::F32)?;
        let what = dir.display().to_string();
        // The same operations on the same values: the same bits (the layers).
        assert_eq!(compare(&model, Mode::Hidden, &what)?, 0.0, "{what}");
        // The head: the gradient entering the recomputed log-probs is a fresh tensor where the
        // ordinary pass hands on its own, and ndarray's reductions may order sums by memory
        // layout: equal up to rounding (the same bits for this batch, not for every shape).
        // One row per slice: the head's weight gradient is a sum of three.
        for mode in [
            Mode::Logprobs(3),
            Mode::Logprobs(1),
            Mode::Entropy(3),
            Mode::Entropy(1),
        ] {
            let worst = compare(&model, mode, &what)?;
            assert!(worst < 1e-5, "{what} {mode:?}: {worst}");
        }
    }
    Ok(())
}

#[test]
fn checkpointed_gradients_equal_the_ordinary_ones_in_bf16() -> anyhow::Result<()> {
    for dir in fixture_dirs() {
        let model = load::<Autodiff<Flex>>(&dir, Precision::Bf16)?;
        let what = format!("{} (bf16)", dir.display());
        for mode in [Mode::Hidden, Mode::Logprobs(3)] {
            let worst = compare(&model, mode, &what)?;
            assert!(worst < 1e-3, "{what} {mode:?}: {worst}");
        }
        // Other matmul shapes round some bf16 values the other way (bf16's ulp is 2^-8).
        let worst = compare(&model, Mode::Logprobs(1), &what)?;
        assert!(worst < 1e-2, "{what}: {worst}");
    }
    Ok(())
}

#[test]
fn head_slices_follow_the_memory_budget() -> anyhow::Result<()> {
    use rlhf_model::checkpoint::{HEAD_SLICE_BYTES, head_slice_rows};
    let qwen = rlhf_model::ModelConfig::synthetic(
        rlhf_model::Architecture::Qwen2ForCausalLM,
        151936,
        896,
        24,
        14,
        2,
        4864,
    );
    // A 256-token row of Qwen's vocabulary is over the budget alone: one row per slice.
    assert_eq!(head_slice_rows(&qwen, 256), 1);
    let tiny = load::<Autodiff<Cpu>>(&fixture_dirs()[0], Precision::F32)?;
    let rows = head_slice_rows(&tiny.config, 16);
    assert_eq!(
        rows as u64,
        HEAD_SLICE_BYTES / (16 * 16 * tiny.config.vocab_size as u64)
    );
    Ok(())
}

#[test]
fn a_loss_of_the_head_alone_gets_the_head_gradients_only() -> anyhow::Result<()> {
    // The final norm's output is not used: nothing reaches the layers.
    let model = load::<Autodiff<Cpu>>(&fixtures().join("hf-tiny/tiny-llama3"), Precision::F32)?;
    let batch = batch()?;
    let (hidden, checkpoints) = model.hidden_checkpointed(&batch)?;
    let head = model.lm_head.as_ref().map(|h| h.weight.val());
    let loss = head
        .map(|w| w.sum())
        .ok_or_else(|| anyhow::anyhow!("no lm_head"))?;
    drop(hidden);
    let mut grads = loss.backward();
    let params = checkpoints.gradients(&model, &mut grads)?;
    assert_eq!(params.len(), 1);
    Ok(())
}
