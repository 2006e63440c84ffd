//! The `letters` task relies on facts about the quickstart tokenizer
//! (`tests/fixtures/hf-tiny/tiny-qwen2/tokenizer.json` at the workspace root): every letter it
//! asks for is a single token, bare and after a space. Checked here against the real file.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use rlhf_data::task::LETTERS;
use rlhf_data::{BuiltinTask, Prompt, builtin_reward, builtin_task};

#[test]
fn letters_are_single_tokens_of_the_quickstart_tokenizer() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf-tiny/tiny-qwen2/tokenizer.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let vocab = json["model"]["vocab"].as_object().context("model.vocab")?;
    ensure!(vocab.len() == 512, "vocab size {}", vocab.len());
    for letter in LETTERS {
        // Byte-level BPE writes a leading space as `Ġ`.
        for token in [letter.to_string(), format!("\u{0120}{letter}")] {
            ensure!(
                vocab.contains_key(&token),
                "{token:?} is not a single token"
            );
        }
    }
    Ok(())
}

#[test]
fn every_generated_prompt_is_solvable() -> Result<()> {
    for name in ["letters-1", "letters", "letters-6"] {
        let task: BuiltinTask = name.parse()?;
        for record in builtin_task(task, 30, 1) {
            let answer = record.answer.clone().context("answer")?;
            let Prompt::Text(prompt) = &record.prompt else {
                anyhow::bail!("text prompt")
            };
            ensure!(prompt.ends_with(&answer), "{prompt}");
            ensure!(builtin_reward(task, &answer.repeat(8), &answer) == 1.0);
            ensure!(builtin_reward(task, "", &answer) == 0.0);
        }
    }
    Ok(())
}
