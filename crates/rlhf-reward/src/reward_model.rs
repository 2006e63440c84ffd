//! A Hugging Face sequence-classification reward model (`LlamaForSequenceClassification`, ...)
//! run through rlhf-model on the CPU, or on a GPU (`device = "cuda:N"`) in builds with the
//! `cuda` feature. Inputs are tokenized as the chat template renders the
//! prompt's messages plus the completion as the assistant's turn, or as `prompt + completion`
//! when there are no messages; they are sorted by length, batched, padded on the right, and the
//! score is read at each row's last real token.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rlhf_core::ChatMessage;
use rlhf_model::HeadKind;
use serde::{Deserialize, Serialize};

use crate::error::{RewardError, ScoreError, ensure_finite};
use crate::local_model::{LocalModel, check_checkpoint, score_blocking};
use crate::scorer::{Score, ScoreInput, Scorer};

/// Default number of sequences per forward pass.
pub const DEFAULT_BATCH_SIZE: usize = 8;
/// Default device.
pub const DEFAULT_DEVICE: &str = "cpu";

/// Config of a [`RewardModelScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelConfig {
    /// The checkpoint folder (`config.json`, safetensors, `tokenizer.json`).
    pub path: PathBuf,
    /// Sequences per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Where to run: `cpu`, or `cuda:N` in builds with the `cuda` feature.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32` (default) or `bf16` (weights and matmuls in bf16, scores in f32; GPU only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
    /// Which output of a multi-label head is the reward.
    #[serde(default)]
    pub label: usize,
    /// Longer inputs are an error rather than silently truncated (default: the model's
    /// `max_position_embeddings`).
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}

fn default_device() -> String {
    DEFAULT_DEVICE.into()
}

impl RewardModelConfig {
    /// A config with defaults for the checkpoint at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            device: default_device(),
            precision: String::new(),
            label: 0,
            max_tokens: None,
        }
    }

    /// Checks the fields that can be checked without loading the model.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        if self.batch_size == 0 {
            return Err(RewardError::config(
                format!("{at}batch_size"),
                "must be at least 1",
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(RewardError::config(
                format!("{at}max_tokens"),
                "must be at least 1",
            ));
        }
        check_checkpoint(&self.path, &self.device, &self.precision, at)
    }
}

/// What the blocking worker needs.
struct Inner {
    model: LocalModel,
    label: usize,
    num_labels: usize,
    batch_size: usize,
    provenance: String,
}

/// Scores with a sequence-classification reward model.
pub struct RewardModelScorer {
    inner: Arc<Inner>,
}

impl RewardModelScorer {
    /// Loads the model and tokenizer (at start-up: this reads the weights).
    pub fn load(config: &RewardModelConfig) -> Result<Self, RewardError> {
        Self::load_at(config, "")
    }

    /// [`load`](Self::load), naming fields under `at` in errors.
    pub fn load_at(config: &RewardModelConfig, at: &str) -> Result<Self, RewardError> {
        config.validate(at)?;
        let model = LocalModel::load(
            &config.path,
            &config.device,
            &config.precision,
            config.max_tokens,
            at,
        )?;
        if model.config.architecture.head() != HeadKind::SequenceClassification {
            return Err(RewardError::config(
                format!("{at}path"),
                format!(
                    "{} is not a sequence-classification model (no score head)",
                    config.path.display()
                ),
            ));
        }
        let num_labels = model.config.num_labels;
        if config.label >= num_labels {
            return Err(RewardError::config(
                format!("{at}label"),
                format!(
                    "the model has {num_labels} label(s), label {} does not exist",
                    config.label
                ),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                label: config.label,
                num_labels,
                batch_size: config.batch_size,
                provenance: format!("reward_model:{}", config.path.display()),
            }),
        })
    }

    /// The provenance its scores carry (`reward_model:<path>`).
    pub fn provenance(&self) -> &str {
        &self.inner.provenance
    }
}

impl Inner {
    fn name(&self) -> &'static str {
        "reward_model"
    }

    /// The token ids the model reads for one input.
    fn tokens(&self, input: &ScoreInput) -> Result<Vec<u32>, ScoreError> {
        let invalid = |m: String| ScoreError::invalid(self.name(), m);
        let ids = match &input.messages {
            Some(messages) if self.model.tokenizer.has_chat_template() => {
                let mut conversation = messages.clone();
                conversation.push(ChatMessage::new("assistant", input.completion.as_str()));
                self.model
                    .tokenizer
                    .encode_chat(&conversation, false)
                    .map_err(|e| invalid(format!("cannot apply the chat template: {e}")))?
            }
            _ => {
                let text = format!("{}{}", input.prompt, input.completion);
                self.model
                    .tokenizer
                    .encode(&text, true)
                    .map_err(|e| invalid(e.to_string()))?
            }
        };
        if ids.is_empty() {
            return Err(invalid("the input has no tokens".into()));
        }
        if ids.len() > self.model.max_tokens {
            return Err(invalid(format!(
                "the input has {} tokens, more than max_tokens = {}",
                ids.len(),
                self.model.max_tokens
            )));
        }
        Ok(ids)
    }

    /// One forward pass over `seqs`: the scores of every label, row-major.
    fn forward(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>, String> {
        let batch = self.model.pad(seqs)?;
        self.model.run(|m| m.scores(&batch))
    }

    fn score_all(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let mut results: Vec<Result<Score, ScoreError>> = Vec::with_capacity(inputs.len());
        let mut ready = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            match self.tokens(input) {
                Ok(ids) => {
                    ready.push((i, ids));
                    results.push(Err(ScoreError::internal(self.name(), "not scored")));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // Similar lengths together: less padding.
        ready.sort_by_key(|(_, ids)| ids.len());
        for chunk in ready.chunks(self.batch_size) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|(_, ids)| ids.clone()).collect();
            match self.forward(&seqs) {
                Ok(flat) => {
                    for (row, (i, _)) in chunk.iter().enumerate() {
                        let labels = &flat[row * self.num_labels..(row + 1) * self.num_labels];
                        results[*i] = self.score_row(labels);
                    }
                }
                Err(message) => {
                    tracing::error!(%message, rows = chunk.len(), "reward model forward failed");
                    for (i, _) in chunk {
                        results[*i] = Err(ScoreError::internal(self.name(), message.clone()));
                    }
                }
            }
        }
        results
    }

    fn score_row(&self, labels: &[f32]) -> Result<Score, ScoreError> {
        let value = ensure_finite(self.name(), f64::from(labels[self.label]))?;
        let mut score = Score::new(value, &self.provenance);
        if self.num_labels > 1 {
            for (k, v) in labels.iter().enumerate() {
                score = score.with_component(format!("label_{k}"), f64::from(*v));
            }
        }
        Ok(score)
    }
}

#[async_trait]
impl Scorer for RewardModelScorer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        score_blocking(self.name(), &self.inner, inputs, Inner::score_all).await
    }
}
