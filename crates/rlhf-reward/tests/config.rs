//! Scorer configs as data: every type parses from JSON and TOML, unknown fields and types are
//! clear errors, validation names the field, and built scorers (rules, ensembles) score.

use rlhf_reward::{
    EnsembleConfig, Extract, JudgeMode, LengthUnit, OnMissing, RegexMode, RewardError,
    RuleRegistry, ScoreError, ScoreErrorKind, ScoreInput, ScorerConfig,
};
use serde_json::json;

fn parse(value: serde_json::Value) -> Result<ScorerConfig, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn config_error(config: &ScorerConfig) -> String {
    config
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn every_type_parses_with_defaults() -> anyhow::Result<()> {
    let cases = [
        json!({"type": "regex", "pattern": "^<think>"}),
        json!({"type": "regex", "pattern": "\\[\\d+\\]", "mode": "count", "per_match": 0.1, "max_matches": 5}),
        json!({"type": "exact_answer"}),
        json!({"type": "exact_answer", "extract": "last_number", "ignore_case": true}),
        json!({"type": "exact_answer", "extract": {"capture": "\\\\boxed\\{(.*)\\}"}}),
        json!({"type": "length_target", "target": 200}),
        json!({"type": "length_target", "target": 50, "unit": "words", "tolerance": 5, "falloff": 20}),
        json!({"type": "rule", "name": "gsm8k"}),
        json!({"type": "reward_model", "path": "/models/rm"}),
        json!({"type": "judge", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY", "mode": "pairwise", "timeout_s": 30, "deadline_s": 120, "retries": 5}),
        json!({"type": "ensemble", "members": [{"weight": 1.0, "scorer": {"type": "exact_answer"}}], "on_missing": "skip"}),
    ];
    for case in cases {
        let config = parse(case.clone()).map_err(|e| anyhow::anyhow!("{case}: {e}"))?;
        assert_eq!(config.kind(), case["type"], "{case}");
        // Round trip.
        let again: ScorerConfig = serde_json::from_value(serde_json::to_value(&config)?)?;
        assert_eq!(again, config);
    }
    match parse(json!({"type": "exact_answer"})).map_err(anyhow::Error::msg)? {
        ScorerConfig::ExactAnswer(c) => {
            assert!(c.trim && !c.ignore_case);
            assert_eq!(
                (c.extract, c.correct_reward, c.incorrect_reward),
                (Extract::Whole, 1.0, 0.0)
            );
        }
        other => panic!("{other:?}"),
    }
    match parse(json!({"type": "judge", "base_url": "http://localhost:8000/v1", "model": "m"}))
        .map_err(anyhow::Error::msg)?
    {
        ScorerConfig::Judge(c) => {
            assert_eq!(c.mode, JudgeMode::Pointwise);
            assert_eq!((c.timeout_s, c.deadline_s, c.retries), (60.0, 300.0, 3));
            assert_eq!(c.api_key_env, None);
        }
        other => panic!("{other:?}"),
    }
    match parse(json!({"type": "reward_model", "path": "/m"})).map_err(anyhow::Error::msg)? {
        ScorerConfig::RewardModel(c) => {
            assert_eq!((c.batch_size, c.device.as_str(), c.label), (8, "cpu", 0))
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn parses_from_toml() -> anyhow::Result<()> {
    let text = r#"
        type = "ensemble"
        on_missing = "skip"

        [[members]]
        weight = 1.0
        scorer = { type = "exact_answer", extract = "last_number" }

        [[members]]
        name = "format"
        weight = 0.2
        scorer = { type = "regex", pattern = "^<think>", mode = "match" }

        [[members]]
        weight = 0.1
        [members.scorer]
        type = "length_target"
        target = 100
        unit = "words"
    "#;
    let config: ScorerConfig = toml::from_str(text)?;
    config.validate()?;
    let ScorerConfig::Ensemble(EnsembleConfig {
        members,
        on_missing,
        ..
    }) = &config
    else {
        anyhow::bail!("not an ensemble: {config:?}");
    };
    assert_eq!(*on_missing, OnMissing::Skip);
    let names: Vec<String> = members.iter().map(|m| m.effective_name()).collect();
    assert_eq!(names, ["exact_answer", "format", "length_target"]);
    assert!(matches!(&members[1].scorer, ScorerConfig::Regex(r) if r.mode == RegexMode::Match));
    assert!(
        matches!(&members[2].scorer, ScorerConfig::LengthTarget(l) if l.unit == LengthUnit::Words)
    );
    Ok(())
}

#[test]
fn unknown_fields_and_types_are_clear_errors() {
    let cases = [
        (
            json!({"type": "regex", "pattern": "x", "patern": "y"}),
            "unknown field `patern`",
        ),
        (
            json!({"type": "regexp", "pattern": "x"}),
            "unknown variant `regexp`, expected one of `regex`, `exact_answer`",
        ),
        (json!({"pattern": "x"}), "missing field `type`"),
        (json!({"type": "regex"}), "missing field `pattern`"),
        (
            json!({"type": "judge", "base_url": "http://x", "model": "m", "mode": "listwise"}),
            "unknown variant `listwise`",
        ),
        (
            json!({"type": "judge", "base_url": "http://x", "model": "m", "timeout": 3}),
            "unknown field `timeout`",
        ),
        (
            json!({"type": "exact_answer", "extract": "first_number"}),
            "unknown variant `first_number`",
        ),
        (
            json!({"type": "ensemble", "members": [{"weight": 1, "scorer": {"type": "rule", "name": "x", "args": 1}}]}),
            "unknown field `args`",
        ),
        (
            json!({"type": "ensemble", "members": [{"weight": 1, "scorer": {"type": "rule", "name": "x"}, "wieght": 2}]}),
            "unknown field `wieght`",
        ),
        (
            json!({"type": "reward_model", "path": "/m", "batch": 4}),
            "unknown field `batch`",
        ),
    ];
    for (case, expected) in cases {
        let err = parse(case.clone()).err().unwrap_or_default();
        assert!(
            err.contains(expected),
            "{case}: {err:?} should contain {expected:?}"
        );
    }
    let err =
        toml::from_str::<ScorerConfig>("type = \"length_target\"\ntarget = 10\ntolerence = 2\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(err.contains("unknown field `tolerence`"), "{err}");
}

#[test]
fn validation_names_the_field() -> anyhow::Result<()> {
    let cases = [
        (json!({"type": "regex", "pattern": "(x"}), "`pattern`"),
        (
            json!({"type": "length_target", "target": 0}),
            "`target`: must be at least 1",
        ),
        (
            json!({"type": "rule", "name": " "}),
            "`name`: the rule name is empty",
        ),
        (
            json!({"type": "judge", "base_url": "localhost:8000", "model": "m"}),
            "`base_url`",
        ),
        (
            json!({"type": "judge", "base_url": "http://x/v1", "model": ""}),
            "`model`",
        ),
        (
            json!({"type": "judge", "base_url": "http://x/v1", "model": "m", "deadline_s": 0}),
            "`deadline_s`: must be a positive number",
        ),
        (
            json!({"type": "judge", "base_url": "http://x/v1", "model": "m", "mode": "pairwise", "template": "{prompt} {a}"}),
            "`template`: a pairwise template must contain {b}",
        ),
        (
            json!({"type": "reward_model", "path": "/m", "device": "tpu"}),
            "`device`: invalid device `tpu`",
        ),
        (
            json!({"type": "reward_model", "path": "/m", "precision": "half"}),
            "`precision`: invalid precision `half`",
        ),
        (
            json!({"type": "reward_model", "path": "/m", "precision": "bf16"}),
            "`precision`: precision `bf16` needs a GPU",
        ),
        (
            json!({"type": "ensemble", "members": []}),
            "`members`: an ensemble needs at least one member",
        ),
        (
            json!({"type": "ensemble", "members": [
                {"weight": 1, "scorer": {"type": "length_target", "target": 5}},
                {"weight": 1, "scorer": {"type": "regex", "pattern": "(x"}}]}),
            "`members[1].scorer.pattern`",
        ),
        (
            json!({"type": "ensemble", "members": [
                {"weight": 1, "scorer": {"type": "regex", "pattern": "a"}},
                {"weight": 1, "scorer": {"type": "regex", "pattern": "b"}}]}),
            "`members[1].name`: another member is already named `regex`",
        ),
        (
            json!({"type": "ensemble", "on_missing": "skip", "members": [
                {"weight": 0, "scorer": {"type": "regex", "pattern": "a"}}]}),
            "`members[0].weight`: must be positive",
        ),
        (
            json!({"type": "ensemble", "members": [{"weight": 1, "scorer": {"type": "ensemble", "members": [
                {"weight": 1, "scorer": {"type": "length_target", "target": 0}}]}}]}),
            "`members[0].scorer.members[0].scorer.target`",
        ),
    ];
    for (case, expected) in cases {
        let config = parse(case.clone()).map_err(|e| anyhow::anyhow!("{case}: {e}"))?;
        let err = config_error(&config);
        assert!(err.starts_with("invalid scorer config: "), "{case}: {err}");
        assert!(
            err.contains(expected),
            "{case}: {err:?} should contain {expected:?}"
        );
    }
    Ok(())
}

#[test]
fn unknown_rules_fail_at_build_naming_the_field() -> anyhow::Result<()> {
    let config = parse(json!({"type": "ensemble", "members": [{"weight": 1, "scorer": {"type": "rule", "name": "gsm8k"}}]}))
        .map_err(anyhow::Error::msg)?;
    let err = config.build(&RuleRegistry::new()).err();
    assert!(
        matches!(&err, Some(RewardError::Config { field, message })
            if field == "members[0].scorer.name" && message.contains("no rule named `gsm8k`")),
        "{err:?}"
    );
    Ok(())
}

fn ensemble(on_missing: &str) -> anyhow::Result<ScorerConfig> {
    parse(json!({
        "type": "ensemble",
        "on_missing": on_missing,
        "members": [
            {"name": "format", "weight": 0.5, "scorer": {"type": "regex", "pattern": "^<think>", "no_match_reward": -1.0}},
            {"weight": 1.5, "scorer": {"type": "exact_answer", "extract": "last_number"}},
            {"weight": 1.0, "scorer": {"type": "rule", "name": "nan_if_empty"}},
        ]
    }))
    .map_err(anyhow::Error::msg)
}

fn registry() -> anyhow::Result<RuleRegistry> {
    let mut registry = RuleRegistry::new();
    registry.register(
        "nan_if_empty",
        |c: &str, _: Option<&str>| if c.is_empty() { f64::NAN } else { 0.25 },
    )?;
    Ok(registry)
}

#[tokio::test]
async fn ensemble_weights_and_missing_members() -> anyhow::Result<()> {
    let inputs = [
        ScoreInput::new("p", "q", "<think>2+2</think> 4").with_answer("4"),
        ScoreInput::new("p", "q", "5").with_answer("4"),
        ScoreInput::new("p", "q", "<think>no answer field</think> 4"),
        ScoreInput::new("p", "q", "").with_answer("4"),
    ];

    let strict = ensemble("error")?.build(&registry()?)?;
    let out = strict.score(&inputs).await;
    let s0 = out[0].as_ref().map_err(Clone::clone)?;
    assert_eq!(s0.value, 0.5 * 1.0 + 1.5 * 1.0 + 0.25);
    assert_eq!(s0.components["format"], 1.0);
    assert_eq!(s0.components["exact_answer"], 1.0);
    assert_eq!(s0.components["exact_answer.correct"], 1.0);
    assert!(
        s0.provenance
            .starts_with("ensemble(format=regex:^<think>, exact_answer=exact_answer"),
        "{}",
        s0.provenance
    );
    assert_eq!(out[1].as_ref().map(|s| s.value).ok(), Some(-0.5 + 0.25));
    // No answer: the error names the member.
    assert!(
        matches!(&out[2], Err(ScoreError::Member { member, source }) if member == "exact_answer" && source.kind() == ScoreErrorKind::Invalid),
        "{:?}",
        out[2]
    );
    assert!(out[2].as_ref().err().is_some_and(|e| {
        e.to_string()
            .starts_with("ensemble member `exact_answer` has no score: ")
    }));
    // A member's NaN is that member's non-finite error.
    assert!(
        matches!(&out[3], Err(ScoreError::Member { member, source }) if member == "rule:nan_if_empty" && source.kind() == ScoreErrorKind::NonFinite),
        "{:?}",
        out[3]
    );
    let stats = strict.stats().unwrap_or_default();
    assert_eq!(stats.scored, 2);
    assert_eq!(stats.errors_of(ScoreErrorKind::Invalid), 1);
    assert_eq!(stats.errors_of(ScoreErrorKind::NonFinite), 1);

    // Skip: renormalise over the members present (total weight 3).
    let lenient = ensemble("skip")?.build(&registry()?)?;
    let out = lenient.score(&inputs).await;
    assert_eq!(out[0].as_ref().map(|s| s.value).ok(), Some(2.25));
    let s2 = out[2].as_ref().map_err(Clone::clone)?;
    assert_eq!(s2.value, (0.5 * 1.0 + 1.0 * 0.25) * 3.0 / 1.5);
    assert_eq!(s2.components["members_present"], 2.0);
    assert!(
        s2.provenance.contains("exact_answer=missing"),
        "{}",
        s2.provenance
    );
    let s3 = out[3].as_ref().map_err(Clone::clone)?;
    // format -1 × 0.5, answer 0 × 1.5, rule missing.
    assert_eq!(s3.value, -0.5 * 3.0 / 2.0);
    Ok(())
}

fn aggregated(
    aggregate: &str,
    coef: Option<f64>,
    exact_weight: f64,
) -> anyhow::Result<ScorerConfig> {
    let mut v = json!({
        "type": "ensemble",
        "aggregate": aggregate,
        "on_missing": "skip",
        "members": [
            {"name": "format", "weight": 1.0, "scorer": {"type": "regex", "pattern": "^<think>", "no_match_reward": -1.0}},
            {"weight": exact_weight, "scorer": {"type": "exact_answer", "extract": "last_number"}},
            {"weight": 1.0, "scorer": {"type": "rule", "name": "nan_if_empty"}},
        ]
    });
    if let Some(c) = coef {
        v["uncertainty_coef"] = json!(c);
    }
    parse(v).map_err(anyhow::Error::msg)
}

/// Worst-case and uncertainty-weighted ensembles (Coste et al. 2024) over the members'
/// weighted values, and their checks.
#[tokio::test]
async fn conservative_ensembles_take_the_minimum_or_penalise_disagreement() -> anyhow::Result<()> {
    let inputs = [
        ScoreInput::new("p", "q", "<think>2+2</think> 4").with_answer("4"),
        ScoreInput::new("p", "q", "5").with_answer("4"),
        ScoreInput::new("p", "q", "").with_answer("4"),
    ];
    let values = |out: Vec<Result<rlhf_reward::Score, rlhf_reward::ScoreError>>| {
        out.into_iter()
            .map(|r| r.map(|s| s.value).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    };
    // Weighted values per input: [1, 2, 0.25], [-1, 0, 0.25], [-1, 0, missing].
    let worst = aggregated("worst_case", None, 2.0)?.build(&registry()?)?;
    assert_eq!(
        values(worst.score(&inputs).await),
        [Ok(0.25), Ok(-1.0), Ok(-1.0)]
    );
    let uwo = aggregated("uncertainty_weighted", Some(2.0), 1.0)?.build(&registry()?)?;
    let out = uwo.score(&inputs).await;
    let s0 = out[0].as_ref().map_err(Clone::clone)?;
    // [1, 1, 0.25]: mean 0.75, variance 0.125.
    assert!((s0.value - (0.75 - 2.0 * 0.125)).abs() < 1e-12, "{s0:?}");
    assert!((s0.components["ensemble_variance"] - 0.125).abs() < 1e-12);
    assert!(
        s0.provenance.starts_with("ensemble_uwo("),
        "{}",
        s0.provenance
    );
    // [-1, 0, 0.25]: mean -0.25, variance 0.875 / 3.
    let s1 = out[1].as_ref().map_err(Clone::clone)?;
    assert!(
        (s1.value - (-0.25 - 2.0 * 0.875 / 3.0)).abs() < 1e-12,
        "{s1:?}"
    );
    // Only the members present: [-1, 0], mean -0.5, variance 0.25.
    let s2 = out[2].as_ref().map_err(Clone::clone)?;
    assert!((s2.value - (-0.5 - 2.0 * 0.25)).abs() < 1e-12, "{s2:?}");
    // MaxMin: batch means of the weighted members are -1/3, 2/3 and 0.25 (two samples):
    // the first member serves this batch worst, and every sample gets its value.
    let max_min = aggregated("max_min", None, 2.0)?.build(&registry()?)?;
    let out = max_min.score(&inputs).await;
    assert_eq!(values(out.clone()), [Ok(1.0), Ok(-1.0), Ok(-1.0)]);
    let s0 = out[0].as_ref().map_err(Clone::clone)?;
    assert_eq!(s0.components["max_min_member"], 0.0);
    assert!(
        s0.provenance.starts_with("ensemble_maxmin("),
        "{}",
        s0.provenance
    );
    // On the first sample alone the third member (0.25) is the worst served.
    let first = max_min.score(&inputs[..1]).await;
    assert_eq!(values(first.clone()), [Ok(0.25)]);
    assert_eq!(
        first[0].as_ref().map(|s| s.components["max_min_member"]),
        Ok(2.0)
    );
    // λ = 0 is the plain mean.
    let mean = aggregated("uncertainty_weighted", Some(0.0), 1.0)?.build(&registry()?)?;
    assert_eq!(values(mean.score(&inputs[..1]).await), [Ok(0.75)]);
    for (config, says) in [
        (
            aggregated("uncertainty_weighted", None, 1.0)?,
            "`uncertainty_coef`: required",
        ),
        (
            aggregated("uncertainty_weighted", Some(-1.0), 1.0)?,
            "at least 0, got -1",
        ),
        (aggregated("worst_case", Some(1.0), 1.0)?, "only used with"),
        (aggregated("max_min", Some(1.0), 1.0)?, "only used with"),
    ] {
        let err = config_error(&config);
        assert!(err.contains(says), "{err}");
    }
    assert!(parse(json!({"type": "ensemble", "aggregate": "median", "members": []})).is_err());
    Ok(())
}
