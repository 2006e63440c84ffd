//! What the scorers that read a local Hugging Face checkpoint share (the reward model, follow-up
//! likelihood): the checkpoint loaded at start-up on the configured device and precision with
//! its tokenizer and pad id, one forward pass at a time, and scoring on a blocking thread.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rlhf_model::{
    AnyModel, DeviceSpec, ModelConfig, PaddingSide, Precision, TokenBatch, Tokenizer,
};

use crate::error::{RewardError, ScoreError};
use crate::scorer::{Score, ScoreInput};

/// Parses `device` and `precision` (checked against each other and this build), naming the
/// fields under `at`.
pub(crate) fn device_and_precision(
    device: &str,
    precision: &str,
    at: &str,
) -> Result<(DeviceSpec, Precision), RewardError> {
    let device = DeviceSpec::from_setting(device)
        .map_err(|e| RewardError::config(format!("{at}device"), e))?;
    let precision = Precision::for_device(precision, device)
        .map_err(|e| RewardError::config(format!("{at}precision"), e))?;
    Ok((device, precision))
}

/// Checks a scorer's checkpoint settings without loading it: `device` and `precision`, and a
/// `config.json` in `path`; errors name the fields under `at`.
pub(crate) fn check_checkpoint(
    path: &Path,
    device: &str,
    precision: &str,
    at: &str,
) -> Result<(), RewardError> {
    device_and_precision(device, precision, at)?;
    if !path.join("config.json").is_file() {
        return Err(RewardError::config(
            format!("{at}path"),
            format!("{} has no config.json", path.display()),
        ));
    }
    Ok(())
}

/// A loaded checkpoint.
pub(crate) struct LocalModel {
    model: Mutex<AnyModel>,
    /// Where the weights live and how they are stored (for weights loaded later).
    pub device: DeviceSpec,
    pub precision: Precision,
    /// Its `config.json`.
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    /// Padding id: the model's, else the tokenizer's pad or end-of-sequence token, else 0.
    pub pad_id: u32,
    /// The longest input accepted: `max_tokens`, else the model's context.
    pub max_tokens: usize,
}

impl LocalModel {
    /// Loads the checkpoint at `path` (reads the weights).
    pub(crate) fn load(
        path: &Path,
        device: &str,
        precision: &str,
        max_tokens: Option<usize>,
        at: &str,
    ) -> Result<Self, RewardError> {
        let (device, precision) = device_and_precision(device, precision, at)?;
        let model = AnyModel::load(path, device, precision)?;
        let tokenizer = Tokenizer::from_dir(path)?;
        let config = model.config().clone();
        let pad_id = config
            .pad_token_id
            .or_else(|| tokenizer.pad_id())
            .or_else(|| tokenizer.eos_id())
            .unwrap_or(0);
        Ok(Self {
            max_tokens: max_tokens.unwrap_or(config.max_position_embeddings),
            model: Mutex::new(model),
            device,
            precision,
            config,
            tokenizer,
            pad_id,
        })
    }

    /// `seqs` padded on the right into one batch.
    pub(crate) fn pad(&self, seqs: &[Vec<u32>]) -> Result<TokenBatch, String> {
        TokenBatch::pad(seqs, self.pad_id, PaddingSide::Right).map_err(|e| e.to_string())
    }

    /// Runs `f` on the model, one caller at a time.
    pub(crate) fn run<T>(
        &self,
        f: impl FnOnce(&AnyModel) -> rlhf_model::Result<T>,
    ) -> Result<T, String> {
        let model = self
            .model
            .lock()
            .map_err(|_| "the model lock is poisoned".to_string())?;
        f(&model).map_err(|e| e.to_string())
    }
}

impl LocalModel {
    /// Swaps in other weights of the same architecture (a newer policy version).
    pub(crate) fn replace(&self, model: AnyModel) -> Result<(), String> {
        let mut held = self
            .model
            .lock()
            .map_err(|_| "the model lock is poisoned".to_string())?;
        *held = model;
        Ok(())
    }

    /// For each row `(ids, start)` (0 < start < ids.len()), the sum of the log-probs of its
    /// tokens `ids[start..]` given what precedes them. Rows are read in batches of
    /// `batch_size`, similar lengths together; a failed batch gives each of its rows the error.
    pub(crate) fn span_logprobs(
        &self,
        rows: &[(Vec<u32>, usize)],
        batch_size: usize,
    ) -> Vec<Result<f64, String>> {
        let mut out: Vec<Result<f64, String>> = vec![Err("not read".into()); rows.len()];
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&k| rows[k].0.len());
        for chunk in order.chunks(batch_size.max(1)) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&k| rows[k].0.clone()).collect();
            let read = self.pad(&seqs).and_then(|batch| {
                let flat = self.run(|m| m.token_logprobs(&batch))?;
                Ok((flat, batch.len - 1))
            });
            match read {
                Ok((flat, width)) => {
                    for (b, &k) in chunk.iter().enumerate() {
                        let (ids, start) = &rows[k];
                        // Position t holds log p(ids[t+1] | ids[..=t]): tokens ids[start..] are
                        // positions start-1 .. len-2.
                        let span = &flat[b * width + start - 1..b * width + ids.len() - 1];
                        out[k] = Ok(span.iter().map(|&x| f64::from(x)).sum());
                    }
                }
                Err(message) => {
                    tracing::error!(%message, rows = chunk.len(), "forward pass failed");
                    for &k in chunk {
                        out[k] = Err(message.clone());
                    }
                }
            }
        }
        out
    }
}

/// One result per input, in input order.
type Results = Vec<Result<Score, ScoreError>>;

/// Runs `score_all` on a blocking thread (forward passes would stall the async runtime); if
/// the task fails, every input gets an internal error naming `name`.
pub(crate) async fn score_blocking<T: Send + Sync + 'static>(
    name: &str,
    inner: &Arc<T>,
    inputs: &[ScoreInput],
    score_all: fn(&T, &[ScoreInput]) -> Results,
) -> Results {
    let inner = Arc::clone(inner);
    let owned = inputs.to_vec();
    match tokio::task::spawn_blocking(move || score_all(&inner, &owned)).await {
        Ok(results) => results,
        Err(e) => inputs
            .iter()
            .map(|_| {
                Err(ScoreError::internal(
                    name,
                    format!("the scoring task failed: {e}"),
                ))
            })
            .collect(),
    }
}
