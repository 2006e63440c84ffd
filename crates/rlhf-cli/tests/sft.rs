//! `rlhf sft`: prompt tokens are masked, the loss falls, and the saved checkpoint has learned
//! the answers (greedy generation reproduces them).

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{rlhf, tiny_qwen2};

fn write_config(dir: &Path, data: &str) -> PathBuf {
    std::fs::write(dir.join("data.jsonl"), data).expect("write data");
    let cfg = format!(
        "[model]\npath = \"{}\"\n\n[sft]\ndata = \"data.jsonl\"\noutput_dir = \"{}\"\nlr = 0.01\nbatch_size = 4\nepochs = 40\n",
        tiny_qwen2().display(),
        dir.join("out").display()
    );
    let path = dir.join("sft.toml");
    std::fs::write(&path, cfg).expect("write config");
    path
}

#[test]
fn sft_learns_the_answers() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut lines = vec![];
    for letter in ["a", "e"] {
        lines.push(format!(
            r#"{{"messages": [{{"role": "user", "content": "Write the letter {letter}"}}, {{"role": "assistant", "content": "{letter} {letter} {letter} {letter}"}}]}}"#
        ));
        lines.push(format!(r#"{{"prompt": "Repeat the letter {letter}", "answer": "{letter} {letter} {letter} {letter}"}}"#));
    }
    let cfg = write_config(d.path(), &lines.join("\n"));
    let (code, stdout, stderr) = rlhf(&["sft", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&stdout).expect("json");
    let (first, last) = (
        r["first_loss"].as_f64().unwrap_or(0.0),
        r["last_loss"].as_f64().unwrap_or(9.0),
    );
    assert!(last < first * 0.2, "loss {first} -> {last}");
    // Greedy generation from the saved checkpoint reproduces a trained answer.
    let out = d.path().join("out");
    let (code, stdout, stderr) = rlhf(&[
        "generate",
        "--model",
        out.to_str().expect("utf-8"),
        "--prompt",
        "Write the letter e",
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let g: Value = serde_json::from_str(&stdout).expect("json");
    assert!(
        g["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("e e e e"),
        "{g}"
    );
    assert!(out.join("sft_log.jsonl").exists());
}

#[test]
fn a_conversation_without_a_final_answer_is_rejected() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        d.path(),
        r#"{"id": "q1", "messages": [{"role": "user", "content": "hi"}]}"#,
    );
    let (code, _, stderr) = rlhf(&["sft", cfg.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("q1") && stderr.contains("assistant"),
        "{stderr}"
    );
}

#[test]
fn sft_and_rm_take_model_precision() {
    // `[model] precision` is read (it used to be ignored): bf16 needs a GPU, so on the CPU both
    // commands refuse it at start-up, naming the field.
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        d.path(),
        r#"{"prompt": "Repeat the letter a", "answer": "a a"}"#,
    );
    let bf16 = |path: &Path| {
        let text = std::fs::read_to_string(path).expect("config");
        std::fs::write(
            path,
            text.replace("[model]\n", "[model]\nprecision = \"bf16\"\n"),
        )
        .expect("config");
    };
    bf16(&cfg);
    let (code, _, stderr) = rlhf(&["sft", cfg.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("model.precision"), "{stderr}");
    let rm = d.path().join("rm.toml");
    std::fs::write(
        &rm,
        format!(
            "[model]\npath = \"{}\"\n\n[rm]\ndata = \"data.jsonl\"\noutput_dir = \"{}\"\n",
            tiny_qwen2().display(),
            d.path().join("rm-out").display()
        ),
    )
    .expect("rm config");
    bf16(&rm);
    let (code, _, stderr) = rlhf(&["rm", rm.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("model.precision"), "{stderr}");
}
