//! Promises of the public API: the example config in docs/eval.md parses and validates (so the
//! documentation cannot drift from the config types), and `run_eval` is a `Send` future.

use std::path::Path;

use rlhf_eval::{EvalConfig, SplitChoice};

#[test]
fn the_documented_config_is_valid() -> anyhow::Result<()> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/eval.md");
    let text = std::fs::read_to_string(&doc)?;
    let block = text
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .ok_or_else(|| anyhow::anyhow!("no toml block in {}", doc.display()))?;
    let config = EvalConfig::from_toml_str(block, Path::new("."))?;
    config.validate()?;
    assert_eq!(config.policies.len(), 2);
    assert_eq!(config.pairs(), [("dpo".to_owned(), "initial".to_owned())]);
    assert_eq!(
        config.prompts.as_ref().map(|p| p.split),
        Some(SplitChoice::Heldout)
    );
    assert!(config.llm_judge().is_some() && config.ranking.is_some());
    Ok(())
}

/// `run_eval` can be spawned on a multi-threaded runtime (the CLI may run it as a task).
#[test]
fn the_eval_future_is_send() -> anyhow::Result<()> {
    fn assert_send<T: Send>(_: &T) {}
    let config = EvalConfig::from_toml_str(
        "[[policies]]\nname = \"p\"\npath = \"nowhere\"\n",
        Path::new("."),
    )?;
    let future = rlhf_eval::run_eval(&config, |_| {});
    assert_send(&future);
    Ok(())
}

#[test]
fn the_device_is_checked_at_load() -> anyhow::Result<()> {
    let base = std::path::Path::new(".");
    let text = "device = \"tpu:0\"\n[[policies]]\nname = \"p\"\npath = \"x\"\n";
    let err = rlhf_eval::EvalConfig::from_toml_str(text, base)?
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("device"), "{err}");
    if !cfg!(feature = "cuda") {
        let text = text.replace("tpu:0", "cuda:0");
        let err = rlhf_eval::EvalConfig::from_toml_str(&text, base)?
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("device") && err.contains("CUDA"), "{err}");
    }
    for (precision, needle) in [("half", "invalid precision"), ("bf16", "needs a GPU")] {
        let text =
            format!("precision = \"{precision}\"\n[[policies]]\nname = \"p\"\npath = \"x\"\n");
        let err = rlhf_eval::EvalConfig::from_toml_str(&text, base)?
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("precision") && err.contains(needle), "{err}");
    }
    Ok(())
}
