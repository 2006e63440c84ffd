//! The follow-up likelihood scorer on the tiny Qwen2 fixture (a causal LM whose log-probs the
//! model tests check against transformers): its value is checked against the follow-up's mean
//! log-prob computed another way — two unpadded forward passes, with and without the follow-up,
//! whose summed log-probs differ by exactly the follow-up's — through the chat template and the
//! plain-text path, at batch sizes that pad and that do not.

use rlhf_core::ChatMessage;
use rlhf_model::{Cpu, Tokenizer, Transformer};
use rlhf_reward::{RuleRegistry, ScoreInput, ScorerConfig};
use serde_json::json;

mod common;
use common::{fixture, total_logprob};

/// The follow-up's mean log-prob after `before` (the conversation's tokens without it).
fn mean_follow_up(model: &Transformer<Cpu>, before: &[u32], with: &[u32]) -> anyhow::Result<f64> {
    assert!(with.starts_with(before) && with.len() > before.len());
    let span = (with.len() - before.len()) as f64;
    Ok((total_logprob(model, with)? - total_logprob(model, before)?) / span)
}

fn config(positive: &[&str], negative: &[&str], batch_size: usize) -> anyhow::Result<ScorerConfig> {
    serde_json::from_value(json!({
        "type": "follow_up",
        "path": fixture(),
        "positive": positive,
        "negative": negative,
        "batch_size": batch_size,
    }))
    .map_err(anyhow::Error::from)
}

#[tokio::test]
async fn the_reward_is_the_follow_ups_likelihood_margin() -> anyhow::Result<()> {
    let model = Transformer::<Cpu>::load(&fixture(), &Default::default())?;
    let tokenizer = Tokenizer::from_dir(&fixture())?;
    assert!(tokenizer.has_chat_template());
    let (good, bad) = ("Thanks, that helps.", "That is wrong.");
    let question = vec![ChatMessage::new("user", "What is two plus two?")];
    let chat = ScoreInput::new("p", "What is two plus two?", "It is four.")
        .with_messages(question.clone());
    let plain = ScoreInput::new("q", "2+2=", " 4");

    // Expected, the other way.
    let mut conversation = question.clone();
    conversation.push(ChatMessage::new("assistant", "It is four."));
    let before = tokenizer.encode_chat(&conversation, false)?;
    let with = |f: &str| -> anyhow::Result<Vec<u32>> {
        let mut c = conversation.clone();
        c.push(ChatMessage::new("user", f));
        Ok(tokenizer.encode_chat(&c, false)?)
    };
    let chat_expected = mean_follow_up(&model, &before, &with(good)?)?
        - mean_follow_up(&model, &before, &with(bad)?)?;
    let plain_before = tokenizer.encode("2+2= 4", true)?;
    let plain_with = |f: &str| -> anyhow::Result<Vec<u32>> {
        let mut ids = plain_before.clone();
        ids.extend(tokenizer.encode(&format!("\n{f}"), false)?);
        Ok(ids)
    };
    let plain_expected = mean_follow_up(&model, &plain_before, &plain_with(good)?)?
        - mean_follow_up(&model, &plain_before, &plain_with(bad)?)?;

    for batch_size in [1, 4] {
        let scorer = config(&[good], &[bad], batch_size)?.build(&RuleRegistry::new())?;
        let out = scorer.score(&[chat.clone(), plain.clone()]).await;
        let chat_score = out[0].as_ref().map_err(Clone::clone)?;
        let plain_score = out[1].as_ref().map_err(Clone::clone)?;
        assert!(
            (chat_score.value - chat_expected).abs() < 1e-4,
            "batch {batch_size}: {} vs {chat_expected}",
            chat_score.value
        );
        assert!(
            (plain_score.value - plain_expected).abs() < 1e-4,
            "batch {batch_size}: {} vs {plain_expected}",
            plain_score.value
        );
        assert!(
            (chat_score.components["positive"]
                - chat_score.components["negative"]
                - chat_score.value)
                .abs()
                < 1e-9
        );
        assert!(chat_score.provenance.starts_with("follow_up:"));
    }
    // Swapped follow-ups: the margin changes sign.
    let swapped = config(&[bad], &[good], 2)?.build(&RuleRegistry::new())?;
    let out = swapped.score(std::slice::from_ref(&chat)).await;
    let v = out[0].as_ref().map_err(Clone::clone)?.value;
    assert!(
        (v + chat_expected).abs() < 1e-4,
        "{v} vs {}",
        -chat_expected
    );
    Ok(())
}

#[test]
fn bad_configs_are_named() -> anyhow::Result<()> {
    for (c, says) in [
        (config(&[], &["no"], 1)?, "`positive`"),
        (config(&["yes"], &["  "], 1)?, "`negative[0]`"),
        (config(&["yes"], &["no"], 0)?, "`batch_size`"),
    ] {
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(says), "{e}");
    }
    let missing: ScorerConfig =
        serde_json::from_value(json!({"type": "follow_up", "path": "/nowhere"}))?;
    let e = missing
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("`path`") && e.contains("config.json"), "{e}");
    Ok(())
}
