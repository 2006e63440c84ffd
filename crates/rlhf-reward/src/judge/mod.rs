//! An LLM judge behind an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang,
//! llama.cpp server, ...).
//!
//! - Pointwise: the judge rates each completion 1–10; the rating (or `(rating-1)/9` with
//!   `normalize`) is the score.
//! - Pairwise: [`JudgeScorer::compare`] judges two completions in both orders and calibrates
//!   away position bias ([`pairwise`]); as a scorer, each sample's score is its calibrated win
//!   rate within its prompt's samples.
//!
//! [`client`] does the HTTP, deadlines and retries; [`prompt`] holds the templates and parsers.

pub mod client;
pub mod pairwise;
pub mod prompt;

use async_trait::async_trait;
use futures::future::join_all;
use rlhf_core::ChatMessage;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use client::{ChatClient, ClientOptions};
pub use pairwise::{Comparison, PairwiseSummary, Verdict};

use crate::error::{RewardError, ScoreError};
use crate::scorer::{Score, ScoreInput, Scorer};
use pairwise::Matchup;

/// Default limit for one HTTP attempt, in seconds.
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;
/// Default limit for one judgement, retries included, in seconds.
pub const DEFAULT_DEADLINE_S: f64 = 300.0;
/// Default number of retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default wait before the first retry, in seconds.
pub const DEFAULT_BACKOFF_S: f64 = 0.5;
/// Default number of requests in flight.
pub const DEFAULT_MAX_CONCURRENCY: usize = 16;

/// How the judge turns replies into scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMode {
    /// Rate each completion on its own.
    #[default]
    Pointwise,
    /// Compare completions of the same prompt, in both orders.
    Pairwise,
}

/// Config of a [`JudgeScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The API root, e.g. `https://api.openai.com/v1`; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The judge model's name, sent as `model`.
    pub model: String,
    /// The environment variable holding the API key (none: no `Authorization` header). Read at
    /// start-up, so a missing key fails there.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Pointwise ratings or pairwise comparisons.
    #[serde(default)]
    pub mode: JudgeMode,
    /// The limit for one HTTP attempt.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// The limit for one judgement, retries and waits included.
    #[serde(default = "default_deadline_s")]
    pub deadline_s: f64,
    /// Attempts after the first one.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The wait before the first retry (doubled after each, with jitter).
    #[serde(default = "default_backoff_s")]
    pub backoff_s: f64,
    /// Requests in flight at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// The reply length limit sent as `max_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The system message (default: [`prompt::DEFAULT_SYSTEM_PROMPT`]).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The user message template (default: MT-Bench style, see [`prompt`]); pointwise needs
    /// `{prompt}` and `{completion}` (and may use `{reference}`), pairwise `{prompt}`, `{a}`, `{b}`.
    #[serde(default)]
    pub template: Option<String>,
    /// Pointwise: map the 1–10 rating to [0, 1].
    #[serde(default)]
    pub normalize: bool,
}

fn default_timeout_s() -> f64 {
    DEFAULT_TIMEOUT_S
}
fn default_deadline_s() -> f64 {
    DEFAULT_DEADLINE_S
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_backoff_s() -> f64 {
    DEFAULT_BACKOFF_S
}
fn default_max_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}

impl JudgeConfig {
    /// A config with defaults.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>, mode: JudgeMode) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            mode,
            timeout_s: DEFAULT_TIMEOUT_S,
            deadline_s: DEFAULT_DEADLINE_S,
            retries: DEFAULT_RETRIES,
            backoff_s: DEFAULT_BACKOFF_S,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_tokens: None,
            system_prompt: None,
            template: None,
            normalize: false,
        }
    }

    /// Checks the fields; `at` is this config's path for error messages.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        let field = |name: &str| format!("{at}{name}");
        let url = reqwest::Url::parse(&self.base_url).map_err(|e| {
            RewardError::config(field("base_url"), format!("`{}`: {e}", self.base_url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RewardError::config(
                field("base_url"),
                format!("`{}`: expected an http:// or https:// URL", self.base_url),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(RewardError::config(
                field("model"),
                "the judge model name is empty",
            ));
        }
        if self
            .api_key_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(RewardError::config(
                field("api_key_env"),
                "empty variable name (leave the field out for no API key)",
            ));
        }
        for (name, value) in [
            ("timeout_s", self.timeout_s),
            ("deadline_s", self.deadline_s),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(RewardError::config(
                    field(name),
                    format!("must be a positive number of seconds, got {value}"),
                ));
            }
        }
        if !(self.backoff_s.is_finite() && self.backoff_s >= 0.0) {
            return Err(RewardError::config(
                field("backoff_s"),
                format!("must be zero or more seconds, got {}", self.backoff_s),
            ));
        }
        if self.max_concurrency == 0 {
            return Err(RewardError::config(
                field("max_concurrency"),
                "must be at least 1",
            ));
        }
        prompt::check_template(self.template.as_deref(), self.mode, &field("template"))
    }
}

/// An LLM judge.
pub struct JudgeScorer {
    client: ChatClient,
    config: JudgeConfig,
    provenance: String,
}

impl JudgeScorer {
    /// Builds the judge, reading the API key from `api_key_env`.
    pub fn from_config(config: &JudgeConfig, at: &str) -> Result<Self, RewardError> {
        config.validate(at)?;
        let api_key = match &config.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                RewardError::config(
                    format!("{at}api_key_env"),
                    format!("environment variable `{var}` is not set (or not valid UTF-8)"),
                )
            })?),
            None => None,
        };
        Self::new(config, api_key)
    }

    /// Builds the judge with an explicit API key (`api_key_env` is ignored).
    pub fn new(config: &JudgeConfig, api_key: Option<String>) -> Result<Self, RewardError> {
        config.validate("")?;
        let options = ClientOptions {
            base_url: config.base_url.clone(),
            model: config.model.clone(),
            api_key,
            timeout: Duration::from_secs_f64(config.timeout_s),
            deadline: Duration::from_secs_f64(config.deadline_s),
            retries: config.retries,
            backoff: Duration::from_secs_f64(config.backoff_s),
            max_concurrency: config.max_concurrency,
            max_tokens: config.max_tokens,
        };
        let client = ChatClient::new(options, "judge")?;
        Ok(Self {
            provenance: format!("judge:{}@{}", config.model, client.url()),
            client,
            config: config.clone(),
        })
    }

    /// The HTTP client (its URL, its model).
    pub fn client(&self) -> &ChatClient {
        &self.client
    }

    fn messages(&self, user: String) -> Vec<ChatMessage> {
        let system = self
            .config
            .system_prompt
            .as_deref()
            .unwrap_or(prompt::DEFAULT_SYSTEM_PROMPT);
        vec![
            ChatMessage::new("system", system),
            ChatMessage::new("user", user),
        ]
    }

    /// Rates one completion 1–10.
    pub async fn rate(&self, input: &ScoreInput) -> Result<Score, ScoreError> {
        let template = self
            .config
            .template
            .as_deref()
            .unwrap_or(prompt::POINTWISE_TEMPLATE);
        let user = prompt::pointwise(
            template,
            &prompt::question(input),
            &input.completion,
            input.answer.as_deref(),
        );
        let reply = self.client.complete(&self.messages(user)).await?;
        let rating =
            prompt::parse_rating(&reply).map_err(|m| ScoreError::invalid(self.name(), m))?;
        let value = if self.config.normalize {
            (rating - prompt::MIN_RATING) / (prompt::MAX_RATING - prompt::MIN_RATING)
        } else {
            rating
        };
        Ok(Score::new(value, &self.provenance).with_component("rating", rating))
    }

    /// Judges `a` against `b` for `question` in both orders, concurrently, and calibrates.
    pub async fn compare(
        &self,
        question: &str,
        a: &str,
        b: &str,
    ) -> Result<Comparison, ScoreError> {
        let template = self
            .config
            .template
            .as_deref()
            .unwrap_or(prompt::PAIRWISE_TEMPLATE);
        let ask = |first: &str, second: &str| {
            let user = prompt::pairwise(template, question, first, second);
            async move {
                let reply = self.client.complete(&self.messages(user)).await?;
                prompt::parse_verdict(&reply).map_err(|m| ScoreError::invalid(self.name(), m))
            }
        };
        let (ab, ba) = tokio::join!(ask(a, b), ask(b, a));
        Ok(Comparison::calibrate(
            Verdict::from_position(ab?, true),
            Verdict::from_position(ba?, false),
        ))
    }

    /// Pairwise scores: each sample's mean calibrated win probability in its matchups.
    async fn score_pairwise(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let (matchups, alone) = pairwise::matchups(inputs);
        let judged = join_all(matchups.iter().map(|m| async move {
            match *m {
                Matchup::Samples(i, j) => {
                    let q = prompt::question(&inputs[i]);
                    self.compare(&q, &inputs[i].completion, &inputs[j].completion)
                        .await
                }
                Matchup::Reference(i) => {
                    let q = prompt::question(&inputs[i]);
                    let reference = inputs[i].answer.as_deref().unwrap_or_default();
                    self.compare(&q, &inputs[i].completion, reference).await
                }
            }
        }))
        .await;
        pairwise::win_rate_scores(
            inputs,
            &matchups,
            &judged,
            &alone,
            self.name(),
            &self.provenance,
        )
    }
}

#[async_trait]
impl pairwise::PairJudge for JudgeScorer {
    async fn compare(&self, question: &str, a: &str, b: &str) -> Result<Comparison, ScoreError> {
        JudgeScorer::compare(self, question, a, b).await
    }
}

#[async_trait]
impl Scorer for JudgeScorer {
    fn name(&self) -> &str {
        "judge"
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        match self.config.mode {
            JudgeMode::Pointwise => join_all(inputs.iter().map(|i| self.rate(i))).await,
            JudgeMode::Pairwise => self.score_pairwise(inputs).await,
        }
    }
}
