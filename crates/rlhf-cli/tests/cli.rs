//! The `rlhf generate | logprobs | score` commands, run as a user runs them: JSON outputs
//! agree with transformers' references, and broken checkpoints give one-line errors naming
//! the file and the field, with a non-zero exit and no panic.

use std::path::Path;

use serde_json::Value;

mod common;
use common::{fixture, rlhf};

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).expect("stdout is one JSON object")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn generate_json_matches_greedy_reference() {
    let dir = fixture("hf-tiny/tiny-llama3");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let prompt = reference["prompts"][0]["text"].as_str().expect("prompt");
    let (code, stdout, stderr) = rlhf(&[
        "generate",
        "--model",
        path(&dir),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "16",
        "--temperature",
        "0",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v = json_of(&stdout);
    let mut keys: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "completion_ids",
            "completion_logprobs",
            "finish_reason",
            "prompt_ids",
            "text"
        ]
    );
    assert_eq!(v["prompt_ids"], reference["prompts"][0]["ids"]);
    assert_eq!(v["completion_ids"], reference["greedy_16"][0]);
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["completion_logprobs"].as_array().map(Vec::len), Some(16));
}

#[test]
fn chat_generation_uses_the_template_and_logprobs_agree() {
    let dir = fixture("hf-tiny/tiny-qwen2");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let (code, stdout, stderr) = rlhf(&[
        "generate",
        "--model",
        path(&dir),
        "--prompt",
        "Rank these two answers.",
        "--chat",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "5",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let g = json_of(&stdout);
    assert_eq!(g["prompt_ids"], reference["chat_example"]["ids"]);
    // Teacher-forced log-probs of prompt + completion reproduce the sampler's log-probs.
    let prompt: Vec<u64> = g["prompt_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let completion: Vec<u64> = g["completion_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let ids: Vec<String> = prompt
        .iter()
        .chain(&completion)
        .map(u64::to_string)
        .collect();
    let (code, stdout, stderr) = rlhf(&[
        "logprobs",
        "--model",
        path(&dir),
        "--ids",
        &ids.join(","),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lp = json_of(&stdout);
    let tf: Vec<f64> = lp["token_logprobs"]
        .as_array()
        .expect("lps")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(tf.len(), ids.len() - 1);
    let sampled: Vec<f64> = g["completion_logprobs"]
        .as_array()
        .expect("lps")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    for (i, s) in sampled.iter().enumerate() {
        let t = tf[prompt.len() - 1 + i];
        assert!(
            (s - t).abs() < 1e-4,
            "token {i}: sampler {s} vs teacher-forced {t}"
        );
    }
}

#[test]
fn logprobs_and_score_json_match_references() {
    let dir = fixture("hf-tiny/tiny-qwen2");
    let (code, stdout, stderr) = rlhf(&[
        "logprobs",
        "--model",
        path(&dir),
        "--text",
        "Direct preference optimization aligns language models",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v = json_of(&stdout);
    assert_eq!(v["ids"].as_array().map(Vec::len), Some(12));
    assert_eq!(v["token_logprobs"].as_array().map(Vec::len), Some(11));

    let rm = fixture("hf-tiny/tiny-llama-rm");
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(rm.join("reference.json")).expect("reference.json"),
    )
    .expect("json");
    let texts: Vec<&str> = reference["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let (code, stdout, stderr) = rlhf(&[
        "score",
        "--model",
        path(&rm),
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let got = json_of(&stdout);
    for i in 0..2 {
        let (a, b) = (
            got["scores"][i].as_f64().unwrap_or(f64::NAN),
            reference["scores"][i].as_f64().unwrap_or(0.0),
        );
        assert!((a - b).abs() < 1e-4, "score {i}: {a} vs {b}");
    }
}

/// Copies a fixture to a temporary folder so a test can break it.
fn broken_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture(name)).expect("fixture").flatten() {
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).expect("copy");
    }
    tmp
}

fn edit_json(file: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
    edit(&mut v);
    std::fs::write(file, serde_json::to_string(&v).expect("json")).expect("write");
}

#[test]
fn broken_checkpoints_give_one_line_errors() {
    type Break = fn(&Path);
    let cases: Vec<(&str, Break, &[&str])> = vec![
        (
            "missing safetensors",
            |d| std::fs::remove_file(d.join("model.safetensors")).expect("rm"),
            &["model.safetensors", "not found"],
        ),
        (
            "truncated safetensors",
            |d| {
                let f = d.join("model.safetensors");
                let bytes = std::fs::read(&f).expect("read");
                std::fs::write(&f, &bytes[..bytes.len() / 2]).expect("write");
            },
            &["model.safetensors", "truncated"],
        ),
        (
            "unknown architecture",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"])
                })
            },
            &["config.json", "architectures", "GPTNeoXForCausalLM"],
        ),
        (
            "shape mismatch",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v["intermediate_size"] = serde_json::json!(100)
                })
            },
            &["model.safetensors", "mlp.gate_proj.weight", "[100, 64]"],
        ),
        (
            "missing tokenizer",
            |d| std::fs::remove_file(d.join("tokenizer.json")).expect("rm"),
            &["tokenizer.json", "not found"],
        ),
        (
            "invalid chat template",
            |d| {
                std::fs::write(
                    d.join("chat_template.jinja"),
                    "{% for m in messages %}{{ m.content }",
                )
                .expect("write")
            },
            &["chat_template.jinja", "chat template"],
        ),
        (
            "missing config field",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v.as_object_mut().map(|o| o.remove("num_hidden_layers"));
                })
            },
            &["config.json", "num_hidden_layers", "missing"],
        ),
    ];
    for (what, breaker, needles) in cases {
        let tmp = broken_copy("hf-tiny/tiny-llama3");
        breaker(tmp.path());
        let (code, stdout, stderr) = rlhf(&[
            "generate",
            "--model",
            path(tmp.path()),
            "--prompt",
            "hi",
            "--chat",
            "--json",
        ]);
        assert_ne!(code, 0, "{what}: should fail");
        assert!(stdout.is_empty(), "{what}: nothing on stdout, got {stdout}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: one line, got {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{what}: {stderr}");
        assert!(
            !stderr.contains("internal error") && !stderr.contains("panicked"),
            "{what}: {stderr}"
        );
        for n in needles {
            assert!(
                stderr.contains(n),
                "{what}: {stderr:?} should mention {n:?}"
            );
        }
    }
}

#[test]
fn bad_arguments_are_reported() {
    let dir = fixture("hf-tiny/tiny-qwen2");
    let (code, _, stderr) = rlhf(&[
        "generate",
        "--model",
        path(&dir),
        "--prompt",
        "x",
        "--top-p",
        "1.5",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("top_p"), "{stderr}");
    let (code, _, stderr) = rlhf(&["logprobs", "--model", path(&dir), "--ids", "1,9999"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("9999") && stderr.contains("vocabulary"),
        "{stderr}"
    );
    let (code, _, stderr) = rlhf(&[
        "generate",
        "--model",
        path(&dir),
        "--prompt",
        "x",
        "--device",
        "tpu",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("tpu"), "{stderr}");
    let (code, _, stderr) = rlhf(&["score", "--model", path(&dir), "--text", "x"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("not a reward model"), "{stderr}");
}

#[test]
fn memory_estimates_a_checkpoint_from_its_config() {
    let dir = fixture("hf-tiny/tiny-qwen2");
    let estimate = |extra: &[&str]| -> Value {
        let mut args = vec![
            "memory",
            "--model",
            path(&dir),
            "--rows",
            "8",
            "--len",
            "64",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = rlhf(&args);
        assert_eq!(code, 0, "{stderr}");
        json_of(&stdout)
    };
    let plain = estimate(&[]);
    let params = plain["parameters"].as_u64().expect("parameters");
    assert_eq!(
        plain["training"]["resident_bytes"]["weights"].as_u64(),
        Some(4 * params)
    );
    let peak = |v: &Value| v["training"]["peak_bytes"].as_u64().expect("peak");
    // Checkpointing keeps layer inputs instead of activations and logits.
    let ckpt = estimate(&["--checkpointing"]);
    assert!(peak(&ckpt) < peak(&plain), "{ckpt} vs {plain}");
    assert!(ckpt["training"]["phases"]["layer recomputation"].is_object());
    // A bf16 reference adds half the weights.
    let with_ref = estimate(&["--reference", "--precision", "bf16"]);
    assert_eq!(
        with_ref["training"]["resident_bytes"]["reference weights"].as_u64(),
        Some(2 * params)
    );
    assert!(plain["generation"]["phases"]["decoding"]["kv cache"].as_u64() > Some(0));
    // A folder without config.json names the file.
    let (code, _, stderr) = rlhf(&["memory", "--model", "/nonexistent-model"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("config.json"), "{stderr}");
}

#[test]
fn matmul_bench_times_each_shape_and_rejects_bad_ones() {
    let (code, stdout, stderr) = rlhf(&[
        "bench",
        "matmul",
        "--shapes",
        "32x16x24,8x16x40t",
        "--iters",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let out = json_of(&stdout);
    let rows = out["matmul"].as_array().expect("matmul rows");
    let shapes: Vec<&str> = rows.iter().filter_map(|r| r["shape"].as_str()).collect();
    assert_eq!(shapes, ["32x16x24", "8x16x40t"]);
    assert_eq!(rows[1]["transposed"], true);
    for r in rows {
        let tflops = r["tflops"].as_f64().expect("tflops");
        assert!(tflops.is_finite() && tflops > 0.0, "{r}");
    }
    let (code, _, stderr) = rlhf(&["bench", "matmul", "--shapes", "32x16"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--shapes") && stderr.contains("32x16"),
        "{stderr}"
    );
    let (code, _, stderr) = rlhf(&["bench", "matmul", "--precision", "bf16"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("needs a GPU"), "{stderr}");
}

#[test]
fn model_bench_can_time_generation_or_training_alone() {
    let base = ["bench", "model", "--size", "tiny", "--steps", "1"];
    let gen_only = [
        &base[..],
        &["--no-train", "--gen-batch", "2", "--new-tokens", "4"],
    ]
    .concat();
    let (code, stdout, stderr) = rlhf(&gen_only);
    assert_eq!(code, 0, "{stderr}");
    let out = json_of(&stdout);
    assert_eq!(out["generate"].as_array().map(Vec::len), Some(1));
    assert!(out.get("train").is_none(), "{out}");
    let train_only = [&base[..], &["--no-generate"]].concat();
    let (code, stdout, stderr) = rlhf(&train_only);
    assert_eq!(code, 0, "{stderr}");
    let out = json_of(&stdout);
    assert_eq!(out["generate"].as_array().map(Vec::len), Some(0));
    assert!(
        out["train"]["median_seconds_per_step"].as_f64().is_some(),
        "{out}"
    );
    assert!(stderr.contains("train: step 1 took"), "{stderr}");
    let (code, _, _) = rlhf(&[&base[..], &["--no-train", "--no-generate"]].concat());
    assert_ne!(code, 0, "the two flags conflict");
}

#[test]
fn dpo_bench_trains_on_the_chosen_device() {
    let dir = fixture("hf-tiny/tiny-qwen2");
    let args = [
        "bench",
        "dpo",
        "--model",
        path(&dir),
        "--batch",
        "2",
        "--steps",
        "1",
    ];
    let (code, stdout, stderr) = rlhf(&args);
    assert_eq!(code, 0, "{stderr}");
    let out = json_of(&stdout);
    assert!(
        out["pairs_per_s"].as_f64().is_some_and(|p| p > 0.0),
        "{out}"
    );
    assert_eq!(out["device"], "cpu");
    let (code, _, stderr) = rlhf(&[&args[..], &["--precision", "bf16"]].concat());
    assert_ne!(code, 0);
    assert!(stderr.contains("needs a GPU"), "{stderr}");
}
