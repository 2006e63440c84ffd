//! The reward-model scorer against the scores transformers computed for the tiny Llama reward
//! model fixture, through both input paths (chat messages and rendered prompt text), at several
//! batch sizes.

use std::path::PathBuf;

use anyhow::Context;
use rlhf_core::ChatMessage;
use rlhf_reward::{
    RewardModelConfig, RewardModelScorer, RuleRegistry, ScoreError, ScoreInput, Scorer,
    ScorerConfig,
};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-llama-rm")
}

/// The reference texts' completions and transformers' scores.
fn reference() -> anyhow::Result<Vec<(String, f64)>> {
    let text = std::fs::read_to_string(fixture().join("reference.json"))?;
    let json: Value = serde_json::from_str(&text)?;
    let prefix = "<|im_start|>user\nWhich is better?<|im_end|>\n<|im_start|>assistant\n";
    let texts = json["texts"].as_array().context("texts")?;
    let scores = json["scores"].as_array().context("scores")?;
    texts
        .iter()
        .zip(scores)
        .map(|(t, s)| {
            let t = t.as_str().context("text")?;
            let completion = t
                .strip_prefix(prefix)
                .and_then(|c| c.strip_suffix("<|im_end|>\n"))
                .context("unexpected reference text layout")?;
            Ok((completion.to_owned(), s.as_f64().context("score")?))
        })
        .collect()
}

#[tokio::test]
async fn agrees_with_transformers() -> anyhow::Result<()> {
    let reference = reference()?;
    let prompt = "<|im_start|>user\nWhich is better?<|im_end|>\n<|im_start|>assistant\n";
    let messages = vec![ChatMessage::new("user", "Which is better?")];
    // Chat path: messages + the completion as the assistant's turn, through the chat template.
    // Text path: the rendered prompt plus the completion with its end-of-turn marker.
    let mut inputs = Vec::new();
    for (k, (completion, _)) in reference.iter().enumerate() {
        inputs.push(
            ScoreInput::new("chat", prompt, completion.as_str())
                .with_messages(messages.clone())
                .with_sample_index(k as u32),
        );
    }
    for (k, (completion, _)) in reference.iter().enumerate() {
        inputs.push(
            ScoreInput::new("text", prompt, format!("{completion}<|im_end|>\n"))
                .with_sample_index(k as u32),
        );
    }
    let expected: Vec<f64> = reference
        .iter()
        .chain(&reference)
        .map(|(_, s)| *s)
        .collect();

    for batch_size in [1, 3, 8] {
        let scorer = RewardModelScorer::load(&RewardModelConfig {
            batch_size,
            ..RewardModelConfig::new(fixture())
        })?;
        let out = scorer.score(&inputs).await;
        assert_eq!(out.len(), inputs.len());
        for (k, (r, want)) in out.into_iter().zip(&expected).enumerate() {
            let score = r?;
            assert!(
                (score.value - want).abs() < TOLERANCE,
                "batch_size {batch_size}, input {k}: {} vs transformers {want}",
                score.value
            );
            assert!(
                score.provenance.starts_with("reward_model:"),
                "{}",
                score.provenance
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn too_long_inputs_are_errors_not_truncated() -> anyhow::Result<()> {
    let config = ScorerConfig::RewardModel(RewardModelConfig {
        max_tokens: Some(8),
        ..RewardModelConfig::new(fixture())
    });
    let scorer = config.build(&RuleRegistry::new())?;
    let out = scorer
        .score(&[
            ScoreInput::new("p", "", "hi"),
            ScoreInput::new(
                "p",
                "",
                "a much longer completion that has many tokens in it",
            ),
        ])
        .await;
    assert!(out[0].is_ok(), "{:?}", out[0]);
    assert!(
        matches!(&out[1], Err(ScoreError::Invalid { message, .. }) if message.contains("max_tokens")),
        "{:?}",
        out[1]
    );
    Ok(())
}

#[test]
fn bad_model_configs_name_the_field() {
    let build = |c: RewardModelConfig| {
        ScorerConfig::RewardModel(c)
            .build(&RuleRegistry::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let msg = build(RewardModelConfig::new("/nonexistent/model"));
    assert!(
        msg.contains("`path`: /nonexistent/model has no config.json"),
        "{msg}"
    );
    let msg = build(RewardModelConfig {
        label: 3,
        ..RewardModelConfig::new(fixture())
    });
    assert!(msg.contains("`label`: the model has 1 label(s)"), "{msg}");
    let msg = build(RewardModelConfig {
        device: "cuda:0".into(),
        ..RewardModelConfig::new(fixture())
    });
    assert!(msg.contains("`device`"), "{msg}");
    let msg = build(RewardModelConfig {
        batch_size: 0,
        ..RewardModelConfig::new(fixture())
    });
    assert!(msg.contains("`batch_size`: must be at least 1"), "{msg}");
}
