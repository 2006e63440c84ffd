//! A minimal OpenAI chat-completions client with the failure handling a judge needs: a timeout
//! per request, an overall deadline per call (retries included), exponential backoff with
//! jitter (honouring `Retry-After`), a cap on requests in flight, and errors that name the URL.
//!
//! Retried: connection failures, per-request timeouts, HTTP 408, 429 and 5xx. Not retried: other
//! 4xx ([`ScoreError::Rejected`]) and malformed replies ([`ScoreError::Invalid`]).

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use rlhf_core::ChatMessage;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::{RewardError, ScoreError};

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The most of a reply body quoted in an error.
const QUOTE_LIMIT: usize = 300;

/// How a [`ChatClient`] talks to its server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Everything before `/chat/completions`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The `model` field of each request.
    pub model: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// The limit for one HTTP attempt (connect, send, read the reply).
    pub timeout: Duration,
    /// The limit for one call, all attempts and waits included.
    pub deadline: Duration,
    /// Attempts after the first one.
    pub retries: u32,
    /// The wait before the first retry; doubles after each.
    pub backoff: Duration,
    /// Requests in flight at once, over all calls.
    pub max_concurrency: usize,
    /// The `max_tokens` field of each request, if set.
    pub max_tokens: Option<u32>,
}

/// An OpenAI-compatible chat-completions client.
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    options: ClientOptions,
    permits: Arc<Semaphore>,
    /// The scorer name put in errors.
    scorer: String,
}

/// The outcome of one failed attempt.
enum Failure {
    /// Worth another attempt; the message says what happened, the duration is a `Retry-After`.
    Retry(String, Option<Duration>),
    /// Final.
    Fatal(ScoreError),
}

impl ChatClient {
    /// Builds the client (no request is sent).
    pub fn new(options: ClientOptions, scorer: impl Into<String>) -> Result<Self, RewardError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| RewardError::Http(e.to_string()))?;
        let url = format!(
            "{}/chat/completions",
            options.base_url.trim_end_matches('/')
        );
        Ok(Self {
            http,
            url,
            permits: Arc::new(Semaphore::new(options.max_concurrency.max(1))),
            options,
            scorer: scorer.into(),
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The judge model's name.
    pub fn model(&self) -> &str {
        &self.options.model
    }

    /// Sends `messages` at temperature 0 and returns `choices[0].message.content`.
    pub async fn complete(&self, messages: &[ChatMessage]) -> Result<String, ScoreError> {
        let o = &self.options;
        let start = Instant::now();
        let deadline = start + o.deadline;
        let body = self.body(messages);
        let mut attempts = 0u32;
        let timed_out = |attempts: u32, last: &str| ScoreError::Timeout {
            scorer: self.scorer.clone(),
            message: format!(
                "deadline of {:?} for POST {} passed after {attempts} attempt(s); last error: {last}",
                o.deadline, self.url
            ),
        };
        loop {
            let Ok(permit) = tokio::time::timeout_at(deadline, self.permits.acquire()).await else {
                return Err(timed_out(attempts, "waiting for a free request slot"));
            };
            attempts += 1;
            let limit = o
                .timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let outcome = tokio::time::timeout(limit, self.attempt(&body)).await;
            drop(permit);
            let (last, retry_after) = match outcome {
                Ok(Ok(content)) => return Ok(content),
                Ok(Err(Failure::Fatal(e))) => return Err(e),
                Ok(Err(Failure::Retry(message, retry_after))) => (message, retry_after),
                Err(_) => (format!("no reply within {limit:?}"), None),
            };
            if Instant::now() >= deadline {
                return Err(timed_out(attempts, &last));
            }
            if attempts > o.retries {
                return Err(ScoreError::Unreachable {
                    scorer: self.scorer.clone(),
                    message: format!(
                        "POST {} failed {attempts} time(s); last error: {last}",
                        self.url
                    ),
                });
            }
            let wait = backoff(o.backoff, attempts).max(retry_after.unwrap_or_default());
            if Instant::now() + wait >= deadline {
                return Err(timed_out(attempts, &last));
            }
            tracing::debug!(url = %self.url, attempts, ?wait, error = %last, "judge request failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }

    fn body(&self, messages: &[ChatMessage]) -> Value {
        let mut body = json!({
            "model": self.options.model,
            "messages": messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>(),
            "temperature": 0.0,
        });
        if let Some(n) = self.options.max_tokens {
            body["max_tokens"] = json!(n);
        }
        body
    }

    async fn attempt(&self, body: &Value) -> Result<String, Failure> {
        let mut request = self.http.post(&self.url).json(body);
        if let Some(key) = &self.options.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Retry(describe(&e), None))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(MAX_BACKOFF.as_secs_f64())));
        let text = response.text().await.map_err(|e| {
            Failure::Retry(format!("cannot read the reply: {}", describe(&e)), None)
        })?;
        if status.is_success() {
            return self.content(&text).map_err(Failure::Fatal);
        }
        let message = format!("HTTP {status}: {}", quote(&text));
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            Err(Failure::Retry(message, retry_after))
        } else {
            Err(Failure::Fatal(ScoreError::Rejected {
                scorer: self.scorer.clone(),
                message: format!("POST {}: {message}", self.url),
            }))
        }
    }

    /// `choices[0].message.content` of a reply body.
    fn content(&self, text: &str) -> Result<String, ScoreError> {
        let invalid = |what: String| {
            ScoreError::invalid(&self.scorer, format!("reply from {}: {what}", self.url))
        };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| invalid(format!("not JSON ({e}): {}", quote(text))))?;
        value
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(format!(
                    "no string at choices[0].message.content: {}",
                    quote(text)
                ))
            })
    }
}

/// The wait before retry number `attempts` (1-based): `base * 2^(attempts-1)`, capped, with
/// jitter in [50%, 100%] so that many callers do not retry in step.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    exp.min(MAX_BACKOFF)
        .mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// An error with its chain of causes (reqwest's own message says little).
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// A reply body shortened for an error message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_cap() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4u32 {
            let full = base * (1 << (attempt - 1));
            let wait = backoff(base, attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
        assert!(backoff(base, 40) <= MAX_BACKOFF);
    }

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("ok"), "\"ok\"");
        assert!(quote(&"x".repeat(1000)).len() < QUOTE_LIMIT + 10);
    }
}
