//! Shared helpers of the integration tests: the fixture checkpoint, a small config, and a
//! "trained" policy made by a few real SFT steps on the `letters` task.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use rlhf_core::ChatMessage;
use rlhf_eval::{
    EvalConfig, GenerationConfig, NamedScorer, OutputConfig, PolicyConfig, PromptsConfig,
    SplitChoice, StatsConfig,
};
use rlhf_learner::sft::{SftSettings, tokenize_example, train_sft};
use rlhf_model::{CpuAutodiff, Tokenizer, Transformer};
use rlhf_reward::{RuleConfig, ScorerConfig};

/// The quickstart's initial policy: a tiny random-initialised Qwen2.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2")
}

pub fn policy(name: &str, path: &Path) -> PolicyConfig {
    PolicyConfig {
        name: name.into(),
        path: path.to_path_buf(),
    }
}

/// The `letters` rule scorer.
pub fn letters_scorer() -> NamedScorer {
    NamedScorer {
        name: Some("letters".into()),
        scorer: ScorerConfig::Rule(RuleConfig {
            name: "letters".into(),
        }),
    }
}

/// `prompts` prompts of the built-in `letters` task, `n` samples each, short completions.
pub fn config(policies: Vec<PolicyConfig>, prompts: usize, n: u32) -> EvalConfig {
    EvalConfig {
        device: String::new(),
        precision: String::new(),
        policies,
        prompts: Some(PromptsConfig {
            path: None,
            builtin: Some("letters".into()),
            builtin_prompts: prompts,
            seed: 1,
            split: SplitChoice::All,
            heldout_fraction: 0.0,
            limit: None,
            skip_malformed: false,
        }),
        generation: GenerationConfig {
            samples_per_prompt: n,
            max_new_tokens: 12,
            batch_prompts: 4,
            ..GenerationConfig::default()
        },
        scorers: vec![letters_scorer()],
        judge: None,
        ranking: None,
        reference: None,
        stats: StatsConfig {
            bootstrap_resamples: 500,
            ..StatsConfig::default()
        },
        output: OutputConfig::default(),
    }
}

/// Fine-tunes the fixture on "<phrasing> <letter>" → "<letter> × 8" (a real SFT run with the
/// learner's code) and saves it as a Hugging Face checkpoint in `out`.
pub fn train_letters_policy(out: &Path) -> anyhow::Result<()> {
    let base = fixture();
    let tok = Tokenizer::from_dir(&base)?;
    let mut examples = Vec::new();
    for letter in ["a", "e", "o", "t"] {
        for phrasing in ["Write the letter", "Repeat the letter", "Type the letter"] {
            let answer = [letter; 8].join(" ");
            let messages = [
                ChatMessage::new("user", format!("{phrasing} {letter}")),
                ChatMessage::new("assistant", answer),
            ];
            examples.push(tokenize_example(&tok, &messages).map_err(anyhow::Error::msg)?);
        }
    }
    let policy = Transformer::<CpuAutodiff>::load(&base, &Default::default())?;
    let settings = SftSettings {
        lr: 0.01,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        batch_size: examples.len(),
        epochs: 40,
        max_len: 256,
        gradient_checkpointing: false,
    };
    let (policy, report) = train_sft(policy, &examples, settings, |_, _, _| {})?;
    anyhow::ensure!(
        report.last_loss < report.first_loss * 0.3,
        "SFT did not learn: loss {} -> {}",
        report.first_loss,
        report.last_loss
    );
    policy.valid().save_pretrained(out, Some(&base))?;
    Ok(())
}
