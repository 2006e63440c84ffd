//! A local causal LM as judge, read through its next-token probabilities instead of generated
//! text, so that every sample gets a score (nothing to parse) and scores are continuous:
//!
//! - Pointwise: the judge reads a rating prompt and `Score:`; the score is the expected rating
//!   `Σ k · p(k) / Σ p(k)` over the ratings 1–5 (the probability-weighted score of G-Eval, Liu
//!   et al. 2023). Components `rating_mass` (`Σ p(k)`: how much of the judge's probability went
//!   to a valid rating).
//! - Pairwise (a general preference model: the probability that one answer beats the other,
//!   read per pair, so preferences need not be transitive): the judge reads both answers and
//!   `Better response:`; `P(A) = p(A) / (p(A) + p(B))`, in both orders, averaged (position
//!   calibration as in the HTTP judge); each sample's score is its mean win probability against
//!   the prompt's other samples.
//!
//! With `policy = true` the judge is the policy being trained (Self-Rewarding Language Models,
//! Yuan et al. 2024): each scoring call says which policy version generated the samples, and the
//! scorer fetches that version's weights from the learner before judging. `path` is then the
//! policy's starting checkpoint (a run file fills it in from `[model].path`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rlhf_core::ChatMessage;
use rlhf_model::AnyModel;
use rlhf_proto::security::Tls;
use serde::{Deserialize, Serialize};

use crate::error::{RewardError, ScoreError};
use crate::judge::pairwise::{self, Comparison, Matchup, Verdict};
use crate::judge::{JudgeMode, prompt};
use crate::local_model::{LocalModel, check_checkpoint, score_blocking};
use crate::scorer::{PolicyRef, Score, ScoreInput, Scorer};

/// The default pointwise prompt (ours, after the additive 5-point rubric of Self-Rewarding
/// Language Models); `{prompt}` and `{completion}` are replaced.
pub const POINTWISE_TEMPLATE: &str = "Review the user's question and the response below. Rate \
the response from 1 to 5, one point for each of: it is relevant to the question; it addresses a \
substantial part of it; it answers the basic elements of the question usefully; it is clearly \
written, well organised and helpful; it is an excellent, expert answer without extraneous \
content.

Question: {prompt}

Response: {completion}

Reply with the number of points only.";

/// The default pairwise prompt; `{prompt}`, `{a}` and `{b}` are replaced.
pub const PAIRWISE_TEMPLATE: &str = "Which of the two responses answers the user's question \
better? Judge helpfulness, correctness and clarity, not length or order.

Question: {prompt}

Response A: {a}

Response B: {b}

Reply with A or B only.";

/// Ratings of the pointwise judge.
const RATINGS: [u32; 5] = [1, 2, 3, 4, 5];

/// Config of an [`LmJudgeScorer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmJudgeConfig {
    /// The judge's Hugging Face checkpoint folder (a causal LM); with `policy = true`, the
    /// policy's starting checkpoint (a run file fills it in from `[model].path`).
    #[serde(default)]
    pub path: PathBuf,
    /// Judge with the policy being trained, at the version that generated the samples.
    #[serde(default)]
    pub policy: bool,
    /// `pointwise` (expected rating) or `pairwise` (win probability within the prompt).
    #[serde(default)]
    pub mode: JudgeMode,
    /// The user message (default [`POINTWISE_TEMPLATE`] / [`PAIRWISE_TEMPLATE`]).
    #[serde(default)]
    pub template: Option<String>,
    /// Sequences per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32` or `bf16` (default: f32).
    #[serde(default)]
    pub precision: String,
    /// The longest judge input in tokens (default: the model's context).
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

fn default_batch_size() -> usize {
    crate::reward_model::DEFAULT_BATCH_SIZE
}

fn default_device() -> String {
    crate::reward_model::DEFAULT_DEVICE.into()
}

impl LmJudgeConfig {
    /// A config with defaults for the checkpoint at `path`.
    pub fn new(path: impl Into<PathBuf>, mode: JudgeMode) -> Self {
        Self {
            path: path.into(),
            policy: false,
            mode,
            template: None,
            batch_size: default_batch_size(),
            device: default_device(),
            precision: String::new(),
            max_tokens: None,
        }
    }

    /// Checks the fields that can be checked without loading the model.
    pub fn validate(&self, at: &str) -> Result<(), RewardError> {
        prompt::check_template(
            self.template.as_deref(),
            self.mode,
            &format!("{at}template"),
        )?;
        if self.batch_size == 0 {
            return Err(RewardError::config(
                format!("{at}batch_size"),
                "must be at least 1",
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(RewardError::config(
                format!("{at}path"),
                "give the judge's checkpoint folder (with policy = true a run file uses \
                 [model].path)",
            ));
        }
        check_checkpoint(&self.path, &self.device, &self.precision, at)
    }
}

/// What the blocking worker needs.
struct Inner {
    model: LocalModel,
    mode: JudgeMode,
    template: String,
    /// Token ids of each candidate answer (` 1` … ` 5`, or ` A`, ` B`).
    candidates: Vec<Vec<u32>>,
    /// The text the judge's answer starts with.
    lead: &'static str,
    batch_size: usize,
    provenance: String,
    /// The policy version (and incarnation) of the weights; `None` when the judge is not the
    /// policy.
    version: Mutex<Option<(u64, u64)>>,
}

/// Scores with a local causal LM's next-token probabilities (see the module docs).
pub struct LmJudgeScorer {
    inner: Arc<Inner>,
    policy: bool,
    tls: Option<Tls>,
    /// One weight fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl LmJudgeScorer {
    /// Loads the model and tokenizer; `tls` is used to fetch policy weights from the learner.
    /// Errors name fields under `at`.
    pub fn load_at(
        config: &LmJudgeConfig,
        tls: Option<&Tls>,
        at: &str,
    ) -> Result<Self, RewardError> {
        config.validate(at)?;
        let model = LocalModel::load(
            &config.path,
            &config.device,
            &config.precision,
            config.max_tokens,
            at,
        )?;
        let (lead, answers): (&str, Vec<String>) = match config.mode {
            JudgeMode::Pointwise => ("Score:", RATINGS.iter().map(|k| format!(" {k}")).collect()),
            JudgeMode::Pairwise => ("Better response:", vec![" A".into(), " B".into()]),
        };
        let mut candidates = Vec::with_capacity(answers.len());
        for answer in &answers {
            let ids = model.tokenizer.encode(answer, false)?;
            if ids.is_empty() {
                return Err(RewardError::config(
                    format!("{at}path"),
                    format!("the tokenizer encodes the answer `{answer}` as no tokens"),
                ));
            }
            candidates.push(ids);
        }
        let template = config.template.clone().unwrap_or_else(|| {
            match config.mode {
                JudgeMode::Pointwise => POINTWISE_TEMPLATE,
                JudgeMode::Pairwise => PAIRWISE_TEMPLATE,
            }
            .to_owned()
        });
        let provenance = if config.policy {
            "lm_judge:policy".to_owned()
        } else {
            format!("lm_judge:{}", config.path.display())
        };
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                mode: config.mode,
                template,
                candidates,
                lead,
                batch_size: config.batch_size,
                provenance,
                // The checkpoint at `path` is the policy's version 0.
                version: Mutex::new(config.policy.then_some((0, 0))),
            }),
            policy: config.policy,
            tls: tls.cloned(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes `policy`'s version the judge's weights, fetching them from the learner if needed
    /// (the caller holds `fetching`).
    async fn ensure_version(&self, policy: &PolicyRef) -> Result<(), String> {
        let holds = |inner: &Inner| {
            let held = *inner.version.lock().unwrap_or_else(|p| p.into_inner());
            match held {
                None => true,
                Some((v, inc)) => {
                    v == policy.version
                        && (v == 0 || policy.incarnation == 0 || inc == policy.incarnation)
                }
            }
        };
        if holds(&self.inner) {
            return Ok(());
        }
        let bytes = rlhf_proto::weights::fetch(
            &policy.weights_from,
            policy.version,
            policy.incarnation,
            self.tls.as_ref(),
            rlhf_proto::DEFAULT_MAX_MESSAGE_BYTES,
        )
        .await
        .map_err(|s| format!("policy v{}: {}", policy.version, s.message()))?;
        let inner = Arc::clone(&self.inner);
        let (version, incarnation) = (policy.version, policy.incarnation);
        tokio::task::spawn_blocking(move || {
            let model = AnyModel::from_safetensors_bytes(
                inner.model.config.clone(),
                &bytes,
                std::path::Path::new("<policy weights>"),
                inner.model.device,
                inner.model.precision,
            )
            .map_err(|e| format!("policy v{version}: {e}"))?;
            inner.model.replace(model)?;
            *inner.version.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, incarnation));
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| format!("loading policy v{version}: {e}"))??;
        tracing::info!(version, incarnation, "lm_judge switched to policy version");
        Ok(())
    }
}

impl Inner {
    fn name(&self) -> &'static str {
        "lm_judge"
    }

    /// The calibrated comparison from the judge's choices with A shown first, then second.
    fn comparison(
        &self,
        both: &[Result<(Vec<f64>, f64), String>],
    ) -> Result<Comparison, ScoreError> {
        let first = |k: usize| -> Result<f64, ScoreError> {
            match both.get(k) {
                Some(Ok((p, _))) => Ok(p[0]),
                Some(Err(m)) => Err(ScoreError::invalid(self.name(), m.clone())),
                None => Err(ScoreError::internal(
                    self.name(),
                    "a comparison order is missing",
                )),
            }
        };
        // P(A better) shown first, and shown second (then "B" names it).
        let (ab, ba) = (first(0)?, 1.0 - first(1)?);
        let prob_a = (ab + ba) / 2.0;
        let (a_first, b_first) = (Verdict::from_prob_a(ab), Verdict::from_prob_a(ba));
        Ok(Comparison {
            prob_a,
            verdict: Verdict::from_prob_a(prob_a),
            a_first,
            b_first,
            position_agreement: a_first == b_first,
        })
    }

    /// The tokens of the judge's prompt for `user`, up to and including the answer's lead.
    fn prefix(&self, user: &str) -> Result<Vec<u32>, String> {
        let tokenizer = &self.model.tokenizer;
        let mut ids = if tokenizer.has_chat_template() {
            tokenizer.encode_chat(&[ChatMessage::new("user", user)], true)
        } else {
            tokenizer.encode(&format!("{user}\n\n"), true)
        }
        .map_err(|e| e.to_string())?;
        ids.extend(
            tokenizer
                .encode(self.lead, false)
                .map_err(|e| e.to_string())?,
        );
        Ok(ids)
    }

    /// One row per candidate answer after `prefix`, checked against the length limit.
    fn rows(&self, prefix: &[u32]) -> Result<Vec<(Vec<u32>, usize)>, String> {
        let longest = self.candidates.iter().map(Vec::len).max().unwrap_or(0);
        if prefix.len() + longest > self.model.max_tokens {
            return Err(format!(
                "the judge's input has {} tokens, more than max_tokens = {}",
                prefix.len() + longest,
                self.model.max_tokens
            ));
        }
        Ok(self
            .candidates
            .iter()
            .map(|c| {
                let mut ids = prefix.to_vec();
                ids.extend(c);
                (ids, prefix.len())
            })
            .collect())
    }

    /// The judge's probabilities of each candidate for each question (normalised over the
    /// candidates), and the total probability the candidates had; one result per question.
    fn choose(&self, questions: &[Result<String, String>]) -> Vec<Result<(Vec<f64>, f64), String>> {
        let k = self.candidates.len();
        let mut rows = Vec::new();
        let mut made: Vec<Result<usize, String>> = Vec::with_capacity(questions.len());
        for q in questions {
            match q
                .clone()
                .and_then(|q| self.prefix(&q))
                .and_then(|p| self.rows(&p))
            {
                Ok(r) => {
                    made.push(Ok(rows.len()));
                    rows.extend(r);
                }
                Err(e) => made.push(Err(e)),
            }
        }
        let read = self.model.span_logprobs(&rows, self.batch_size);
        made.into_iter()
            .map(|m| {
                let first = m?;
                let logprobs = read[first..first + k]
                    .iter()
                    .cloned()
                    .collect::<Result<Vec<f64>, String>>()?;
                let top = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logprobs.iter().map(|l| (l - top).exp()).collect();
                let total: f64 = weights.iter().sum();
                let mass: f64 = logprobs.iter().map(|l| l.exp()).sum();
                if !(total.is_finite() && total > 0.0) {
                    return Err(format!(
                        "the judge's log-probs are not finite: {logprobs:?}"
                    ));
                }
                Ok((weights.iter().map(|w| w / total).collect(), mass))
            })
            .collect()
    }

    fn score_all(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        let held = *self.version.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = |s: Score| match held {
            Some((v, _)) => s.with_component("policy_version", v as f64),
            None => s,
        };
        match self.mode {
            JudgeMode::Pointwise => {
                let questions: Vec<Result<String, String>> = inputs
                    .iter()
                    .map(|i| {
                        Ok(prompt::pointwise(
                            &self.template,
                            &prompt::question(i),
                            &i.completion,
                            i.answer.as_deref(),
                        ))
                    })
                    .collect();
                self.choose(&questions)
                    .into_iter()
                    .map(|r| {
                        let (p, mass) = r.map_err(|m| ScoreError::invalid(self.name(), m))?;
                        let rating: f64 =
                            RATINGS.iter().zip(&p).map(|(k, p)| f64::from(*k) * p).sum();
                        Ok(stamp(
                            Score::new(rating, &self.provenance)
                                .with_component("rating_mass", mass),
                        ))
                    })
                    .collect()
            }
            JudgeMode::Pairwise => {
                let (matchups, alone) = pairwise::matchups(inputs);
                // Both orders of every matchup: (first shown, second shown).
                let mut questions = Vec::with_capacity(2 * matchups.len());
                for m in &matchups {
                    let (i, a, b) = match *m {
                        Matchup::Samples(i, j) => (
                            i,
                            inputs[i].completion.as_str(),
                            inputs[j].completion.as_str(),
                        ),
                        Matchup::Reference(i) => (
                            i,
                            inputs[i].completion.as_str(),
                            inputs[i].answer.as_deref().unwrap_or_default(),
                        ),
                    };
                    let q = prompt::question(&inputs[i]);
                    questions.push(Ok(prompt::pairwise(&self.template, &q, a, b)));
                    questions.push(Ok(prompt::pairwise(&self.template, &q, b, a)));
                }
                let chosen = self.choose(&questions);
                let judged: Vec<Result<Comparison, ScoreError>> =
                    chosen.chunks(2).map(|both| self.comparison(both)).collect();
                pairwise::win_rate_scores(
                    inputs,
                    &matchups,
                    &judged,
                    &alone,
                    self.name(),
                    &self.provenance,
                )
                .into_iter()
                .map(|r| r.map(stamp))
                .collect()
            }
        }
    }
}

#[async_trait]
impl pairwise::PairJudge for LmJudgeScorer {
    /// Judges with the weights loaded from `path` (no policy version comes with a pair).
    async fn compare(&self, question: &str, a: &str, b: &str) -> Result<Comparison, ScoreError> {
        if self.inner.mode != JudgeMode::Pairwise {
            return Err(ScoreError::invalid(
                self.name(),
                "comparing pairs needs mode = \"pairwise\"",
            ));
        }
        let inner = Arc::clone(&self.inner);
        let questions = vec![
            Ok(prompt::pairwise(&inner.template, question, a, b)),
            Ok(prompt::pairwise(&inner.template, question, b, a)),
        ];
        let _turn = self.fetching.lock().await;
        tokio::task::spawn_blocking(move || {
            let both = inner.choose(&questions);
            inner.comparison(&both)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ScoreError::internal(
                "lm_judge",
                format!("the judging task failed: {e}"),
            ))
        })
    }
}

#[async_trait]
impl Scorer for LmJudgeScorer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn score(&self, inputs: &[ScoreInput]) -> Vec<Result<Score, ScoreError>> {
        // With the policy as judge, one call at a time: the weights stay those of the version
        // that generated this call's samples until it is scored.
        let _turn = match self.policy {
            true => Some(self.fetching.lock().await),
            false => None,
        };
        if self.policy
            && let Some(policy) = inputs.iter().find_map(|i| i.policy.as_ref())
            && let Err(message) = self.ensure_version(policy).await
        {
            return inputs
                .iter()
                .map(|_| {
                    Err(ScoreError::Unreachable {
                        scorer: self.name().into(),
                        message: message.clone(),
                    })
                })
                .collect();
        }
        score_blocking(self.name(), &self.inner, inputs, Inner::score_all).await
    }
}
