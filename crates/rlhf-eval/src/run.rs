//! [`run_eval`]: loads the prompts, scorers, judge and reference, then for each policy in turn
//! samples, scores, measures lengths, KL and ranking accuracy (one policy in memory at a
//! time), then computes the win rates and writes the report.

use std::path::Path;

use rlhf_data::PromptRecord;
use rlhf_reward::{JudgeScorer, LmJudgeScorer, PairJudge, RewardError};
use serde_json::{Value, json};

use crate::cache::{Cache, fingerprint, key_of};
use crate::config::EvalConfig;
use crate::error::EvalError;
use crate::report::{EvalReport, PolicyReport, Settings, WorkCounts};
use crate::sample::{Policy, PromptSamples};
use crate::scoring::BuiltScorer;
use crate::stats::Bootstrap;
use crate::summary::ScoreGrid;
use crate::{pairwise, prompts, ranking, sample, scoring, summary};

/// What a policy's evaluation keeps for the win rates and `samples.jsonl`.
struct Kept {
    samples: Vec<PromptSamples>,
    grids: Vec<(String, ScoreGrid)>,
    reference: Option<Vec<Vec<f64>>>,
}

/// Runs an evaluation. `progress` receives one line per step (loading, each generation batch,
/// each scorer, each judged pair). With `output.dir` set, writes `report.json`, `report.txt`
/// and `samples.jsonl` there and caches results under `cache/`, so a rerun after an
/// interruption skips finished work.
pub async fn run_eval(
    config: &EvalConfig,
    mut progress: impl FnMut(&str) + Send,
) -> Result<EvalReport, EvalError> {
    config.validate()?;
    let progress: &mut (dyn FnMut(&str) + Send) = &mut progress;
    let boot = Bootstrap {
        resamples: config.stats.bootstrap_resamples,
        seed: config.stats.seed,
        level: config.stats.level,
    };
    if let Some(dir) = &config.output.dir {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    }
    let mut cache = match (&config.output.dir, config.output.cache) {
        (Some(dir), true) => Cache::open(&dir.join("cache"))?,
        _ => Cache::disabled(),
    };
    let mut work = WorkCounts::default();
    let records: Vec<PromptRecord> = match &config.prompts {
        Some(p) => prompts::load(p)?,
        None => vec![],
    };
    let group_of: Vec<Option<String>> = records.iter().map(|r| r.group.clone()).collect();
    let scorers = build_scorers(config)?;
    // Pair judges: (judge, cache fingerprint, win-rate label).
    let mut judges: Vec<(Box<dyn PairJudge>, String, String)> = Vec::new();
    if let Some(c) = config.llm_judge() {
        judges.push((
            Box::new(JudgeScorer::from_config(&c, "judge.llm.")?),
            key_of(&c),
            format!("llm:{}", c.model),
        ));
    }
    if let Some(c) = config.local_judge() {
        judges.push((
            Box::new(LmJudgeScorer::load_at(&c, None, "judge.local.")?),
            // The judge's checkpoint by content (or metadata, as `output.fingerprint` says).
            key_of(&json!({
                "local": c,
                "weights": fingerprint(&c.path, config.output.fingerprint)?,
            })),
            format!("local:{}", c.path.display()),
        ));
    }
    let how = config.output.fingerprint;
    let device = (config.device()?, config.precision()?);
    let reference = match &config.reference {
        Some(r) => {
            progress(&format!("loading the reference from {}", r.path.display()));
            Some(Policy::load("reference", &r.path, how, device).await?)
        }
        None => None,
    };
    let chat = config.generation.chat;
    let pref = match &config.ranking {
        Some(r) => {
            let pairs = ranking::load_pairs(&r.path, r.limit)?;
            let chat = r.chat.unwrap_or(chat);
            let reference_logps = match &reference {
                Some(m) => Some(
                    ranking::model_logps(
                        m,
                        &pairs,
                        chat,
                        r.max_len,
                        r.batch_size,
                        &mut cache,
                        &mut work,
                        progress,
                    )
                    .await?,
                ),
                None => None,
            };
            Some((r, pairs, chat, reference_logps))
        }
        None => None,
    };
    progress(&format!(
        "{} prompts × {} samples, {} policies, {} scorers",
        records.len(),
        config.generation.samples_per_prompt,
        config.policies.len(),
        scorers.len()
    ));

    let all: Vec<usize> = (0..records.len()).collect();
    let mut reports = Vec::with_capacity(config.policies.len());
    let mut kept = Vec::with_capacity(config.policies.len());
    for pc in &config.policies {
        progress(&format!(
            "loading policy `{}` from {}",
            pc.name,
            pc.path.display()
        ));
        let policy = Policy::load(&pc.name, &pc.path, how, device).await?;
        let mut report = PolicyReport {
            name: pc.name.clone(),
            path: pc.path.display().to_string(),
            fingerprint: policy.fingerprint.clone(),
            samples: 0,
            rewards: vec![],
            length: None,
            kl: None,
            ranking: None,
            groups: vec![],
        };
        let mut keep = Kept {
            samples: vec![],
            grids: vec![],
            reference: None,
        };
        if !records.is_empty() {
            let g = &config.generation;
            let samples =
                sample::generate(&policy, &records, g, &mut cache, &mut work, progress).await?;
            for s in &scorers {
                let grid = scoring::score(
                    s,
                    &pc.name,
                    &records,
                    chat,
                    &samples,
                    g.batch_prompts,
                    &mut cache,
                    &mut work,
                    progress,
                )
                .await?;
                keep.grids.push((s.name.clone(), grid));
            }
            report.samples = samples.iter().map(|p| p.samples.len()).sum();
            report.rewards = keep
                .grids
                .iter()
                .map(|(n, grid)| summary::rewards(n, grid, &all, &boot))
                .collect();
            report.length = Some(summary::lengths(&samples, &all));
            report.groups = summary::groups(&group_of, &samples, &keep.grids, &boot);
            if let (Some(r), Some(rc)) = (&reference, &config.reference) {
                let (pv, rv) = (
                    policy.model.config().vocab_size,
                    r.model.config().vocab_size,
                );
                if pv != rv {
                    return Err(EvalError::model(
                        &pc.name,
                        format!(
                            "vocabulary of {pv} tokens, the reference's has {rv}: KL needs a shared tokenizer"
                        ),
                    ));
                }
                let lr = sample::reference_logps(r, &samples, rc.batch_size, &mut cache, &mut work)
                    .await?;
                report.kl = summary::kl(&samples, &lr, &boot);
                progress(&format!("policy `{}`: KL to the reference", pc.name));
                keep.reference = Some(lr);
            }
            keep.samples = samples;
        }
        if let Some((r, pairs, chat, reference_logps)) = &pref {
            let lp = ranking::model_logps(
                &policy,
                pairs,
                *chat,
                r.max_len,
                r.batch_size,
                &mut cache,
                &mut work,
                progress,
            )
            .await?;
            report.ranking = Some(ranking::summarize(&lp, reference_logps.as_deref(), &boot));
        }
        reports.push(report);
        kept.push(keep);
    }

    let mut win_rates = Vec::new();
    if !records.is_empty() {
        let index = |name: &str| config.policies.iter().position(|p| p.name == name);
        for (a, b) in config.pairs() {
            let (Some(ia), Some(ib)) = (index(&a), index(&b)) else {
                continue;
            };
            for name in config.judge_scorers() {
                let Some(s) = scorers.iter().position(|s| s.name == name) else {
                    continue;
                };
                win_rates.push(pairwise::from_scores(
                    (&a, &b, &name),
                    &kept[ia].grids[s].1,
                    &kept[ib].grids[s].1,
                    &boot,
                ));
            }
            for (judge, fp, label) in &judges {
                progress(&format!("judging `{a}` against `{b}` with {label}"));
                let grid = pairwise::judge(
                    judge.as_ref(),
                    fp,
                    &records,
                    chat,
                    &kept[ia].samples,
                    &kept[ib].samples,
                    &mut cache,
                    &mut work,
                )
                .await?;
                win_rates.push(pairwise::from_comparisons((&a, &b, label), &grid, &boot));
            }
        }
    }

    let report = EvalReport {
        settings: settings(config, records.len(), &scorers),
        policies: reports,
        win_rates,
        work,
    };
    if let Some(dir) = &config.output.dir {
        write(&dir.join("report.json"), &report.to_json())?;
        write(&dir.join("report.txt"), &report.to_table())?;
        write(
            &dir.join("samples.jsonl"),
            &samples_jsonl(config, &records, &kept),
        )?;
        progress(&format!("wrote {}", dir.join("report.json").display()));
    }
    Ok(report)
}

fn build_scorers(config: &EvalConfig) -> Result<Vec<BuiltScorer>, EvalError> {
    let registry = rlhf_reward::builtin_rules();
    config
        .scorers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let scorer = s.scorer.build(&registry).map_err(|e| match e {
                RewardError::Config { field, message } => {
                    EvalError::config(format!("scorers[{i}].scorer.{field}"), message)
                }
                other => EvalError::Reward(other),
            })?;
            let name = s.effective_name();
            Ok(BuiltScorer {
                fingerprint: key_of(&json!({"name": name, "scorer": s.scorer})),
                name,
                scorer,
            })
        })
        .collect()
}

fn settings(config: &EvalConfig, prompts: usize, scorers: &[BuiltScorer]) -> Settings {
    let g = &config.generation;
    let s = &config.stats;
    let mut notes = Vec::new();
    if config.reference.is_some()
        && prompts > 0
        && (g.temperature != 1.0 || g.top_k != 0 || g.top_p < 1.0)
    {
        notes.push(
            "samples were not drawn from π itself (temperature ≠ 1 or truncation), so the k1 KL \
             estimate is biased for KL(π‖π_ref)"
                .to_owned(),
        );
    }
    Settings {
        prompts,
        generation: g.clone(),
        scorers: scorers.iter().map(|s| s.name.clone()).collect(),
        reference: config
            .reference
            .as_ref()
            .map(|r| r.path.display().to_string()),
        ranking_data: config
            .ranking
            .as_ref()
            .map(|r| r.path.display().to_string()),
        ci_level: s.level,
        ci_method: format!(
            "{:.0}% percentile bootstrap over prompts (over pairs for ranking accuracy), {} resamples, seed {}",
            s.level * 100.0,
            s.bootstrap_resamples,
            s.seed
        ),
        notes,
    }
}

fn samples_jsonl(config: &EvalConfig, records: &[PromptRecord], kept: &[Kept]) -> String {
    let mut out = String::new();
    for (pc, k) in config.policies.iter().zip(kept) {
        for (i, p) in k.samples.iter().enumerate() {
            for (j, s) in p.samples.iter().enumerate() {
                let scores: serde_json::Map<String, Value> = k
                    .grids
                    .iter()
                    .map(|(name, grid)| {
                        let v = match &grid[i][j] {
                            Ok(v) => json!(v),
                            Err(kind) => json!({ "error": kind }),
                        };
                        (name.clone(), v)
                    })
                    .collect();
                let line = json!({
                    "policy": pc.name, "prompt_id": records[i].id, "sample_index": j,
                    "text": s.text, "tokens": s.tokens(), "finished_by_eos": s.finished,
                    "logprob": s.logprob, "scores": scores,
                    "reference_logprob": k.reference.as_ref().map(|r| r[i][j]),
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
    }
    out
}

fn write(path: &Path, text: &str) -> Result<(), EvalError> {
    std::fs::write(path, text).map_err(|e| EvalError::io(path, e))
}
