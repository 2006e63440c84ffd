//! Unit tests of the eval config: parsing, defaults, and a table of invalid settings with the
//! field each error must name.

use super::*;

const MINIMAL: &str = r#"
[[policies]]
name = "initial"
path = "a"

[[policies]]
name = "trained"
path = "b"

[prompts]
builtin = "letters"

[[scorers]]
scorer = { type = "rule", name = "letters" }
"#;

fn minimal() -> Result<EvalConfig, EvalError> {
    EvalConfig::from_toml_str(MINIMAL, Path::new("/nonexistent"))
}

#[test]
fn defaults_and_derived_lists() -> Result<(), EvalError> {
    let c = minimal()?;
    c.validate()?;
    assert_eq!(c.generation, GenerationConfig::default());
    assert_eq!(c.generation.samples_per_prompt, DEFAULT_SAMPLES_PER_PROMPT);
    assert_eq!(c.stats.bootstrap_resamples, DEFAULT_BOOTSTRAP_RESAMPLES);
    assert_eq!(c.scorer_names(), ["rule:letters"]);
    // Each policy against every one listed before it.
    assert_eq!(c.pairs(), [("trained".to_owned(), "initial".to_owned())]);
    assert_eq!(c.judge_scorers(), ["rule:letters"]);
    assert!(c.output.cache && c.output.dir.is_none());
    assert_eq!(c.output.fingerprint, Fingerprint::Content);
    Ok(())
}

#[test]
fn every_table_parses() -> Result<(), EvalError> {
    let text = format!(
        "{MINIMAL}\n{}",
        r#"
[generation]
samples_per_prompt = 2
seed = 3
max_new_tokens = 16
temperature = 0.7
top_k = 5
top_p = 0.9
chat = false
batch_prompts = 4

[judge]
pairs = [["trained", "initial"]]
scorers = ["rule:letters"]
llm = { base_url = "http://127.0.0.1:8000/v1", model = "judge" }

[ranking]
path = "prefs.jsonl"
limit = 10

[reference]
path = "a"

[stats]
bootstrap_resamples = 200
seed = 1
level = 0.9

[output]
dir = "out"
fingerprint = "metadata"
"#
    );
    let c = EvalConfig::from_toml_str(&text, Path::new("."))?;
    c.validate()?;
    assert_eq!(c.generation.top_k, 5);
    assert!(!c.generation.chat);
    assert_eq!(c.llm_judge().map(|j| j.mode), Some(JudgeMode::Pairwise));
    assert_eq!(c.ranking.as_ref().and_then(|r| r.limit), Some(10));
    assert_eq!(c.output.fingerprint, Fingerprint::Metadata);
    Ok(())
}

#[test]
fn unknown_fields_are_rejected() {
    for text in [
        format!("{MINIMAL}\n[generation]\nsamples = 2\n"),
        format!("{MINIMAL}\n[output]\ndirectory = \"x\"\n"),
        format!("{MINIMAL}\n[extra]\nx = 1\n"),
    ] {
        let e = EvalConfig::from_toml_str(&text, Path::new(".")).err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.to_string().contains("unknown")),
            "{text}: {e:?}"
        );
    }
}

#[test]
fn validation_names_the_field() -> Result<(), EvalError> {
    type Edit = fn(&mut EvalConfig);
    let cases: [(Edit, &str); 17] = [
        (|c| c.policies.clear(), "`policies`"),
        (
            |c| c.policies[1].name = "initial".into(),
            "`policies[1].name`",
        ),
        (
            |c| c.policies[0].path = PathBuf::new(),
            "`policies[0].path`",
        ),
        (
            |c| c.generation.samples_per_prompt = 0,
            "`generation.samples_per_prompt`",
        ),
        (|c| c.generation.top_p = 0.0, "`generation.top_p`"),
        (
            |c| c.generation.temperature = f32::NAN,
            "`generation.temperature`",
        ),
        (
            |c| c.generation.batch_prompts = 0,
            "`generation.batch_prompts`",
        ),
        (
            |c| {
                c.prompts
                    .as_mut()
                    .into_iter()
                    .for_each(|p| p.builtin = Some("colours".into()))
            },
            "`prompts.builtin`",
        ),
        (
            |c| {
                c.prompts
                    .as_mut()
                    .into_iter()
                    .for_each(|p| p.split = SplitChoice::Heldout)
            },
            "`prompts.heldout_fraction`",
        ),
        (
            |c| {
                c.prompts
                    .as_mut()
                    .into_iter()
                    .for_each(|p| p.limit = Some(0))
            },
            "`prompts.limit`",
        ),
        (|c| c.prompts = None, "`prompts`"),
        (
            |c| c.scorers.push(c.scorers[0].clone()),
            "`scorers[1].name`",
        ),
        (
            |c| {
                c.judge = Some(JudgeSection {
                    pairs: Some(vec![["trained".into(), "nobody".into()]]),
                    ..Default::default()
                })
            },
            "`judge.pairs[0][1]`",
        ),
        (
            |c| {
                c.judge = Some(JudgeSection {
                    scorers: Some(vec!["judge".into()]),
                    ..Default::default()
                })
            },
            "`judge.scorers[0]`",
        ),
        (
            |c| {
                c.judge = Some(JudgeSection {
                    llm: Some(JudgeConfig::new("ftp://x", "m", JudgeMode::Pairwise)),
                    ..Default::default()
                })
            },
            "`judge.llm.base_url`",
        ),
        (|c| c.stats.level = 1.0, "`stats.level`"),
        (
            |c| {
                c.reference = Some(ReferenceConfig {
                    path: "a".into(),
                    batch_size: 0,
                })
            },
            "`reference.batch_size`",
        ),
    ];
    for (edit, field) in cases {
        let mut c = minimal()?;
        edit(&mut c);
        let message = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains(field), "expected {field}, got `{message}`");
    }
    Ok(())
}

#[test]
fn relative_paths_resolve_beside_the_config() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("a"))?;
    let c = EvalConfig::from_toml_str(MINIMAL, dir.path())?;
    assert_eq!(c.policies[0].path, dir.path().join("a"));
    assert_eq!(
        c.policies[1].path,
        PathBuf::from("b"),
        "not there: left as given"
    );
    Ok(())
}
