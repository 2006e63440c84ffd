//! Supervised fine-tuning on chat data with the prompt masked: the loss is the mean negative
//! log-likelihood of the assistant's final answer tokens only, so a run can start the online
//! loop from a sensible policy.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use rlhf_core::ChatMessage;
use rlhf_model::load::host_vec;
use rlhf_model::{Tokenizer, Transformer};

use crate::LearnerError;
use crate::trainer::{Seq, trained_seq_logps};

/// SFT settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftSettings {
    pub lr: f64,
    pub weight_decay: f32,
    pub max_grad_norm: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Examples longer than this (prompt + answer tokens) are skipped and counted.
    pub max_len: usize,
    /// Gradient checkpointing (see `learner.gradient_checkpointing`).
    pub gradient_checkpointing: bool,
}

/// One tokenized example: the prompt (masked) and the answer (trained on).
pub type Example = Seq;

/// Splits a conversation ending with an assistant message into prompt and answer tokens:
/// the prompt is the conversation before the last message rendered with the generation
/// prompt, the answer what the full rendering adds after it.
pub fn tokenize_example(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
) -> Result<Example, String> {
    let Some((last, before)) = messages.split_last() else {
        return Err("no messages".into());
    };
    if last.role != "assistant" {
        return Err(format!(
            "the last message must be the assistant's answer, found role `{}`",
            last.role
        ));
    }
    if before.is_empty() {
        return Err("no prompt before the assistant's answer".into());
    }
    let prompt = tokenizer
        .encode_chat(before, true)
        .map_err(|e| e.to_string())?;
    let full = tokenizer
        .encode_chat(messages, false)
        .map_err(|e| e.to_string())?;
    if !full.starts_with(&prompt) || full.len() == prompt.len() {
        return Err(
            "the chat template does not render the conversation as prompt followed by the answer"
                .into(),
        );
    }
    Ok(Seq {
        completion: full[prompt.len()..].to_vec(),
        prompt,
        reward: 0.0,
    })
}

/// What an SFT run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SftReport {
    pub steps: u64,
    pub first_loss: f64,
    pub last_loss: f64,
    pub skipped_nonfinite_steps: u64,
    pub tokens: u64,
    pub seconds: f64,
}

/// Trains `policy` on `examples`; `on_step(step, total, loss)` reports progress.
pub fn train_sft<B: AutodiffBackend>(
    mut policy: Transformer<B>,
    examples: &[Example],
    s: SftSettings,
    mut on_step: impl FnMut(u64, u64, f64),
) -> Result<(Transformer<B>, SftReport), LearnerError> {
    if examples.is_empty() {
        return Err(LearnerError::Invalid("no SFT examples".into()));
    }
    let mut optim = crate::adamw::FlatAdamW::new(s.weight_decay);
    let pad = policy.config.pad_token_id.unwrap_or(0);
    let per_epoch = examples.len().div_ceil(s.batch_size.max(1)) as u64;
    let total = per_epoch * s.epochs.max(1) as u64;
    let mut report = SftReport::default();
    let start = Instant::now();
    for _ in 0..s.epochs.max(1) {
        for chunk in examples.chunks(s.batch_size.max(1)) {
            let seqs: Vec<&Seq> = chunk.iter().collect();
            let (sums, counts, checkpoints) =
                trained_seq_logps(&policy, &seqs, pad, s.gradient_checkpointing)?;
            let tokens: f32 = counts.iter().sum();
            let loss = sums.sum().neg().div_scalar(tokens.max(1.0));
            let value = f64::from(host_vec(loss.clone().detach().into_data())?[0]);
            report.steps += 1;
            if !value.is_finite() {
                report.skipped_nonfinite_steps += 1;
                continue;
            }
            let mut grads = loss.backward();
            let grads = policy.param_gradients(checkpoints, &mut grads)?;
            let mut grads = optim.gather(&policy, grads);
            if !grads.clip(s.max_grad_norm).is_finite() {
                report.skipped_nonfinite_steps += 1;
                continue;
            }
            policy = optim.step_flat(s.lr, policy, grads)?;
            if report.steps == 1 {
                report.first_loss = value;
            }
            report.last_loss = value;
            report.tokens += tokens as u64;
            on_step(report.steps, total, value);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((policy, report))
}
