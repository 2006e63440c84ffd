//! The prompt set: a data file or a built-in task, the run's train/held-out split, a limit;
//! and how a prompt is shown to a policy (token ids) and to a scorer ([`ScoreInput`]) — the same
//! way the online loop does, so eval rewards are comparable with the run's.

use rlhf_core::SampleId;
use rlhf_data::{LoadOptions, Prompt, PromptRecord};
use rlhf_model::Tokenizer;
use rlhf_reward::ScoreInput;

use crate::config::{PromptsConfig, SplitChoice};
use crate::error::EvalError;

/// Loads the configured prompts (split, then limited).
pub fn load(config: &PromptsConfig) -> Result<Vec<PromptRecord>, EvalError> {
    let records = match (&config.builtin, &config.path) {
        (Some(task), _) => {
            let task: rlhf_data::BuiltinTask =
                task.parse().map_err(|e: rlhf_data::DataError| {
                    EvalError::config("prompts.builtin", e.to_string())
                })?;
            rlhf_data::builtin_task(task, config.builtin_prompts, config.seed)
        }
        (None, Some(path)) => {
            let report = rlhf_data::load_prompts(
                path,
                LoadOptions {
                    skip_malformed: config.skip_malformed,
                },
            )
            .map_err(|e| EvalError::Data(e.to_string()))?;
            if !report.skipped.is_empty() {
                tracing::warn!(
                    path = %path.display(),
                    skipped = report.skipped.len(),
                    "malformed prompt records skipped"
                );
            }
            report.records
        }
        (None, None) => return Err(EvalError::config("prompts.path", "set `path` or `builtin`")),
    };
    let mut records = match config.split {
        SplitChoice::All => records,
        choice => {
            let (train, heldout) = rlhf_data::split(records, config.heldout_fraction, config.seed)
                .map_err(|e| EvalError::config("prompts.heldout_fraction", e.to_string()))?;
            if choice == SplitChoice::Train {
                train
            } else {
                heldout
            }
        }
    };
    if let Some(limit) = config.limit {
        records.truncate(limit);
    }
    if records.is_empty() {
        return Err(EvalError::Data(
            "no prompts to evaluate (an empty dataset or an empty split)".into(),
        ));
    }
    Ok(records)
}

/// A prompt's token ids as the policy sees it: a plain prompt without chat as text (with the
/// tokenizer's special tokens), anything else through the chat template with the generation
/// prompt — what rollout workers do.
pub fn render(tok: &Tokenizer, record: &PromptRecord, chat: bool) -> Result<Vec<u32>, String> {
    let ids = match (&record.prompt, chat) {
        (Prompt::Text(text), false) => tok.encode(text, true),
        (prompt, _) => tok.encode_chat(&prompt.to_messages(), true),
    }
    .map_err(|e| format!("prompt `{}`: {e}", record.id))?;
    if ids.is_empty() {
        return Err(format!("prompt `{}` renders to no tokens", record.id));
    }
    Ok(ids)
}

/// What a scorer sees of sample `index` of `record` (as the coordinator builds it).
pub fn score_input(record: &PromptRecord, chat: bool, index: u32, completion: &str) -> ScoreInput {
    let messages = match (&record.prompt, chat) {
        (Prompt::Text(_), false) => None,
        (p, _) => Some(p.to_messages()),
    };
    ScoreInput {
        sample_id: SampleId {
            iteration: 0,
            prompt_id: record.id.clone(),
            sample_index: index,
        },
        prompt: record.prompt.display_text(),
        messages,
        completion: completion.to_owned(),
        answer: record.answer.clone(),
        metadata: record.metadata.clone(),
        evaluation: true,
        policy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_split_and_limit() -> Result<(), EvalError> {
        let base = PromptsConfig {
            path: None,
            builtin: Some("letters".into()),
            builtin_prompts: 64,
            seed: 1,
            split: SplitChoice::All,
            heldout_fraction: 0.25,
            limit: None,
            skip_malformed: false,
        };
        let all = load(&base)?;
        let train = load(&PromptsConfig {
            split: SplitChoice::Train,
            ..base.clone()
        })?;
        let heldout = load(&PromptsConfig {
            split: SplitChoice::Heldout,
            ..base.clone()
        })?;
        assert_eq!(all.len(), 64);
        assert_eq!(train.len() + heldout.len(), 64);
        assert!(heldout.iter().all(|r| !train.iter().any(|t| t.id == r.id)));
        // The same split as the run's (rlhf_data::split with the run's seed).
        let (_, expected) =
            rlhf_data::split(all.clone(), 0.25, 1).map_err(|e| EvalError::Data(e.to_string()))?;
        assert_eq!(heldout, expected);
        let limited = load(&PromptsConfig {
            limit: Some(5),
            ..base
        })?;
        assert_eq!(limited[..], all[..5]);
        Ok(())
    }

    #[test]
    fn score_inputs_match_the_loop() {
        let mut r = PromptRecord::new("p1", "Write the letter a");
        r.answer = Some("a".into());
        let chat = score_input(&r, true, 3, "a a");
        assert_eq!(chat.sample_id.sample_index, 3);
        assert_eq!(chat.messages.as_ref().map(Vec::len), Some(1));
        assert_eq!(chat.answer.as_deref(), Some("a"));
        assert_eq!(score_input(&r, false, 0, "a").messages, None);
    }
}
