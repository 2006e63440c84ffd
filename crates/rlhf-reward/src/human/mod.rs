//! Human preference labels, with routing: a base scorer scores every sample; for each prompt
//! whose best and worst samples the base scorer can barely tell apart (`route = "uncertain"`,
//! margin at most `margin`) or for every prompt (`route = "all"`), a person is asked on a
//! labeling web page which of the two is better. The answer arrives seconds or minutes later;
//! `score` waits for it up to `deadline_s`.
//!
//! How a label becomes rewards: in a prompt whose pair was labelled, the preferred sample gets
//! the prompt's best base score plus `label_margin / 2`, the other one the worst base score minus
//! `label_margin / 2`, so that the labelled pair is the prompt's best and worst (what
//! best-vs-worst DPO trains on) in the person's direction; a tie gives both the mean of their
//! base scores. The prompt's other samples keep their base scores. Evaluation samples (the
//! coordinator's held-out reward, `rlhf eval`) are never routed.
//!
//! No label is lost: every answer is appended to `labels_file` (one JSON line with the prompt,
//! both completions, their base scores, the choice, the labeller and the times) and synced
//! before the page is told it was recorded. A restarted scorer reads the file back and reuses a
//! label when the same pair (same sample ids and texts) comes again, as it does when the
//! coordinator retries a scoring call. A label that arrives after the deadline is kept in the
//! file (marked `late`) and reused the same way, but the call that asked for it has moved on.
//!
//! The page (`GET /`) and its JSON API (`/api/next`, `/api/label`, `/api/pending`,
//! `/api/stats`) are served on `listen`; with `token_env` every API call needs
//! `Authorization: Bearer <token>` (the page takes it from its URL: `/?token=...`).

mod desk;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rlhf_core::CancellationToken;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::ScorerConfig;
use crate::error::{RewardError, ScoreError};
use crate::scorer::{Score, ScoreInput, Scorer};
use desk::{Ask, Desk, Label, Side};
pub use desk::{Choice, Export, HumanStats, preference_pairs};

/// Default address of the labeling page.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Default wait for a label, in seconds.
pub const DEFAULT_DEADLINE_S: f64 = 900.0;
/// Default number of comparisons open at once.
pub const DEFAULT_MAX_OPEN: usize = 256;
/// Default time a labeller holds a comparison handed out by `/api/next`, in seconds.
pub const DEFAULT_CLAIM_S: f64 = 300.0;

/// Which prompts' pairs go to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Prompts whose best and worst base scores differ by at most `margin`.
    #[default]
    Uncertain,
    /// Every prompt with at least two scored samples.
    All,
}

/// What a routed prompt's samples get when no label arrives within `deadline_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Keep the base scores.
    #[default]
    Base,
    /// The labelled pair's two samples get a `timeout` error (left out of training).
    Missing,
}

/// Config of a [`HumanScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HumanConfig {
    /// Where the labeling page listens (`host:port`; port 0 picks a free one).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The scorer that scores every sample and decides which pairs are uncertain.
    pub base: Box<ScorerConfig>,
    /// `uncertain` (default) or `all`.
    #[serde(default)]
    pub route: Route,
    /// With `route = "uncertain"`: a prompt is routed when its best and worst base scores differ
    /// by at most this (in the base scorer's units). Required there.
    #[serde(default)]
    pub margin: Option<f64>,
    /// The gap a label puts around the prompt's base range (default: `margin`); must end up
    /// positive, so `route = "all"` or `margin = 0` need it.
    #[serde(default)]
    pub label_margin: Option<f64>,
    /// How long a scoring call waits for its labels, in seconds. The coordinator's
    /// `score_deadline_s` must be longer.
    #[serde(default = "default_deadline_s")]
    pub deadline_s: f64,
    /// `base` (default) or `missing`.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// The JSON-lines file every label is appended to (created if missing, read back at start).
    pub labels_file: PathBuf,
    /// An environment variable holding a token every API call must present.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Comparisons open at once; further uncertain prompts keep their base scores (counted as
    /// `busy`).
    #[serde(default = "default_max_open")]
    pub max_open: usize,
    /// How long a comparison handed to one labeller by `/api/next` is kept from the others.
    #[serde(default = "default_claim_s")]
    pub claim_s: f64,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.into()
}
fn default_deadline_s() -> f64 {
    DEFAULT_DEADLINE_S
}
fn default_max_open() -> usize {
    DEFAULT_MAX_OPEN
}
fn default_claim_s() -> f64 {
    DEFAULT_CLAIM_S
}

impl HumanConfig {
    /// A config with defaults routing uncertain pairs of `base` (margin `margin`).
    pub fn new(base: ScorerConfig, margin: f64, labels_file: impl Into<PathBuf>) -> Self {
        Self {
            listen: default_listen(),
            base: Box::new(base),
            route: Route::Uncertain,
            margin: Some(margin),
            label_margin: None,
            deadline_s: DEFAULT_DEADLINE_S,
            on_timeout: OnTimeout::Base,
            labels_file: labels_file.into(),
            token_env: None,
            max_open: DEFAULT_MAX_OPEN,
            claim_s: DEFAULT_CLAIM_S,
        }
    }

    /// The label margin in effect (`label_margin`, else `margin`).
    pub fn effective_label_margin(&self) -> Option<f64> {
        self.label_margin.or(self.margin)
    }

    /// Checks every field (the base scorer's under `base.`).
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        let bad = |field: &str, message: String| {
            Err(RewardError::config(format!("{at}{field}"), message))
        };
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "listen",
                format!("`{}` is not a host:port address", self.listen),
            );
        }
        match (self.route, self.margin) {
            (Route::Uncertain, None) => {
                return bad(
                    "margin",
                    "route = \"uncertain\" needs a margin in the base scorer's units".into(),
                );
            }
            (_, Some(m)) if !(m.is_finite() && m >= 0.0) => {
                return bad("margin", format!("must be finite and ≥ 0, got {m}"));
            }
            _ => {}
        }
        match self.effective_label_margin() {
            Some(m) if m.is_finite() && m > 0.0 => {}
            Some(m) => return bad("label_margin", format!("must be finite and > 0, got {m}")),
            None => {
                return bad(
                    "label_margin",
                    "needed with route = \"all\" (no margin to default to)".into(),
                );
            }
        }
        for (field, v) in [("deadline_s", self.deadline_s), ("claim_s", self.claim_s)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("must be positive, got {v}"));
            }
        }
        if self.max_open == 0 {
            return bad("max_open", "must be at least 1".into());
        }
        if self.labels_file.as_os_str().is_empty() {
            return bad("labels_file", "give a file for the labels".into());
        }
        if let Some(env) = &self.token_env
            && env.trim().is_empty()
        {
            return bad("token_env", "name an environment variable".into());
        }
        self.base.validate_at(&format!("{at}base."))
    }
}

/// Asks people to label the uncertain pairs of a base scorer (see the module docs).
pub struct HumanScorer {
    base: Box<dyn Scorer>,
    desk: Arc<Desk>,
    route: Route,
    margin: f64,
    label_margin: f64,
    deadline: Duration,
    on_timeout: OnTimeout,
    addr: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

impl HumanScorer {
    /// Reads the labels file and the token, binds `listen` and serves the page (on the current
    /// tokio runtime) until the scorer is dropped. Errors name fields under `at`.
    pub fn start(
        cfg: &HumanConfig,
        base: Box<dyn Scorer>,
        at: &str,
    ) -> Result<HumanScorer, RewardError> {
        cfg.validate(at)?;
        let field = |f: &str| format!("{at}{f}");
        let token = match &cfg.token_env {
            Some(env) => match std::env::var(env) {
                Ok(t) if t.len() >= 16 => Some(t),
                Ok(_) => {
                    return Err(RewardError::config(
                        field("token_env"),
                        format!("the token in ${env} is shorter than 16 characters"),
                    ));
                }
                Err(_) => {
                    return Err(RewardError::config(
                        field("token_env"),
                        format!("${env} is not set"),
                    ));
                }
            },
            None => None,
        };
        let desk = Desk::open(
            &cfg.labels_file,
            token,
            cfg.max_open,
            Duration::from_secs_f64(cfg.claim_s),
        )
        .map_err(|m| RewardError::config(field("labels_file"), m))?;
        let desk = Arc::new(desk);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RewardError::config(
                field("listen"),
                "the labeling page needs a tokio runtime (build the scorer inside one)",
            )
        })?;
        let listener = std::net::TcpListener::bind(&cfg.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| RewardError::config(field("listen"), format!("{}: {e}", cfg.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| RewardError::config(field("listen"), e.to_string()))?;
        let stop = CancellationToken::new();
        let app = page::router(desk.clone());
        let (listener_field, stopped) = (field("listen"), stop.clone());
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(field = %listener_field, error = %e, "labeling page not served");
                    return;
                }
            };
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(field = %listener_field, error = %e, "labeling page stopped");
            }
        });
        tracing::info!(
            page = %format!("http://{addr}/"),
            labels_file = %cfg.labels_file.display(),
            known_labels = desk.known_labels(),
            "human labeling page serving"
        );
        Ok(HumanScorer {
            base,
            desk,
            route: cfg.route,
            margin: cfg.margin.unwrap_or(0.0),
            label_margin: cfg.effective_label_margin().unwrap_or(1.0),
            deadline: Duration::from_secs_f64(cfg.deadline_s),
            on_timeout: cfg.on_timeout,
            addr,
            _stop: stop.drop_guard(),
        })
    }

    /// The address the labeling page is served on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts of routed, labelled, reused, timed-out, busy and late comparisons.
    pub fn human_stats(&self) -> HumanStats {
        self.desk.stats()
    }

    /// The pair to ask about in each routed prompt: (best, worst) sample indices into `inputs`.
    fn routed_pairs(
        &self,
        inputs: &[ScoreInput],
        base: &[Result<Score, ScoreError>],
    ) -> Vec<(usize, usize)> {
        let mut groups: Vec<((u64, &str), Vec<usize>)> = Vec::new();
        for (k, input) in inputs.iter().enumerate() {
            let finite = base[k].as_ref().is_ok_and(|s| s.value.is_finite());
            if input.evaluation || !finite {
                continue;
            }
            let key = (
                input.sample_id.iteration,
                input.sample_id.prompt_id.as_str(),
            );
            match groups.iter_mut().find(|(g, _)| *g == key) {
                Some((_, members)) => members.push(k),
                None => groups.push((key, vec![k])),
            }
        }
        let value = |k: usize| base[k].as_ref().map(|s| s.value).unwrap_or(f64::NAN);
        let mut pairs = Vec::new();
        for (_, members) in groups {
            if members.len() < 2 {
                continue;
            }
            let best = members
                .iter()
                .copied()
                .fold(members[0], |b, k| if value(k) > value(b) { k } else { b });
            let others: Vec<usize> = members.iter().copied().filter(|&k| k != best).collect();
            let worst = others
                .iter()
                .copied()
                .fold(others[0], |w, k| if value(k) < value(w) { k } else { w });
            if self.route == Route::All || value(best) - value(worst) <= self.margin {
                pairs.push((best, worst));
            }
        }
        pairs
    }
}

/// A routed prompt's outstanding question.
struct Pending {
    best: usize,
    worst: usize,
    answer: Answer,
}

enum Answer {
    Now(Label),
    Later(u64, oneshot::Receiver<Label>),
    Busy,
}

#[async_trait]
impl Scorer for HumanScorer {
    fn name(&self) -> &str {
        "human"
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let mut results = self.base.score(inputs).await;
        let pairs = self.routed_pairs(inputs, &results);
        if pairs.is_empty() {
            return results;
        }
        let base_value = |k: usize| results[k].as_ref().map(|s| s.value).unwrap_or(f64::NAN);
        let mut pending = Vec::with_capacity(pairs.len());
        for (best, worst) in pairs {
            let side = |k: usize| Side {
                sample_id: inputs[k].sample_id.clone(),
                completion: inputs[k].completion.clone(),
                base: base_value(k),
            };
            let ask = Ask::new(&inputs[best], side(best), side(worst));
            let answer = match self.desk.ask(ask) {
                desk::Asked::Known(label) => Answer::Now(label),
                desk::Asked::Open(id, rx) => Answer::Later(id, rx),
                desk::Asked::Busy => Answer::Busy,
            };
            pending.push(Pending {
                best,
                worst,
                answer,
            });
        }
        let waiting = pending
            .iter()
            .filter(|p| matches!(p.answer, Answer::Later(..)))
            .count();
        if waiting > 0 {
            tracing::info!(
                waiting,
                page = %format!("http://{}/", self.addr),
                deadline_s = self.deadline.as_secs_f64(),
                "waiting for human labels"
            );
        }
        let until = Instant::now() + self.deadline;
        for p in pending {
            let label = match p.answer {
                Answer::Now(label) => Some(label),
                Answer::Busy => None,
                Answer::Later(id, rx) => {
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, rx).await {
                        Ok(Ok(label)) => Some(label),
                        _ => {
                            self.desk.time_out(id);
                            if self.on_timeout == OnTimeout::Missing {
                                for k in [p.best, p.worst] {
                                    results[k] = Err(ScoreError::Timeout {
                                        scorer: "human".into(),
                                        message: format!(
                                            "no label for sample {} within {:.0}s",
                                            inputs[k].sample_id,
                                            self.deadline.as_secs_f64()
                                        ),
                                    });
                                }
                            }
                            None
                        }
                    }
                }
            };
            if let Some(label) = label {
                self.apply(&mut results, inputs, p.best, p.worst, &label);
            }
        }
        results
    }
}

impl HumanScorer {
    /// Rewrites the two labelled samples' scores (see the module docs).
    fn apply(
        &self,
        results: &mut [Result<Score, ScoreError>],
        inputs: &[ScoreInput],
        best: usize,
        worst: usize,
        label: &Label,
    ) {
        let (Ok(b), Ok(w)) = (&results[best], &results[worst]) else {
            return;
        };
        let (hi, lo) = (b.value, w.value);
        let half = self.label_margin / 2.0;
        let preferred = label.preferred.as_ref();
        let (value_best, value_worst, p_best) = if preferred == Some(&inputs[best].sample_id) {
            (hi + half, lo - half, 1.0)
        } else if preferred == Some(&inputs[worst].sample_id) {
            (lo - half, hi + half, 0.0)
        } else {
            let mid = (hi + lo) / 2.0;
            (mid, mid, 0.5)
        };
        for (k, value, p) in [
            (best, value_best, p_best),
            (worst, value_worst, 1.0 - p_best),
        ] {
            if let Ok(s) = &mut results[k] {
                s.components.insert("base".into(), s.value);
                s.components.insert("human".into(), p);
                s.value = value;
                s.provenance = format!("human:{}", label.labeler);
            }
        }
    }
}
