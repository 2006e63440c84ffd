//! Follow-up likelihood as reward (Zhang et al. 2024, *Aligning Large Language Models via
//! Follow-up Likelihood as Reward*): a causal LM reads the conversation with the completion as
//! the assistant's turn, then a user's follow-up. The reward is the mean log-likelihood (per
//! token) of the positive follow-ups ("Thanks, that helps") minus that of the negative ones
//! ("That's wrong"): a response a user would thank for scores high. No reward model is trained:
//! any chat model scores (the policy's own reference is a common choice).
//!
//! With a chat template the follow-up is the next user turn as the template renders it (its
//! tokens are those the full conversation adds to the conversation without it); without one it
//! is the prompt and completion's tokens followed by `"\n" + follow-up`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rlhf_core::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::error::{RewardError, ScoreError, ensure_finite};
use crate::local_model::{LocalModel, check_checkpoint, score_blocking};
use crate::scorer::{Score, ScoreInput, Scorer};

/// Config of a [`FollowUpScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpConfig {
    /// A causal LM checkpoint folder (`config.json`, safetensors, `tokenizer.json`).
    pub path: PathBuf,
    /// Follow-ups of a satisfied user (defaults: ours, see docs/user-guide.md).
    #[serde(default = "default_positive")]
    pub positive: Vec<String>,
    /// Follow-ups of a dissatisfied user.
    #[serde(default = "default_negative")]
    pub negative: Vec<String>,
    /// Sequences per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Where to run: `cpu`, or `cuda:N` in builds with the `cuda` feature.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32` (default) or `bf16` (GPU only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
    /// Longer inputs (with a follow-up) are an error (default: `max_position_embeddings`).
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

fn default_positive() -> Vec<String> {
    vec![
        "Thank you, that is exactly what I needed.".into(),
        "Great answer, that helps a lot.".into(),
    ]
}

fn default_negative() -> Vec<String> {
    vec![
        "That is wrong.".into(),
        "That does not answer my question.".into(),
    ]
}

fn default_batch_size() -> usize {
    crate::reward_model::DEFAULT_BATCH_SIZE
}

fn default_device() -> String {
    crate::reward_model::DEFAULT_DEVICE.into()
}

impl FollowUpConfig {
    /// A config with the default follow-ups for the checkpoint at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            positive: default_positive(),
            negative: default_negative(),
            batch_size: default_batch_size(),
            device: default_device(),
            precision: String::new(),
            max_tokens: None,
        }
    }

    /// Checks the fields that can be checked without loading the model.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        for (field, list) in [("positive", &self.positive), ("negative", &self.negative)] {
            if list.is_empty() {
                return Err(RewardError::config(
                    format!("{at}{field}"),
                    "give at least one follow-up",
                ));
            }
            if let Some(k) = list.iter().position(|f| f.trim().is_empty()) {
                return Err(RewardError::config(
                    format!("{at}{field}[{k}]"),
                    "the follow-up is empty",
                ));
            }
        }
        if self.batch_size == 0 {
            return Err(RewardError::config(
                format!("{at}batch_size"),
                "must be at least 1",
            ));
        }
        if self.max_tokens.is_some_and(|m| m < 2) {
            return Err(RewardError::config(
                format!("{at}max_tokens"),
                "must be at least 2",
            ));
        }
        check_checkpoint(&self.path, &self.device, &self.precision, at)
    }
}

/// What the blocking worker needs.
struct Inner {
    model: LocalModel,
    positive: Vec<String>,
    negative: Vec<String>,
    batch_size: usize,
    provenance: String,
}

/// Scores with the likelihood of follow-ups under a causal LM.
pub struct FollowUpScorer {
    inner: Arc<Inner>,
}

/// One sequence to read: the input and follow-up it belongs to, its tokens, and where the
/// follow-up's tokens start.
struct Row {
    input: usize,
    positive: bool,
    ids: Vec<u32>,
    start: usize,
}

impl FollowUpScorer {
    /// Loads the model and tokenizer; errors name fields under `at`.
    pub fn load_at(config: &FollowUpConfig, at: &str) -> Result<Self, RewardError> {
        config.validate(at)?;
        let model = LocalModel::load(
            &config.path,
            &config.device,
            &config.precision,
            config.max_tokens,
            at,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                positive: config.positive.clone(),
                negative: config.negative.clone(),
                batch_size: config.batch_size,
                provenance: format!("follow_up:{}", config.path.display()),
            }),
        })
    }
}

impl Inner {
    fn name(&self) -> &'static str {
        "follow_up"
    }

    /// The tokens of the conversation with `follow_up` as the next user turn, and where the
    /// follow-up's tokens start.
    fn tokens(&self, input: &ScoreInput, follow_up: &str) -> Result<(Vec<u32>, usize), ScoreError> {
        let invalid = |m: String| ScoreError::invalid(self.name(), m);
        let (ids, start) = match &input.messages {
            Some(messages) if self.model.tokenizer.has_chat_template() => {
                let mut conversation = messages.clone();
                conversation.push(ChatMessage::new("assistant", input.completion.as_str()));
                let before = self
                    .model
                    .tokenizer
                    .encode_chat(&conversation, false)
                    .map_err(|e| invalid(format!("cannot apply the chat template: {e}")))?;
                conversation.push(ChatMessage::new("user", follow_up));
                let ids = self
                    .model
                    .tokenizer
                    .encode_chat(&conversation, false)
                    .map_err(|e| invalid(format!("cannot apply the chat template: {e}")))?;
                if !ids.starts_with(&before) {
                    return Err(invalid(
                        "the chat template renders the conversation differently once a \
                         follow-up is added: the follow-up's tokens cannot be told apart"
                            .into(),
                    ));
                }
                (ids, before.len())
            }
            _ => {
                let mut ids = self
                    .model
                    .tokenizer
                    .encode(&format!("{}{}", input.prompt, input.completion), true)
                    .map_err(|e| invalid(e.to_string()))?;
                let start = ids.len();
                let tail = self
                    .model
                    .tokenizer
                    .encode(&format!("\n{follow_up}"), false)
                    .map_err(|e| invalid(e.to_string()))?;
                ids.extend(tail);
                (ids, start)
            }
        };
        if start == 0 || start >= ids.len() {
            return Err(invalid(
                "no tokens before or in the follow-up: nothing to score".into(),
            ));
        }
        if ids.len() > self.model.max_tokens {
            return Err(invalid(format!(
                "the input with a follow-up has {} tokens, more than max_tokens = {}",
                ids.len(),
                self.model.max_tokens
            )));
        }
        Ok((ids, start))
    }

    fn score_all(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let mut results: Vec<Result<Score, ScoreError>> = inputs
            .iter()
            .map(|_| Err(ScoreError::internal(self.name(), "not scored")))
            .collect();
        let mut rows = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let follow_ups = self
                .positive
                .iter()
                .map(|f| (true, f))
                .chain(self.negative.iter().map(|f| (false, f)));
            let mut made = Vec::new();
            for (positive, f) in follow_ups {
                match self.tokens(input, f) {
                    Ok((ids, start)) => made.push(Row {
                        input: i,
                        positive,
                        ids,
                        start,
                    }),
                    Err(e) => {
                        results[i] = Err(e);
                        made.clear();
                        break;
                    }
                }
            }
            rows.extend(made);
        }
        let spans: Vec<(Vec<u32>, usize)> = rows.iter().map(|r| (r.ids.clone(), r.start)).collect();
        let read = self.model.span_logprobs(&spans, self.batch_size);
        // Per input: (sum, count) of positive and of negative means.
        let mut sums = vec![[(0.0f64, 0usize); 2]; inputs.len()];
        let mut failed: Vec<Option<String>> = vec![None; inputs.len()];
        for (r, sum) in rows.iter().zip(read) {
            match sum {
                Ok(sum) => {
                    let slot = &mut sums[r.input][usize::from(!r.positive)];
                    slot.0 += sum / (r.ids.len() - r.start) as f64;
                    slot.1 += 1;
                }
                Err(message) => failed[r.input] = Some(message),
            }
        }
        for (i, [(pos, np), (neg, nn)]) in sums.into_iter().enumerate() {
            if let Some(message) = failed[i].take() {
                results[i] = Err(ScoreError::internal(self.name(), message));
                continue;
            }
            if np == 0 || nn == 0 {
                continue; // its tokens were refused above
            }
            let (pos, neg) = (pos / np as f64, neg / nn as f64);
            results[i] = ensure_finite(self.name(), pos - neg).map(|v| {
                Score::new(v, &self.provenance)
                    .with_component("positive", pos)
                    .with_component("negative", neg)
            });
        }
        results
    }
}

#[async_trait]
impl Scorer for FollowUpScorer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        score_blocking(self.name(), &self.inner, inputs, Inner::score_all).await
    }
}
