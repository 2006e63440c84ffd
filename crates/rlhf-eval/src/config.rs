//! The typed eval config: one TOML file with top-level tables (`[[policies]]`, `[prompts]`,
//! `[generation]`, `[[scorers]]`, `[judge]`, `[ranking]`, `[reference]`, `[stats]`,
//! `[output]`). Strict (unknown fields are errors), defaults as named consts, and
//! [`EvalConfig::validate`] names the offending field. See `docs/eval.md` for an example.

use std::path::{Path, PathBuf};

use rlhf_reward::{JudgeConfig, JudgeMode, LmJudgeConfig, ScorerConfig};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;

/// Default number of prompts generated for a built-in task.
pub const DEFAULT_BUILTIN_PROMPTS: usize = 256;
/// Default samples per prompt.
pub const DEFAULT_SAMPLES_PER_PROMPT: u32 = 4;
/// Default generation length limit.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;
/// Default prompts per generation batch (each contributes `samples_per_prompt` rows).
pub const DEFAULT_BATCH_PROMPTS: usize = 8;
/// Default sequences per teacher-forced forward pass (ranking, reference log-probs).
pub const DEFAULT_LOGPROB_BATCH: usize = 8;
/// Default limit on prompt + answer tokens of a preference pair.
pub const DEFAULT_MAX_LEN: usize = 2048;
/// Default bootstrap resamples.
pub const DEFAULT_BOOTSTRAP_RESAMPLES: usize = 1000;
/// Default confidence level of every interval.
pub const DEFAULT_CI_LEVEL: f64 = 0.95;

/// An evaluation: which policies, on which prompts, measured how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Where models run: `cpu` (default) or `cuda:N` (builds with the `cuda` feature).
    #[serde(default)]
    pub device: String,
    /// `f32` (default) or `bf16` (weights and matmuls in bf16; GPU only). Part of every policy's
    /// cache identity: bf16 samples and log-probs are not f32 ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precision: String,
    /// The policies to evaluate, each a Hugging Face checkpoint folder with a unique name.
    pub policies: Vec<PolicyConfig>,
    /// The prompts to sample from (needed for rewards, lengths, KL and win rates).
    #[serde(default)]
    pub prompts: Option<PromptsConfig>,
    /// How samples are drawn.
    #[serde(default)]
    pub generation: GenerationConfig,
    /// Reward sources; every policy's samples are scored by each.
    #[serde(default)]
    pub scorers: Vec<NamedScorer>,
    /// Pairwise win rates: which pairs, under which scorers, and an optional LLM judge.
    #[serde(default)]
    pub judge: Option<JudgeSection>,
    /// Ranking accuracy on a preference dataset.
    #[serde(default)]
    pub ranking: Option<RankingConfig>,
    /// The reference policy for KL and the reference-adjusted ranking accuracy.
    #[serde(default)]
    pub reference: Option<ReferenceConfig>,
    /// Confidence intervals.
    #[serde(default)]
    pub stats: StatsConfig,
    /// Where the cache and the report go.
    #[serde(default)]
    pub output: OutputConfig,
}

/// One policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The name in the report and in `judge.pairs`.
    pub name: String,
    /// The checkpoint folder (`config.json`, safetensors, `tokenizer.json`).
    pub path: PathBuf,
}

/// Which part of a dataset to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitChoice {
    /// Every prompt.
    #[default]
    All,
    /// The training part of the split a run with the same `seed` and `heldout_fraction` made.
    Train,
    /// The held-out part of that split (prompts the policy was not trained on).
    Heldout,
}

/// The prompt set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsConfig {
    /// A JSONL or Parquet prompt file (see rlhf-data); set this or `builtin`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A built-in task (`letters`, `letters-K`).
    #[serde(default)]
    pub builtin: Option<String>,
    /// How many prompts the built-in task generates (as the run's `data.builtin_prompts`).
    #[serde(default = "default_builtin_prompts")]
    pub builtin_prompts: usize,
    /// The seed of the built-in task and of the split (the run's `coordinator.seed`).
    #[serde(default)]
    pub seed: u64,
    /// Which part of the split to use.
    #[serde(default)]
    pub split: SplitChoice,
    /// The held-out fraction of the split (the run's `data.heldout_fraction`).
    #[serde(default)]
    pub heldout_fraction: f64,
    /// Use only the first `limit` prompts (after the split).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Skip malformed records of a file instead of failing.
    #[serde(default)]
    pub skip_malformed: bool,
}

fn default_builtin_prompts() -> usize {
    DEFAULT_BUILTIN_PROMPTS
}

/// Sampling settings. Sample `k` of prompt `p` uses the seed
/// `rlhf_rollout::sample_seed(seed, p, k)`, as rollout workers do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// Completions per prompt.
    #[serde(default = "default_samples_per_prompt")]
    pub samples_per_prompt: u32,
    /// The base seed of every sample.
    #[serde(default)]
    pub seed: u64,
    /// Generation length limit, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Softmax temperature (0 = greedy). KL is only an estimate of KL(π‖π_ref) at 1 with no
    /// truncation, since only then are samples drawn from π.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    #[serde(default)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    /// Wrap prompts in the policy's chat template (a `messages` prompt always is).
    #[serde(default = "default_true")]
    pub chat: bool,
    /// Prompts per generation batch; the cache is written after each batch.
    #[serde(default = "default_batch_prompts")]
    pub batch_prompts: usize,
}

fn default_samples_per_prompt() -> u32 {
    DEFAULT_SAMPLES_PER_PROMPT
}
fn default_max_new_tokens() -> usize {
    DEFAULT_MAX_NEW_TOKENS
}
fn default_temperature() -> f32 {
    1.0
}
fn default_top_p() -> f32 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_batch_prompts() -> usize {
    DEFAULT_BATCH_PROMPTS
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            samples_per_prompt: DEFAULT_SAMPLES_PER_PROMPT,
            seed: 0,
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            chat: true,
            batch_prompts: DEFAULT_BATCH_PROMPTS,
        }
    }
}

/// A scorer with the name it has in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedScorer {
    /// The name (default: `rule:<name>` for rules, else the type).
    #[serde(default)]
    pub name: Option<String>,
    /// The scorer (`{ type = "rule", name = "letters" }`, see rlhf-reward).
    pub scorer: ScorerConfig,
}

impl NamedScorer {
    /// The name in the report.
    pub fn effective_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.scorer.default_name())
    }
}

/// Pairwise win rates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSection {
    /// `[["A", "B"], ...]`: the win rate of A over B. Default: each policy against every policy
    /// listed before it (list the baseline first).
    #[serde(default)]
    pub pairs: Option<Vec<[String; 2]>>,
    /// The scorers (by name) that decide wins: the higher score wins, equal scores tie.
    /// Default: every scorer.
    #[serde(default)]
    pub scorers: Option<Vec<String>>,
    /// An LLM judge (rlhf-reward's judge config; `mode` is ignored: comparisons are always
    /// judged in both orders).
    #[serde(default)]
    pub llm: Option<JudgeConfig>,
    /// A local causal LM as judge (rlhf-reward's `lm_judge` config without `type`; `mode` is
    /// ignored: pairwise, both orders; `policy` is refused).
    #[serde(default)]
    pub local: Option<LmJudgeConfig>,
}

/// Ranking accuracy on preference pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingConfig {
    /// A JSONL file: `prompt` or `messages`, and `chosen` and `rejected` (strings, or message
    /// lists ending with the assistant's answer).
    pub path: PathBuf,
    /// Use only the first `limit` pairs.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Sequences per forward pass.
    #[serde(default = "default_logprob_batch")]
    pub batch_size: usize,
    /// Render with the chat template (default: `generation.chat`).
    #[serde(default)]
    pub chat: Option<bool>,
    /// Pairs with a side longer than this (prompt + answer tokens) are skipped and counted.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn default_logprob_batch() -> usize {
    DEFAULT_LOGPROB_BATCH
}
fn default_max_len() -> usize {
    DEFAULT_MAX_LEN
}

/// The reference policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// The checkpoint folder; it must share the policies' tokenizer.
    pub path: PathBuf,
    /// Sequences per forward pass when scoring samples under the reference.
    #[serde(default = "default_logprob_batch")]
    pub batch_size: usize,
}

/// Confidence intervals: percentile bootstrap over prompts (or pairs), with a fixed seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// Bootstrap resamples.
    #[serde(default = "default_resamples")]
    pub bootstrap_resamples: usize,
    /// The bootstrap's seed.
    #[serde(default)]
    pub seed: u64,
    /// The confidence level, in (0, 1).
    #[serde(default = "default_level")]
    pub level: f64,
}

fn default_resamples() -> usize {
    DEFAULT_BOOTSTRAP_RESAMPLES
}
fn default_level() -> f64 {
    DEFAULT_CI_LEVEL
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            bootstrap_resamples: DEFAULT_BOOTSTRAP_RESAMPLES,
            seed: 0,
            level: DEFAULT_CI_LEVEL,
        }
    }
}

/// How a policy is identified in cache keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fingerprint {
    /// SHA-256 of the checkpoint's files (exact; reads the weights once per run).
    #[default]
    Content,
    /// Path, size and modification time of the checkpoint's files (instant).
    Metadata,
}

/// Outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// A folder for `report.json`, `report.txt`, `samples.jsonl` and the cache (`cache/`).
    /// None: nothing is written and nothing cached.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Cache results under `dir/cache` so an interrupted run resumes (default on).
    #[serde(default = "default_true")]
    pub cache: bool,
    /// How policies are identified in cache keys.
    #[serde(default)]
    pub fingerprint: Fingerprint,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: None,
            cache: true,
            fingerprint: Fingerprint::Content,
        }
    }
}

impl EvalConfig {
    /// Parses TOML; relative input paths resolve against `base` when they exist there.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Self, EvalError> {
        let mut config: EvalConfig = toml::from_str(text)
            .map_err(|e| EvalError::config("", e.to_string().replace('\n', " ").trim()))?;
        config.resolve_paths(base);
        Ok(config)
    }

    /// Reads, resolves (relative to the file's folder) and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        let config = Self::from_toml_str(&text, path.parent().unwrap_or(Path::new(".")))?;
        config.validate()?;
        Ok(config)
    }

    /// The parsed `device` (`cpu` when empty).
    pub fn device(&self) -> Result<rlhf_model::DeviceSpec, EvalError> {
        rlhf_model::DeviceSpec::from_setting(&self.device)
            .map_err(|e| EvalError::config("device", e))
    }

    /// The parsed `precision` (`f32` when empty), checked against the device.
    pub fn precision(&self) -> Result<rlhf_model::Precision, EvalError> {
        rlhf_model::Precision::for_device(&self.precision, self.device()?)
            .map_err(|e| EvalError::config("precision", e))
    }

    /// Makes relative input paths (policies, prompts, ranking, reference, reward models)
    /// relative to `base` when they exist there; `output.dir` stays relative to the working
    /// folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in &mut self.policies {
            p.path = resolve(base, &p.path);
        }
        if let Some(path) = self.prompts.as_mut().and_then(|p| p.path.as_mut()) {
            *path = resolve(base, path);
        }
        if let Some(r) = &mut self.ranking {
            r.path = resolve(base, &r.path);
        }
        if let Some(r) = &mut self.reference {
            r.path = resolve(base, &r.path);
        }
        for s in &mut self.scorers {
            resolve_scorer(base, &mut s.scorer);
        }
        if let Some(l) = self.judge.as_mut().and_then(|j| j.local.as_mut()) {
            l.path = resolve(base, &l.path);
        }
    }

    /// The scorer names, in order.
    pub fn scorer_names(&self) -> Vec<String> {
        self.scorers
            .iter()
            .map(NamedScorer::effective_name)
            .collect()
    }

    /// The (A, B) pairs whose win rates are reported.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self.judge.as_ref().and_then(|j| j.pairs.as_ref()) {
            Some(pairs) => pairs.iter().map(|[a, b]| (a.clone(), b.clone())).collect(),
            None => (0..self.policies.len())
                .flat_map(|j| (0..j).map(move |i| (j, i)))
                .map(|(a, b)| (self.policies[a].name.clone(), self.policies[b].name.clone()))
                .collect(),
        }
    }

    /// The scorers (by name) that decide pairwise wins.
    pub fn judge_scorers(&self) -> Vec<String> {
        match self.judge.as_ref().and_then(|j| j.scorers.clone()) {
            Some(names) => names,
            None => self.scorer_names(),
        }
    }

    /// The LLM judge's config, set to compare in both orders.
    pub fn llm_judge(&self) -> Option<JudgeConfig> {
        let mut c = self.judge.as_ref()?.llm.clone()?;
        c.mode = JudgeMode::Pairwise;
        Some(c)
    }

    /// The local judge's config, set to compare pairs.
    pub fn local_judge(&self) -> Option<LmJudgeConfig> {
        let mut c = self.judge.as_ref()?.local.clone()?;
        c.mode = JudgeMode::Pairwise;
        Some(c)
    }
}

/// Resolves a relative path against `base` when it exists there (as `rlhf run` does).
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        return p.to_path_buf();
    }
    let beside = base.join(p);
    if beside.exists() {
        beside
    } else {
        p.to_path_buf()
    }
}

fn resolve_scorer(base: &Path, s: &mut ScorerConfig) {
    match s {
        ScorerConfig::RewardModel(c) => c.path = resolve(base, &c.path),
        ScorerConfig::FollowUp(c) => c.path = resolve(base, &c.path),
        ScorerConfig::LmJudge(c) => c.path = resolve(base, &c.path),
        ScorerConfig::Human(h) => resolve_scorer(base, &mut h.base),
        ScorerConfig::Ensemble(e) => {
            for m in &mut e.members {
                resolve_scorer(base, &mut m.scorer);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
