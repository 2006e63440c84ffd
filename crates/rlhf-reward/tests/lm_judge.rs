//! The local LM judge on the tiny Qwen2 fixture: its pointwise expected rating and its
//! pairwise preference probabilities checked against the same probabilities computed another
//! way (one unpadded forward pass per candidate answer), at batch sizes that pad and that do
//! not; bad configs named.

use rlhf_core::ChatMessage;
use rlhf_model::{Cpu, Tokenizer, Transformer};
use rlhf_reward::{RuleRegistry, ScoreInput, ScorerConfig};
use serde_json::json;

mod common;
use common::{fixture, total_logprob};

/// The judge's probabilities of `answers` after the user message `user` and `lead`,
/// normalised over the answers.
fn probabilities(
    model: &Transformer<Cpu>,
    tokenizer: &Tokenizer,
    user: &str,
    lead: &str,
    answers: &[&str],
) -> anyhow::Result<Vec<f64>> {
    let mut prefix = tokenizer.encode_chat(&[ChatMessage::new("user", user)], true)?;
    prefix.extend(tokenizer.encode(lead, false)?);
    let base = total_logprob(model, &prefix)?;
    let mut weights = Vec::new();
    for a in answers {
        let mut ids = prefix.clone();
        ids.extend(tokenizer.encode(a, false)?);
        weights.push((total_logprob(model, &ids)? - base).exp());
    }
    let total: f64 = weights.iter().sum();
    Ok(weights.iter().map(|w| w / total).collect())
}

fn config(mode: &str, template: &str, batch_size: usize) -> anyhow::Result<ScorerConfig> {
    Ok(serde_json::from_value(json!({
        "type": "lm_judge",
        "path": fixture(),
        "mode": mode,
        "template": template,
        "batch_size": batch_size,
    }))?)
}

fn inputs() -> Vec<ScoreInput> {
    vec![
        ScoreInput::new("p", "What is two plus two?", "It is four.").with_sample_index(0),
        ScoreInput::new("p", "What is two plus two?", "5").with_sample_index(1),
        ScoreInput::new(
            "p",
            "What is two plus two?",
            "Two plus two equals four, because",
        )
        .with_sample_index(2),
        ScoreInput::new("q", "Name a colour.", "Blue."),
    ]
}

#[tokio::test]
async fn pointwise_scores_are_the_expected_rating() -> anyhow::Result<()> {
    let model = Transformer::<Cpu>::load(&fixture(), &Default::default())?;
    let tokenizer = Tokenizer::from_dir(&fixture())?;
    assert!(tokenizer.has_chat_template());
    let template = "Rate 1-5.\nQ: {prompt}\nA: {completion}";
    let ratings = [" 1", " 2", " 3", " 4", " 5"];
    let mut expected = Vec::new();
    for i in inputs() {
        let user = template
            .replace("{prompt}", &i.prompt)
            .replace("{completion}", &i.completion);
        let p = probabilities(&model, &tokenizer, &user, "Score:", &ratings)?;
        expected.push((1..=5).zip(&p).map(|(k, p)| f64::from(k) * p).sum::<f64>());
    }
    for batch_size in [1, 3, 16] {
        let scorer = config("pointwise", template, batch_size)?.build(&RuleRegistry::new())?;
        let out = scorer.score(&inputs()).await;
        for (k, (got, want)) in out.iter().zip(&expected).enumerate() {
            let got = got.as_ref().map_err(Clone::clone)?;
            assert!(
                (got.value - want).abs() < 1e-5,
                "batch {batch_size}, input {k}: {} vs {want}",
                got.value
            );
            assert!((1.0..=5.0).contains(&got.value));
            let mass = got.components.get("rating_mass").copied().unwrap_or(-1.0);
            assert!(mass > 0.0 && mass <= 1.0 + 1e-9, "{mass}");
            assert!(got.provenance.starts_with("lm_judge:"));
            assert!(!got.components.contains_key("policy_version"));
        }
    }
    // The ratings differ between completions (a random model, but not a constant).
    assert!(expected.iter().any(|e| (e - expected[0]).abs() > 1e-6));
    Ok(())
}

#[tokio::test]
async fn pairwise_scores_are_calibrated_win_probabilities() -> anyhow::Result<()> {
    let model = Transformer::<Cpu>::load(&fixture(), &Default::default())?;
    let tokenizer = Tokenizer::from_dir(&fixture())?;
    let template = "Which is better?\nQ: {prompt}\nA: {a}\nB: {b}";
    let inputs = inputs();
    let fill = |a: &str, b: &str, q: &str| {
        template
            .replace("{prompt}", q)
            .replace("{a}", a)
            .replace("{b}", b)
    };
    // P(i beats j): the mean of "A" with i shown first and "B" with i shown second.
    let prob = |i: usize, j: usize| -> anyhow::Result<f64> {
        let q = &inputs[i].prompt;
        let (a, b) = (&inputs[i].completion, &inputs[j].completion);
        let first = probabilities(
            &model,
            &tokenizer,
            &fill(a, b, q),
            "Better response:",
            &[" A", " B"],
        )?;
        let second = probabilities(
            &model,
            &tokenizer,
            &fill(b, a, q),
            "Better response:",
            &[" A", " B"],
        )?;
        Ok((first[0] + second[1]) / 2.0)
    };
    let (p01, p02, p12) = (prob(0, 1)?, prob(0, 2)?, prob(1, 2)?);
    let expected = [
        (p01 + p02) / 2.0,
        (1.0 - p01 + p12) / 2.0,
        (1.0 - p02 + 1.0 - p12) / 2.0,
    ];
    for batch_size in [1, 5] {
        let scorer = config("pairwise", template, batch_size)?.build(&RuleRegistry::new())?;
        let out = scorer.score(&inputs).await;
        let values: Vec<f64> = out[..3]
            .iter()
            .map(|r| r.as_ref().map(|s| s.value).map_err(Clone::clone))
            .collect::<Result<_, _>>()?;
        for (got, want) in values.iter().zip(&expected) {
            assert!(
                (got - want).abs() < 1e-6,
                "batch {batch_size}: {values:?} vs {expected:?}"
            );
        }
        // Each comparison's two probabilities add to 1: three samples share 1.5.
        let sum = values.iter().sum::<f64>();
        assert!((sum - 1.5).abs() < 1e-9, "{sum}");
        let comparisons = out[0]
            .as_ref()
            .map(|s| s.components.get("comparisons").copied());
        assert_eq!(comparisons, Ok(Some(2.0)));
        // A prompt with one sample and no reference answer cannot be compared.
        let alone = out[3]
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(alone.contains("another sample of prompt `q`"), "{alone}");
    }
    Ok(())
}

#[test]
fn bad_configs_are_named() -> anyhow::Result<()> {
    let registry = RuleRegistry::new();
    let cases = [
        (json!({"type": "lm_judge"}), "path"),
        (json!({"type": "lm_judge", "policy": true}), "path"),
        (json!({"type": "lm_judge", "path": "/nowhere"}), "path"),
        (
            json!({"type": "lm_judge", "path": fixture(), "mode": "pairwise", "template": "{prompt} {a}"}),
            "template",
        ),
        (
            json!({"type": "lm_judge", "path": fixture(), "batch_size": 0}),
            "batch_size",
        ),
        (
            json!({"type": "lm_judge", "path": fixture(), "device": "gpu"}),
            "device",
        ),
    ];
    for (v, field) in cases {
        let cfg: ScorerConfig = serde_json::from_value(v.clone())?;
        let err = match cfg.build(&registry) {
            Ok(_) => panic!("{v} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("`{field}`")), "{v}: {err}");
    }
    Ok(())
}
