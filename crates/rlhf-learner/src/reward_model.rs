//! Reward-model training with the Bradley–Terry loss (`bradley_terry` in rlhf-algo): a
//! sequence-classification model with one output scores prompt + answer at its last token, and
//! `−log σ(β (r_chosen − r_rejected))` pushes the chosen answer's score above the rejected one's.
//! The result is a Hugging Face `*ForSequenceClassification` checkpoint that the `reward_model`
//! scorer of the online loop loads.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rlhf_algo::reward_model::{BradleyTerryConfig, RewardPairBatch, bradley_terry_loss};
use rlhf_model::load::host_vec;
use rlhf_model::{HeadKind, Transformer};

use crate::LearnerError;
use crate::clip::{grad_norm, scale_grads};
use crate::trainer::{Seq, full_batch};

/// Reward-model training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardSettings {
    pub lr: f64,
    pub weight_decay: f32,
    pub max_grad_norm: f64,
    /// Pairs per optimizer step.
    pub batch_size: usize,
    pub epochs: usize,
    pub objective: BradleyTerryConfig,
}

/// A preference pair, tokenized: (chosen, rejected).
pub type TokenPair = (Seq, Seq);

/// What a reward-model run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewardReport {
    pub steps: u64,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Mean training accuracy (chosen scored above rejected) over the last epoch's steps.
    pub last_epoch_accuracy: f64,
    pub skipped_nonfinite_steps: u64,
    pub seconds: f64,
}

/// Turns a checkpoint into a one-output reward model: a causal LM gets a fresh (zero) score
/// head; a sequence-classification model must already have exactly one output.
pub fn as_reward_model<B: Backend>(model: Transformer<B>) -> Result<Transformer<B>, LearnerError> {
    match model.config.architecture.head() {
        HeadKind::CausalLm => Ok(model.with_score_head(1)),
        HeadKind::SequenceClassification if model.config.num_labels == 1 => Ok(model),
        HeadKind::SequenceClassification => Err(LearnerError::Config(format!(
            "model: a Bradley–Terry reward model has one output, this one has num_labels = {}",
            model.config.num_labels
        ))),
    }
}

/// Scores `[n]` of prompt + answer sequences (read at each one's last token).
pub fn score_seqs<B: Backend>(
    model: &Transformer<B>,
    seqs: &[&Seq],
) -> Result<Tensor<B, 1>, LearnerError> {
    let pad = model.config.pad_token_id.unwrap_or(0);
    let batch = full_batch(seqs, pad)?;
    Ok(model.scores(&batch)?.reshape([seqs.len()]))
}

/// Fraction of `pairs` whose chosen answer scores above the rejected one.
pub fn pair_accuracy<B: Backend>(
    model: &Transformer<B>,
    pairs: &[TokenPair],
    batch_size: usize,
) -> Result<f64, LearnerError> {
    let mut wins = 0usize;
    for chunk in pairs.chunks(batch_size.max(1)) {
        let seqs: Vec<&Seq> = chunk.iter().flat_map(|(c, r)| [c, r]).collect();
        let s = host_vec(score_seqs(model, &seqs)?.into_data())?;
        wins += s.chunks(2).filter(|p| p[0] > p[1]).count();
    }
    Ok(wins as f64 / pairs.len().max(1) as f64)
}

/// Trains `model` (see [`as_reward_model`]) on `pairs`; `on_step(step, total, loss, accuracy)`
/// reports progress.
pub fn train_reward_model<B: AutodiffBackend>(
    mut model: Transformer<B>,
    pairs: &[TokenPair],
    s: RewardSettings,
    mut on_step: impl FnMut(u64, u64, f64, f64),
) -> Result<(Transformer<B>, RewardReport), LearnerError> {
    if pairs.is_empty() {
        return Err(LearnerError::Invalid("no preference pairs".into()));
    }
    s.objective
        .validate()
        .map_err(|e| LearnerError::Config(e.to_string()))?;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(s.weight_decay)
        .init::<B, Transformer<B>>();
    let per_epoch = pairs.len().div_ceil(s.batch_size.max(1)) as u64;
    let total = per_epoch * s.epochs.max(1) as u64;
    let mut report = RewardReport::default();
    let start = Instant::now();
    for epoch in 0..s.epochs.max(1) {
        let (mut acc_sum, mut acc_n) = (0.0, 0u64);
        for chunk in pairs.chunks(s.batch_size.max(1)) {
            report.steps += 1;
            let seqs: Vec<&Seq> = chunk
                .iter()
                .map(|(c, _)| c)
                .chain(chunk.iter().map(|(_, r)| r))
                .collect();
            let scores = score_seqs(&model, &seqs)?;
            let k = chunk.len();
            let batch = RewardPairBatch {
                chosen: scores.clone().slice(0..k),
                rejected: scores.slice(k..2 * k),
                margin: None,
            };
            let out = match bradley_terry_loss(&batch, &s.objective) {
                Ok(out) => out,
                Err(e) if e.to_string().contains("finite") => {
                    tracing::warn!(error = %e, "non-finite scores: step skipped");
                    report.skipped_nonfinite_steps += 1;
                    continue;
                }
                Err(e) => return Err(LearnerError::Objective(e.to_string())),
            };
            let (value, accuracy) = (f64::from(out.stats.loss), f64::from(out.stats.accuracy));
            let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
            let norm = grad_norm(&model, &grads);
            if !norm.is_finite() {
                report.skipped_nonfinite_steps += 1;
                continue;
            }
            if s.max_grad_norm > 0.0 && norm > s.max_grad_norm {
                scale_grads(&model, &mut grads, s.max_grad_norm / norm);
            }
            model = optim.step(s.lr, model, grads);
            if report.first_loss == 0.0 && report.steps == 1 {
                report.first_loss = value;
            }
            report.last_loss = value;
            if epoch + 1 == s.epochs.max(1) {
                acc_sum += accuracy;
                acc_n += 1;
            }
            on_step(report.steps, total, value, accuracy);
        }
        report.last_epoch_accuracy = acc_sum / acc_n.max(1) as f64;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((model, report))
}
