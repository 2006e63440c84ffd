//! `rlhf rm`: a Bradley–Terry reward model learns a preference (answers made of a vowel beat
//! answers made of a consonant) well enough to rank held-out pairs it never saw, and the
//! checkpoint it writes scores through `rlhf score`. Multi-objective regression (ArmoRM's first
//! stage) fits per-objective ratings with some missing. Bad configs name the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{rlhf, tiny_qwen2};

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let cfg = format!(
        "[model]\npath = \"{}\"\n\n[rm]\ndata = \"prefs.jsonl\"\noutput_dir = \"{}\"\nlr = 0.003\nbatch_size = 8\nepochs = 6\nheldout_fraction = 0.25\n{extra}\n",
        tiny_qwen2().display(),
        dir.join("out").display()
    );
    let path = dir.join("rm.toml");
    std::fs::write(&path, cfg).expect("write config");
    path
}

#[test]
fn a_bradley_terry_reward_model_ranks_held_out_pairs() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut lines = vec![];
    for (i, good) in ["a", "e", "i", "o"].iter().enumerate() {
        for (j, bad) in ["t", "s", "n", "r"].iter().enumerate() {
            for n in 3..7 {
                lines.push(serde_json::json!({
                    "id": format!("{good}-{bad}-{n}"),
                    "prompt": format!("Question {}", (i * 7 + j * 3 + n) % 10),
                    "chosen": good.repeat(n),
                    "rejected": bad.repeat(n),
                }));
            }
        }
    }
    let data = lines.iter().map(Value::to_string).collect::<Vec<_>>();
    std::fs::write(d.path().join("prefs.jsonl"), data.join("\n")).expect("write data");
    let cfg = write_config(d.path(), "");
    let (code, stdout, stderr) = rlhf(&["rm", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&stdout).expect("json");
    let held = r["heldout_pairs"].as_u64().unwrap_or(0);
    assert!(held >= 5, "{r}");
    let (before, after) = (
        r["heldout_accuracy_before"].as_f64().unwrap_or(1.0),
        r["heldout_accuracy_after"].as_f64().unwrap_or(0.0),
    );
    // A fresh zero head ties every pair (accuracy 0); after training it ranks unseen pairs.
    assert!(
        before < 0.5 && after >= 0.8,
        "held-out accuracy {before} -> {after}: {r}"
    );
    assert!(d.path().join("out/rm_log.jsonl").exists());
    // The checkpoint is a one-output reward model: `rlhf score` prefers the asked-for letter.
    let out = d.path().join("out");
    let (code, stdout, stderr) = rlhf(&[
        "score",
        "--model",
        out.to_str().expect("utf-8"),
        "--text",
        "Question 1 eeee",
        "--text",
        "Question 1 tttt",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let s: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(s["scores"].as_array().map(Vec::len), Some(2), "{s}");

    // Config mistakes name the field.
    let cfg = write_config(d.path(), "objective = { name = \"dpo\" }");
    let (code, _, stderr) = rlhf(&["rm", cfg.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("rm.objective") && stderr.contains("trains a policy"),
        "{stderr}"
    );
    let cfg = write_config(
        d.path(),
        "objective = { name = \"bradley_terry\", beta = -1 }",
    );
    let (code, _, stderr) = rlhf(&["rm", cfg.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(stderr.contains("bradley_terry.beta"), "{stderr}");
    std::fs::write(
        d.path().join("prefs.jsonl"),
        "{\"prompt\": \"x\", \"chosen\": \"a\"}\n",
    )
    .expect("write data");
    let cfg = write_config(d.path(), "");
    let (code, _, stderr) = rlhf(&["rm", cfg.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("prefs.jsonl") && stderr.contains("line 1"),
        "{stderr}"
    );
}

#[test]
fn multi_objective_regression_fits_ratings_with_gaps() {
    let d = tempfile::tempdir().expect("tempdir");
    // Two objectives: "vowel-ness" (1 for vowels, 0 otherwise) and length / 10; every third
    // answer is not rated on the second objective.
    let mut lines = vec![];
    for (i, letter) in ["a", "e", "i", "o", "t", "s", "n", "r"].iter().enumerate() {
        for n in 2..8 {
            let vowel = if i < 4 { 1.0 } else { 0.0 };
            let length = if (i + n) % 3 == 0 {
                Value::Null
            } else {
                serde_json::json!(n as f64 / 10.0)
            };
            lines.push(serde_json::json!({
                "id": format!("{letter}-{n}"),
                "prompt": "Say something",
                "response": letter.repeat(n),
                "ratings": [vowel, length],
            }));
        }
    }
    let data = lines.iter().map(Value::to_string).collect::<Vec<_>>();
    std::fs::write(d.path().join("prefs.jsonl"), data.join("\n")).expect("write data");
    let cfg = write_config(d.path(), "objective = { name = \"armo_regression\" }");
    let (code, stdout, stderr) = rlhf(&["rm", cfg.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    let r: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(r["outputs"], 2, "{r}");
    let (before, after) = (
        r["heldout_mse_before"].as_f64().unwrap_or(0.0),
        r["heldout_mse_after"].as_f64().unwrap_or(1.0),
    );
    assert!(
        after < before * 0.5,
        "held-out MSE {before} -> {after}: {r}"
    );
    // Two scores per text.
    let (code, stdout, stderr) = rlhf(&[
        "score",
        "--model",
        d.path().join("out").to_str().expect("utf-8"),
        "--text",
        "aaa",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let s: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(s["scores"][0].as_array().map(Vec::len), Some(2), "{s}");
    // Ragged ratings name the line.
    std::fs::write(
        d.path().join("prefs.jsonl"),
        "{\"prompt\": \"x\", \"response\": \"a\", \"ratings\": [1, 0]}\n{\"prompt\": \"x\", \"response\": \"b\", \"ratings\": [1]}\n",
    )
    .expect("write data");
    let (code, _, stderr) = rlhf(&["rm", cfg.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("line 2") && stderr.contains("1 ratings"),
        "{stderr}"
    );
}
