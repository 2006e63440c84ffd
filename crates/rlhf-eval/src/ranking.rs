//! Ranking accuracy on a preference dataset ("Preference Learning Algorithms Do Not Learn
//! Preference Rankings", Chen et al. 2024): the fraction of pairs where the policy gives the
//! chosen answer a higher log-likelihood than the rejected one, and the reference-adjusted
//! version, log π(y_c)/π_ref(y_c) > log π(y_r)/π_ref(y_r) — the ranking of DPO's implicit
//! reward. Log-likelihoods are summed over the answer's tokens, prompt masked (not
//! length-normalised); an exact tie counts ½.
//!
//! The dataset is JSONL, one pair per line: `prompt` (a string) or `messages` (a list of
//! `{role, content}`), plus `chosen` and `rejected`, each a string or a message list ending with
//! the assistant's answer (then, without `prompt`/`messages`, the conversation before the answer
//! is the prompt, and must be the same on both sides). `id` is optional (default: line number).

use std::path::Path;

use rlhf_core::ChatMessage;
use rlhf_data::Prompt;
use rlhf_learner::trainer::Seq;
use rlhf_model::Tokenizer;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cache::{Cache, Kind, key_of};
use crate::error::EvalError;
use crate::pairwise::outcome;
use crate::report::{RankingSummary, WorkCounts};
use crate::sample::{Policy, sequence_logps};
use crate::stats::{Bootstrap, mean};

/// One preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    /// From the file, or the 0-based line number.
    pub id: String,
    /// What was asked.
    pub prompt: Prompt,
    /// The preferred answer.
    pub chosen: String,
    /// The dispreferred answer.
    pub rejected: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Answer {
    Text(String),
    Messages(Vec<ChatMessage>),
}

/// A line; other fields (scores, sources) are ignored.
#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    chosen: Answer,
    rejected: Answer,
}

/// Splits an answer into (the conversation before it, its text).
fn split_answer(a: Answer, field: &str) -> Result<(Vec<ChatMessage>, String), String> {
    match a {
        Answer::Text(t) => Ok((vec![], t)),
        Answer::Messages(mut m) => match m.pop() {
            Some(last) if last.role == "assistant" => Ok((m, last.content)),
            _ => Err(format!(
                "`{field}`: the last message must be the assistant's answer"
            )),
        },
    }
}

fn parse_line(text: &str, line_no: usize) -> Result<PreferencePair, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let id = match line.id {
        None | Some(Value::Null) => line_no.to_string(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    let (before_c, chosen) = split_answer(line.chosen, "chosen")?;
    let (before_r, rejected) = split_answer(line.rejected, "rejected")?;
    let prompt = match (line.prompt, line.messages) {
        (Some(_), Some(_)) => return Err("set only one of `prompt` and `messages`".into()),
        (Some(p), None) => Prompt::Text(p),
        (None, Some(m)) if !m.is_empty() => Prompt::Messages(m),
        _ if !before_c.is_empty() && before_c == before_r => Prompt::Messages(before_c),
        _ if !before_c.is_empty() => {
            return Err("`chosen` and `rejected` continue different conversations".into());
        }
        _ => return Err("missing: `prompt`, `messages`, or message lists in `chosen`".into()),
    };
    Ok(PreferencePair {
        id,
        prompt,
        chosen,
        rejected,
    })
}

/// Reads a preference dataset; errors name the file, the line and the problem.
pub fn load_pairs(path: &Path, limit: Option<usize>) -> Result<Vec<PreferencePair>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|l| pairs.len() >= l) {
            break;
        }
        let pair = parse_line(line, i)
            .map_err(|e| EvalError::Data(format!("{}: line {}: {e}", path.display(), i + 1)))?;
        pairs.push(pair);
    }
    if pairs.is_empty() {
        return Err(EvalError::Data(format!(
            "{}: no preference pairs",
            path.display()
        )));
    }
    Ok(pairs)
}

/// The tokens of (prompt, answer) as a model sees them: through the chat template (the answer
/// is what the full conversation adds after the generation prompt), or as plain text.
pub fn tokenize(tok: &Tokenizer, prompt: &Prompt, answer: &str, chat: bool) -> Result<Seq, String> {
    match (prompt, chat) {
        (Prompt::Text(text), false) => Ok(Seq {
            prompt: tok.encode(text, true).map_err(|e| e.to_string())?,
            completion: tok.encode(answer, false).map_err(|e| e.to_string())?,
            reward: 0.0,
        }),
        (p, _) => {
            let mut messages = p.to_messages();
            messages.push(ChatMessage::new("assistant", answer));
            rlhf_learner::sft::tokenize_example(tok, &messages)
        }
    }
}

/// Summed answer log-probs of one pair under one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    /// log π(chosen | prompt).
    pub chosen: f64,
    /// log π(rejected | prompt).
    pub rejected: f64,
}

/// Accuracy, reference-adjusted accuracy and margin. `policy[i]`/`reference[i]` are None for a
/// skipped pair; the reference-adjusted accuracy uses pairs present under both.
pub fn summarize(
    policy: &[Option<PairLogps>],
    reference: Option<&[Option<PairLogps>]>,
    boot: &Bootstrap,
) -> RankingSummary {
    let plain: Vec<f64> = policy
        .iter()
        .flatten()
        .map(|p| outcome(p.chosen, p.rejected))
        .collect();
    let margins: Vec<f64> = policy
        .iter()
        .flatten()
        .map(|p| p.chosen - p.rejected)
        .collect();
    let adjusted: Option<Vec<f64>> = reference.map(|r| {
        policy
            .iter()
            .zip(r)
            .filter_map(|(p, r)| {
                Some(outcome(
                    p.as_ref()?.chosen - r.as_ref()?.chosen,
                    p.as_ref()?.rejected - r.as_ref()?.rejected,
                ))
            })
            .collect()
    });
    let clusters = |v: &[f64]| v.iter().map(|&x| vec![x]).collect::<Vec<_>>();
    RankingSummary {
        pairs: plain.len(),
        skipped: policy.len() - plain.len(),
        accuracy: mean(&plain),
        accuracy_ci: boot.mean_ci(&clusters(&plain)),
        reference_adjusted: adjusted.as_deref().and_then(mean),
        reference_adjusted_ci: adjusted.as_deref().and_then(|a| boot.mean_ci(&clusters(a))),
        mean_margin: mean(&margins),
    }
}

/// Each pair's log-probs under `model` (None when a side is longer than `max_len` or renders
/// to nothing), through the cache.
#[allow(clippy::too_many_arguments)]
pub async fn model_logps(
    model: &Policy,
    pairs: &[PreferencePair],
    chat: bool,
    max_len: usize,
    batch: usize,
    cache: &mut Cache,
    work: &mut WorkCounts,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Option<PairLogps>>, EvalError> {
    let mut seqs: Vec<Option<[Seq; 2]>> = Vec::with_capacity(pairs.len());
    for p in pairs {
        let side = |answer: &str| {
            tokenize(&model.tokenizer, &p.prompt, answer, chat)
                .map_err(|e| EvalError::Data(format!("preference pair `{}`: {e}", p.id)))
        };
        let (c, r) = (side(&p.chosen)?, side(&p.rejected)?);
        let fits = |s: &Seq| {
            !s.prompt.is_empty()
                && !s.completion.is_empty()
                && s.prompt.len() + s.completion.len() <= max_len
        };
        seqs.push((fits(&c) && fits(&r)).then_some([c, r]));
    }
    let key = |s: &Seq| {
        key_of(
            &json!({"v": 1, "model": model.fingerprint, "prompt": key_of(&s.prompt), "answer": key_of(&s.completion)}),
        )
    };
    let mut values: Vec<[f64; 2]> = vec![[f64::NAN; 2]; pairs.len()];
    let mut todo = Vec::new();
    for (i, pair) in seqs.iter().enumerate() {
        for (side, s) in pair.iter().flatten().enumerate() {
            match cache.get::<f64>(Kind::PairLogps, &key(s)) {
                Some(v) => {
                    work.cached_logps += 1;
                    values[i][side] = v;
                }
                None => todo.push((i, side)),
            }
        }
    }
    for part in todo.chunks(batch.max(1)) {
        let batch_seqs: Vec<Seq> = part
            .iter()
            .filter_map(|&(i, side)| seqs[i].as_ref().map(|s| s[side].clone()))
            .collect();
        let sums = sequence_logps(&model.model, batch_seqs.clone(), batch)
            .await
            .map_err(|e| EvalError::model(&model.name, e))?;
        let mut fresh = Vec::with_capacity(part.len());
        for ((&(i, side), s), v) in part.iter().zip(&batch_seqs).zip(sums) {
            values[i][side] = v;
            fresh.push((key(s), v));
        }
        work.computed_logps += fresh.len() as u64;
        cache.put(Kind::PairLogps, &fresh)?;
    }
    progress(&format!(
        "`{}`: log-likelihoods of {} preference pairs",
        model.name,
        pairs.len()
    ));
    Ok(seqs
        .iter()
        .zip(values)
        .map(|(s, [c, r])| {
            s.as_ref().map(|_| PairLogps {
                chosen: c,
                rejected: r,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: Bootstrap = Bootstrap {
        resamples: 500,
        seed: 1,
        level: 0.95,
    };

    fn lp(chosen: f64, rejected: f64) -> Option<PairLogps> {
        Some(PairLogps { chosen, rejected })
    }

    #[test]
    fn ranking_accuracy_arithmetic() {
        // pair  log π(c)  log π(r)  plain      log π_ref(c)  log π_ref(r)  adjusted (c−rc vs r−rr)
        // 0     −10       −12       1 (c > r)  −9            −14           −1 vs 2    → 0
        // 1     −20       −15       0          −25           −15           5 vs 0     → 1
        // 2     −5        −5        ½ (tie)    −6            −4            1 vs −1    → 1
        // 3     skipped (too long)             −1            −2            not counted
        // 4     −8        −7        0          −8            −7            0 vs 0     → ½
        // plain: (1 + 0 + ½ + 0) / 4 = 0.375; adjusted: (0 + 1 + 1 + ½) / 4 = 0.625;
        // margins: 2, −5, 0, −1 → mean −1.
        let policy = [
            lp(-10., -12.),
            lp(-20., -15.),
            lp(-5., -5.),
            None,
            lp(-8., -7.),
        ];
        let reference = [
            lp(-9., -14.),
            lp(-25., -15.),
            lp(-6., -4.),
            lp(-1., -2.),
            lp(-8., -7.),
        ];
        let s = summarize(&policy, Some(&reference), &BOOT);
        assert_eq!((s.pairs, s.skipped), (4, 1));
        assert_eq!(s.accuracy, Some(0.375));
        assert_eq!(s.reference_adjusted, Some(0.625));
        assert_eq!(s.mean_margin, Some(-1.0));
        assert!(
            s.accuracy_ci
                .is_some_and(|c| c.lo <= 0.375 && 0.375 <= c.hi)
        );
        let no_ref = summarize(&policy, None, &BOOT);
        assert_eq!(
            (no_ref.reference_adjusted, no_ref.reference_adjusted_ci),
            (None, None)
        );
    }

    #[test]
    fn preference_lines() -> Result<(), String> {
        let p = parse_line(r#"{"prompt": "2+2?", "chosen": "4", "rejected": "5"}"#, 0)?;
        assert_eq!((p.id.as_str(), p.chosen.as_str()), ("0", "4"));
        let hh = r#"{"id": 7, "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                    "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}"#;
        let p = parse_line(hh, 3)?;
        assert_eq!(p.id, "7");
        assert_eq!(
            p.prompt,
            Prompt::Messages(vec![ChatMessage::new("user", "hi")])
        );
        assert_eq!(p.rejected, "go away");
        // Other fields (UltraFeedback's scores, a source) are ignored.
        let extra = r#"{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 9}"#;
        assert_eq!(parse_line(extra, 0)?.prompt, Prompt::Text("q".into()));
        for (bad, needle) in [
            (r#"{"prompt": "q", "chosen": "a"}"#, "rejected"),
            (r#"{"chosen": "a", "rejected": "b"}"#, "missing"),
            (
                r#"{"prompt": "q", "messages": [], "chosen": "a", "rejected": "b"}"#,
                "only one",
            ),
            (
                r#"{"chosen": [{"role": "user", "content": "x"}], "rejected": "b"}"#,
                "assistant",
            ),
        ] {
            let e = parse_line(bad, 0).err().unwrap_or_default();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        Ok(())
    }
}
