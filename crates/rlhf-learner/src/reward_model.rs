//! Reward-model training. Bradley–Terry (`bradley_terry` in rlhf-algo): a sequence-classification
//! model with one output scores prompt + answer at its last token, and
//! `−log σ(β (r_chosen − r_rejected))` pushes the chosen answer's score above the rejected one's.
//! Multi-objective regression (`armo_regression`, ArmoRM's first stage): a model with K outputs
//! regresses K per-objective ratings of each answer (missing ratings masked out). The result is
//! a Hugging Face `*ForSequenceClassification` checkpoint that the `reward_model` scorer loads.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::TensorData;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rlhf_algo::LossOutput;
use rlhf_algo::output::RewardStats;
use rlhf_algo::reward_model::{
    BradleyTerryConfig, RatingBatch, RewardPairBatch, bradley_terry_loss,
    multi_objective_regression_loss,
};
use rlhf_model::load::host_vec;
use rlhf_model::{HeadKind, Transformer};

use crate::LearnerError;
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

/// An answer with its per-objective ratings (`None`: not rated on that objective).
pub type Rated = (Seq, Vec<Option<f32>>);

/// Turns a checkpoint into a reward model with `outputs` outputs: a causal LM gets a fresh
/// (zero) score head; a sequence-classification model must already have that many.
pub fn as_reward_model<B: Backend>(
    model: Transformer<B>,
    outputs: usize,
) -> Result<Transformer<B>, LearnerError> {
    match model.config.architecture.head() {
        HeadKind::CausalLm => Ok(model.with_score_head(outputs)),
        HeadKind::SequenceClassification if model.config.num_labels == outputs => Ok(model),
        HeadKind::SequenceClassification => Err(LearnerError::Config(format!(
            "model: the reward model needs {outputs} output(s), this one has num_labels = {}",
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

/// Rating targets and mask `[n, k]` of `rated` on `device`.
fn rating_tensors<B: Backend>(
    rated: &[&Rated],
    k: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let target = rated
        .iter()
        .flat_map(|(_, r)| r.iter().map(|x| x.unwrap_or(0.0)))
        .collect();
    let mask = rated
        .iter()
        .flat_map(|(_, r)| r.iter().map(|x| if x.is_some() { 1.0 } else { 0.0 }))
        .collect();
    let n = rated.len();
    (
        Tensor::from_data(TensorData::new(target, [n, k]), device),
        Tensor::from_data(TensorData::new(mask, [n, k]), device),
    )
}

/// The regression loss of `model` on `rated` (K ratings each).
fn ratings_loss<B: Backend>(
    model: &Transformer<B>,
    rated: &[&Rated],
) -> Result<LossOutput<B, RewardStats>, LearnerError> {
    let k = model.config.num_labels;
    if let Some(bad) = rated.iter().find(|(_, r)| r.len() != k) {
        return Err(LearnerError::Invalid(format!(
            "{} ratings for a model with {k} outputs",
            bad.1.len()
        )));
    }
    let seqs: Vec<&Seq> = rated.iter().map(|(s, _)| s).collect();
    let pad = model.config.pad_token_id.unwrap_or(0);
    let predicted = model.scores(&full_batch(&seqs, pad)?)?;
    let (target, mask) = rating_tensors(rated, k, &model.device());
    multi_objective_regression_loss(&RatingBatch {
        predicted,
        target,
        mask,
    })
    .map_err(|e| LearnerError::Objective(e.to_string()))
}

/// Mean squared error over the present ratings of `rated`.
pub fn ratings_mse<B: Backend>(
    model: &Transformer<B>,
    rated: &[Rated],
    batch_size: usize,
) -> Result<f64, LearnerError> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in rated.chunks(batch_size.max(1)) {
        let refs: Vec<&Rated> = chunk.iter().collect();
        let present = chunk.iter().flat_map(|(_, r)| r).flatten().count();
        if present == 0 {
            continue;
        }
        sum += f64::from(ratings_loss(model, &refs)?.stats.loss) * present as f64;
        n += present;
    }
    Ok(sum / n.max(1) as f64)
}

/// Trains a K-output `model` (see [`as_reward_model`]) to regress the ratings of `rated`
/// (`armo_regression`); `on_step(step, total, loss, 0)` reports progress.
pub fn train_ratings_model<B: AutodiffBackend>(
    model: Transformer<B>,
    rated: &[Rated],
    s: RewardSettings,
    on_step: impl FnMut(u64, u64, f64, f64),
) -> Result<(Transformer<B>, RewardReport), LearnerError> {
    if rated.is_empty() {
        return Err(LearnerError::Invalid("no rated answers".into()));
    }
    train_loop(model, rated, s, on_step, |m, chunk: &[Rated]| {
        let refs: Vec<&Rated> = chunk.iter().collect();
        match ratings_loss(m, &refs) {
            Ok(out) => Ok(Some(out)),
            Err(LearnerError::Objective(e)) if e.contains("finite") => {
                tracing::warn!(error = %e, "non-finite predictions: step skipped");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })
}

/// Trains `model` (see [`as_reward_model`]) on `pairs`; `on_step(step, total, loss, accuracy)`
/// reports progress.
pub fn train_reward_model<B: AutodiffBackend>(
    model: Transformer<B>,
    pairs: &[TokenPair],
    s: RewardSettings,
    objective: BradleyTerryConfig,
    on_step: impl FnMut(u64, u64, f64, f64),
) -> Result<(Transformer<B>, RewardReport), LearnerError> {
    if pairs.is_empty() {
        return Err(LearnerError::Invalid("no preference pairs".into()));
    }
    objective
        .validate()
        .map_err(|e| LearnerError::Config(e.to_string()))?;
    train_loop(model, pairs, s, on_step, |m, chunk: &[TokenPair]| {
        let seqs: Vec<&Seq> = chunk
            .iter()
            .map(|(c, _)| c)
            .chain(chunk.iter().map(|(_, r)| r))
            .collect();
        let scores = score_seqs(m, &seqs)?;
        let k = chunk.len();
        let batch = RewardPairBatch {
            chosen: scores.clone().slice(0..k),
            rejected: scores.slice(k..2 * k),
            margin: None,
        };
        match bradley_terry_loss(&batch, &objective) {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.to_string().contains("finite") => {
                tracing::warn!(error = %e, "non-finite scores: step skipped");
                Ok(None)
            }
            Err(e) => Err(LearnerError::Objective(e.to_string())),
        }
    })
}

/// The optimisation loop shared by both: `loss` of a chunk (`None`: skip the step).
#[allow(clippy::type_complexity)]
fn train_loop<B: AutodiffBackend, T>(
    mut model: Transformer<B>,
    data: &[T],
    s: RewardSettings,
    mut on_step: impl FnMut(u64, u64, f64, f64),
    loss: impl Fn(&Transformer<B>, &[T]) -> Result<Option<LossOutput<B, RewardStats>>, LearnerError>,
) -> Result<(Transformer<B>, RewardReport), LearnerError> {
    let mut optim = crate::adamw::FlatAdamW::new(s.weight_decay);
    let per_epoch = data.len().div_ceil(s.batch_size.max(1)) as u64;
    let total = per_epoch * s.epochs.max(1) as u64;
    let mut report = RewardReport::default();
    let start = Instant::now();
    for epoch in 0..s.epochs.max(1) {
        let (mut acc_sum, mut acc_n) = (0.0, 0u64);
        for chunk in data.chunks(s.batch_size.max(1)) {
            report.steps += 1;
            let Some(out) = loss(&model, chunk)? else {
                report.skipped_nonfinite_steps += 1;
                continue;
            };
            let (value, accuracy) = (f64::from(out.stats.loss), f64::from(out.stats.accuracy));
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            let mut grads = optim.gather(&model, grads);
            if !grads.clip(s.max_grad_norm).is_finite() {
                report.skipped_nonfinite_steps += 1;
                continue;
            }
            model = optim.step_flat(s.lr, model, grads)?;
            if report.steps == 1 {
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
