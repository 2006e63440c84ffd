//! Built-in tasks: prompt sets generated in code whose reward a rule computes, so that the
//! quickstart needs no files, no reward model and no network.
//!
//! # The `letters` task
//!
//! Each prompt asks for one letter — "Write the letter a", "Repeat the letter e", "Type the letter
//! o" — with `answer` set to that letter and `group` too (so metrics can be split per letter).
//! The reward of a completion is
//!
//! ```text
//! reward = (non-whitespace characters equal to the letter) / max(non-whitespace characters, 8)
//! ```
//!
//! so `"aaaaaaaa"`, `"a a a a a a a a"` and `"aaaaaaaaaaaa"` score 1, `"aaaa"` scores 0.5, and any
//! other character dilutes the score. Why this shape:
//! - **Dense partial credit.** A random-initialised policy emits near-uniform tokens; the tiny
//!   byte-level BPE vocabulary (512 tokens, `tests/fixtures/hf-tiny/tiny-qwen2`) has many tokens
//!   that contain the letter ("at", "ation", "Ġa", ...). Measured with that tokenizer on
//!   uniformly random completions (4000 per letter), the reward averages 0.05–0.09 per letter,
//!   and the best of 4 samples beats the worst by 0.075–0.11 on average at 16 tokens (0.055–0.08
//!   at 32) — so best-vs-worst-of-n DPO pairs carry signal from the first iteration, and the
//!   optimum (1.0) is far above the start.
//! - **Easy targets.** Every letter used is a single token both bare (`a`) and after a space
//!   (`Ġa`); whitespace is ignored, so both count fully.
//! - **No shortcuts.** The floor of 8 in the denominator means stopping early does not pay:
//!   one `a` then end-of-sequence scores 1/8. Rollouts need `max_new_tokens >= 8` for the
//!   optimum to be reachable.
//! - **Conditional.** The letter is the last token of the user message, so the policy must read
//!   the prompt; an unconditional policy that always writes one letter averages `1/k` over `k`
//!   letters, a conditional one reaches 1. The prompt's letter sits at a fixed distance from the
//!   start of the answer under the ChatML template, which keeps the task learnable by a tiny model.
//!
//! Names: `letters` uses 4 letters (a, e, o, t); `letters-K` uses the first K of
//! a, e, o, t, n, r (K in 1..=6), `letters-1` being the unconditional warm-up.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::DataError;
use crate::hash::SplitMix64;
use crate::record::{Prompt, PromptRecord};

/// The letters of the `letters` task, in the order `letters-K` takes them.
pub const LETTERS: [char; 6] = ['a', 'e', 'o', 't', 'n', 'r'];

/// Every built-in task name [`BuiltinTask::from_str`] accepts.
pub const BUILTIN_TASK_NAMES: [&str; 7] = [
    "letters",
    "letters-1",
    "letters-2",
    "letters-3",
    "letters-4",
    "letters-5",
    "letters-6",
];

/// How many letters `letters` (without `-K`) uses.
pub const DEFAULT_LETTER_COUNT: u8 = 4;

/// The denominator floor of the `letters` reward: completions shorter than this (in
/// non-whitespace characters) cannot score 1.
pub const LETTERS_MIN_CHARS: usize = 8;

/// The instructions a `letters` prompt is phrased with (the letter follows, after a space).
const PHRASINGS: [&str; 3] = ["Write the letter", "Repeat the letter", "Type the letter"];

/// The metadata key naming the built-in task a record belongs to (for the scorer).
pub const TASK_METADATA_KEY: &str = "task";

/// A built-in task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinTask {
    /// Write the requested letter (see the module docs).
    Letters {
        /// How many different letters the prompts ask for (1..=6).
        count: u8,
    },
}

impl BuiltinTask {
    /// The letters this task asks for.
    pub fn letters(self) -> &'static [char] {
        match self {
            BuiltinTask::Letters { count } => &LETTERS[..usize::from(count)],
        }
    }
}

impl FromStr for BuiltinTask {
    type Err = DataError;

    fn from_str(name: &str) -> Result<Self, DataError> {
        let unknown = || {
            DataError::invalid(
                "built-in task",
                format!("unknown task `{name}` (known: letters, letters-1 .. letters-6)"),
            )
        };
        if name == "letters" {
            return Ok(BuiltinTask::Letters {
                count: DEFAULT_LETTER_COUNT,
            });
        }
        let count: u8 = name
            .strip_prefix("letters-")
            .and_then(|k| k.parse().ok())
            .ok_or_else(unknown)?;
        if count == 0 || usize::from(count) > LETTERS.len() {
            return Err(unknown());
        }
        Ok(BuiltinTask::Letters { count })
    }
}

impl fmt::Display for BuiltinTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuiltinTask::Letters { count } if *count == DEFAULT_LETTER_COUNT => {
                write!(f, "letters")
            }
            BuiltinTask::Letters { count } => write!(f, "letters-{count}"),
        }
    }
}

/// Generates `n_prompts` prompts of a built-in task. Letters are balanced (prompt `i` asks for
/// letter `i mod k` before shuffling), the order and phrasings are drawn from `seed`. Ids are
/// `"<task>-<i>"`; `metadata.task` names the task for the scorer.
pub fn builtin_task(task: BuiltinTask, n_prompts: usize, seed: u64) -> Vec<PromptRecord> {
    let letters = task.letters();
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<char> = (0..n_prompts).map(|i| letters[i % letters.len()]).collect();
    rng.shuffle(&mut order);
    order
        .into_iter()
        .enumerate()
        .map(|(i, letter)| {
            let phrasing = PHRASINGS[rng.below(PHRASINGS.len() as u64) as usize];
            let mut metadata = Map::new();
            metadata.insert(TASK_METADATA_KEY.into(), Value::String(task.to_string()));
            PromptRecord {
                id: format!("{task}-{i}"),
                prompt: Prompt::Text(format!("{phrasing} {letter}")),
                answer: Some(letter.to_string()),
                group: Some(letter.to_string()),
                metadata,
            }
        })
        .collect()
}

/// The rule reward of a built-in task, in `[0, 1]`, for a completion (decoded text, special
/// tokens removed) and the record's `answer`. For `letters`, `answer` must be one character;
/// anything else scores 0.
pub fn builtin_reward(task: BuiltinTask, completion: &str, answer: &str) -> f64 {
    match task {
        BuiltinTask::Letters { .. } => letters_reward(completion, answer),
    }
}

fn letters_reward(completion: &str, answer: &str) -> f64 {
    let mut chars = answer.trim().chars();
    let (Some(target), None) = (chars.next(), chars.next()) else {
        return 0.0;
    };
    let (total, hits) = completion
        .chars()
        .filter(|c| !c.is_whitespace())
        .fold((0usize, 0usize), |(total, hits), c| {
            (total + 1, hits + usize::from(c == target))
        });
    hits as f64 / total.max(LETTERS_MIN_CHARS) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_table() {
        let cases: [(&str, &str, f64); 12] = [
            ("aaaaaaaa", "a", 1.0),
            ("a a a a a a a a", "a", 1.0),
            ("aaaaaaaaaaaa", "a", 1.0),
            ("aaaa", "a", 0.5),
            ("a", "a", 0.125),
            ("", "a", 0.0),
            ("   \n", "a", 0.0),
            ("aaaabbbb", "a", 0.5),
            ("aaaaaaaaab", "a", 0.9),
            ("AAAAAAAA", "a", 0.0),
            ("eeeeeeee", "a", 0.0),
            ("aaaaaaaa", "ab", 0.0),
        ];
        let task = BuiltinTask::Letters { count: 4 };
        for (completion, answer, expected) in cases {
            let reward = builtin_reward(task, completion, answer);
            assert!(
                (reward - expected).abs() < 1e-12,
                "{completion:?}/{answer:?}: {reward}"
            );
        }
    }

    #[test]
    fn reward_is_bounded_and_ranks_better_answers_higher() {
        let task = BuiltinTask::Letters { count: 4 };
        let ladder = [
            "xyz the model",
            "at an ation",
            "a at aa",
            "aaaaaa b",
            "aaaaaaaa",
        ];
        let rewards: Vec<f64> = ladder
            .iter()
            .map(|c| builtin_reward(task, c, "a"))
            .collect();
        assert!(rewards.windows(2).all(|w| w[0] < w[1]), "{rewards:?}");
        assert!(rewards.iter().all(|r| (0.0..=1.0).contains(r)));
    }

    #[test]
    fn task_names_round_trip() -> Result<(), DataError> {
        for name in ["letters", "letters-1", "letters-6"] {
            assert_eq!(name.parse::<BuiltinTask>()?.to_string(), name);
        }
        assert_eq!("letters-4".parse::<BuiltinTask>()?.to_string(), "letters");
        for bad in ["", "letter", "letters-0", "letters-7", "letters-x", "math"] {
            assert!(bad.parse::<BuiltinTask>().is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn prompts_are_balanced_seeded_and_answerable() -> Result<(), DataError> {
        let task: BuiltinTask = "letters".parse()?;
        let records = builtin_task(task, 40, 9);
        assert_eq!(records.len(), 40);
        for letter in task.letters() {
            let n = records
                .iter()
                .filter(|r| r.answer.as_deref() == Some(&letter.to_string()))
                .count();
            assert_eq!(n, 10, "letter {letter}");
        }
        for record in &records {
            let Prompt::Text(text) = &record.prompt else {
                panic!("letters prompts are plain text");
            };
            let answer = record.answer.clone().unwrap_or_default();
            assert!(text.ends_with(&format!(" {answer}")), "{text}");
            assert_eq!(record.group.as_deref(), Some(answer.as_str()));
            assert_eq!(
                record.metadata.get(TASK_METADATA_KEY),
                Some(&Value::from("letters"))
            );
            let perfect = answer.repeat(LETTERS_MIN_CHARS);
            assert_eq!(builtin_reward(task, &perfect, &answer), 1.0);
        }
        assert_eq!(
            builtin_task(task, 40, 9),
            records,
            "same seed, same prompts"
        );
        assert_ne!(builtin_task(task, 40, 10), records);
        let ids: std::collections::HashSet<_> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 40);
        Ok(())
    }
}

#[cfg(test)]
mod names_tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_and_round_trips() {
        for name in BUILTIN_TASK_NAMES {
            let task: BuiltinTask = name.parse().expect("listed names parse");
            let again: BuiltinTask = task.to_string().parse().expect("display parses");
            assert_eq!(again, task, "{name}");
        }
    }
}
