//! `rlhf run` end to end: four services in one process over real gRPC, on the tiny Qwen2
//! fixture and the built-in `letters` task. Checks the ledger invariant (every leased sample
//! generated, scored and trained or dropped exactly once, validated from the written history),
//! determinism of synchronous runs, learning, the pipelined mode, and bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use opentelemetry_proto::tonic as otlp;
use otlp::collector::trace::v1 as collector;
use rlhf_data::{Expect, read_audit, read_history, read_metrics, validate};
use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2")
}

/// A run file for `dir` with extra lines appended to `[coordinator]` and the data section given.
fn config(dir: &Path, coordinator_extra: &str, data: &str, learner_extra: &str) -> PathBuf {
    let text = format!(
        r#"
[model]
path = "{model}"

[data]
{data}

[coordinator]
output_dir = "{out}"
seed = 3
prompts_per_iteration = 8
samples_per_prompt = 4
eval_prompts = 8
{coordinator_extra}

[coordinator.sampling]
max_new_tokens = 10

[learner]
objective = {{ name = "dpo", beta = 0.1 }}
lr = 0.005
batch_units = 8
{learner_extra}

[scorer]
name = "letters"
scorer = {{ type = "rule", name = "letters" }}
"#,
        model = fixture().display(),
        out = dir.join("out").display(),
    );
    std::fs::create_dir_all(dir).expect("create the run folder");
    let path = dir.join("run.toml");
    std::fs::write(&path, text).expect("write run file");
    path
}

fn rlhf(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the rlhf binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cfg: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["run", cfg.to_str().expect("utf-8"), "--quiet"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = rlhf(&args);
    assert_eq!(code, 0, "rlhf run failed: {stderr}");
    serde_json::from_str(&stdout).expect("the summary is JSON")
}

/// Every sample of the audit log ended exactly once in the ledger (trained or dropped), and
/// the audit log holds every sample the metrics count.
fn check_ledger(out: &Path) -> usize {
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    let expected_samples: usize = metrics
        .iter()
        .map(|m| m.extra.get("samples").copied().unwrap_or(0.0) as usize)
        .sum();
    let history = read_history(out.join("ledger.jsonl"))
        .expect("ledger.jsonl")
        .records;
    let report = validate(&history, Expect::Finished);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let audit = read_audit(out.join("samples.jsonl"))
        .expect("samples.jsonl")
        .records;
    assert_eq!(audit.len(), expected_samples);
    let mut finals = std::collections::HashMap::new();
    // Samples in flight when a pipelined run stopped: generated, never trained nor logged to
    // samples.jsonl, abandoned in the ledger (and samples never generated, see below).
    let mut abandoned = std::collections::HashSet::new();
    for e in &history {
        let v = serde_json::to_value(e).expect("event serialises");
        if matches!(v["event"].as_str(), Some("trained" | "dropped")) {
            let s = &v["sample"];
            let key = (
                s["iteration"].as_u64(),
                s["prompt_id"].as_str().map(String::from),
                s["sample_index"].as_u64(),
            );
            // Neither are samples of prompts too long to sample from.
            if matches!(
                v["reason"]["kind"].as_str(),
                Some("abandoned" | "prompt_too_long")
            ) {
                abandoned.insert(key.clone());
            }
            *finals.entry(key).or_insert(0) += 1;
        }
    }
    for a in &audit {
        let key = (
            Some(a.iteration),
            Some(a.prompt_id.clone()),
            Some(u64::from(a.sample_index)),
        );
        assert_eq!(
            finals.get(&key),
            Some(&1),
            "sample {key:?} must end exactly once"
        );
        assert!(!abandoned.contains(&key), "logged sample {key:?} abandoned");
    }
    assert_eq!(finals.len(), audit.len() + abandoned.len());
    audit.len()
}

#[test]
fn synchronous_runs_are_reproducible_learn_and_account_for_every_sample() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let extra = "iterations = 12\neval_every = 6";
    let data = "builtin = \"letters-1\"\nbuiltin_prompts = 96";
    let sa = run_ok(&config(a.path(), extra, data, ""), &[]);
    let sb = run_ok(&config(b.path(), extra, data, ""), &[]);
    let (oa, ob) = (a.path().join("out"), b.path().join("out"));
    // Identical learning metrics, byte for byte.
    let ma = std::fs::read(oa.join("metrics.jsonl")).expect("metrics");
    let mb = std::fs::read(ob.join("metrics.jsonl")).expect("metrics");
    assert!(!ma.is_empty());
    assert_eq!(ma, mb, "two runs with one seed wrote different metrics");
    assert_eq!(sa["final_heldout_reward"], sb["final_heldout_reward"]);
    // Every leased sample (12 iterations of up to 8 prompts x 4 samples; an epoch's last
    // batch may be short).
    let n = check_ledger(&oa);
    assert!(n > 10 * 8 * 4 && n <= 12 * 8 * 4, "{n} samples");
    assert_eq!(sa["ledger_violations"], 0);
    // It learned: the held-out reward of the final policy beats the initial one.
    let (init, fin) = (
        sa["initial_heldout_reward"].as_f64().expect("initial"),
        sa["final_heldout_reward"].as_f64().expect("final"),
    );
    assert!(fin > init + 0.02, "held-out reward {init} -> {fin}");
    let metrics = read_metrics(oa.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    assert_eq!(metrics.len(), 12);
    assert!(metrics.iter().all(|m| m.loss.is_some_and(f64::is_finite)));
    // Outputs a user looks at.
    for f in [
        "plot.svg",
        "summary.json",
        "timings.jsonl",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
    ] {
        assert!(oa.join(f).exists(), "{f} missing");
    }
    // The final checkpoint loads and generates.
    let (code, _, stderr) = rlhf(&[
        "generate",
        "--model",
        oa.join("final").to_str().expect("utf-8"),
        "--prompt",
        "Write the letter a",
        "--chat",
        "--max-new-tokens",
        "4",
    ]);
    assert_eq!(code, 0, "{stderr}");
}

/// Pipelined mode, with two rollout workers placed by `rollout.devices` and a data-parallel
/// learner over two devices (all on the CPU here; on a GPU node each would be its own `cuda:N`).
#[test]
fn pipelined_mode_admits_samples_at_most_one_version_old() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        d.path(),
        "iterations = 6\nmax_policy_lag = 1\nprompts_per_lease = 2",
        "builtin = \"letters\"\nbuiltin_prompts = 64",
        "devices = [\"cpu\", \"cpu\"]\n\n[rollout]\ndevices = [\"cpu\", \"cpu\"]\nmax_batch_rows = 8",
    );
    let s = run_ok(&cfg, &[]);
    let out = d.path().join("out");
    assert_eq!(check_ledger(&out), 6 * 8 * 4);
    let ledger = std::fs::read_to_string(out.join("ledger.jsonl")).expect("ledger.jsonl");
    let workers: std::collections::BTreeSet<String> = ledger
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "leased")
        .filter_map(|v| v["worker"].as_str().map(String::from))
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "both device-placed workers took leases: {workers:?}"
    );
    assert_eq!(s["iterations"], 6);
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    assert!(
        metrics.iter().all(|m| m.staleness.is_none_or(|x| x <= 1.0)),
        "{metrics:?}"
    );
    let timings = read_metrics(out.join("timings.jsonl"))
        .expect("timings")
        .records;
    assert!(timings.iter().all(|t| {
        t.learner_idle_fraction
            .is_some_and(|f| (0.0..=1.0).contains(&f))
    }));
}

#[test]
fn group_objectives_train_whole_groups_with_importance_weights_when_stale() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        d.path(),
        "iterations = 6\nmax_policy_lag = 1",
        "builtin = \"letters\"\nbuiltin_prompts = 64",
        // The learner checkpoints layers and head (tested against the ordinary pass in
        // rlhf-learner); here the run file's key reaches it.
        "gradient_checkpointing = true",
    );
    let s = run_ok(&cfg, &["--objective", "grpo"]);
    let out = d.path().join("out");
    // Every sample belongs to its prompt's group and is trained.
    assert_eq!(check_ledger(&out), 6 * 8 * 4);
    assert_eq!(s["samples_trained"], 6 * 8 * 4);
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    let get = |m: &rlhf_data::MetricsRecord, k: &str| m.extra.get(k).copied();
    assert!(metrics.iter().all(|m| {
        get(m, "objective_ratio_mean").is_some_and(f64::is_finite) && get(m, "units") == Some(8.0)
    }));
    // Pipelined: samples one version old are reweighted by truncated π_old/μ.
    assert!(
        metrics.iter().any(|m| m.staleness.is_some_and(|x| x > 0.0)
            && get(m, "objective_importance_weight").is_some()),
        "{metrics:?}"
    );
    // A name that is not an objective lists the names.
    let (code, _, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--objective", "grpoo"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--objective grpoo") && stderr.contains("dr_grpo"),
        "{stderr}"
    );
    // Reward-model losses do not train a policy: refused before anything runs.
    let (code, _, stderr) = rlhf(&[
        "run",
        cfg.to_str().expect("utf-8"),
        "--objective",
        "bradley_terry",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("reward model"), "{stderr}");
}

#[test]
fn ppo_trains_every_sample_with_a_critic() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        d.path(),
        "iterations = 4",
        "builtin = \"letters\"\nbuiltin_prompts = 64",
        "critic_lr = 0.01",
    );
    let text = std::fs::read_to_string(&cfg).expect("run file");
    std::fs::write(
        &cfg,
        text.replace("name = \"dpo\", beta = 0.1", "name = \"ppo\""),
    )
    .expect("run file");
    let s = run_ok(&cfg, &[]);
    let out = d.path().join("out");
    assert_eq!(check_ledger(&out), 4 * 8 * 4);
    assert_eq!(s["samples_trained"], 4 * 8 * 4);
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    assert!(
        metrics.iter().all(|m| {
            m.extra.get("units") == Some(&32.0)
                && m.extra
                    .get("objective_value_loss")
                    .is_some_and(|v| v.is_finite())
        }),
        "{metrics:?}"
    );
    // The final checkpoint carries the critic, which loads as a one-output score model.
    let (code, stdout, stderr) = rlhf(&[
        "score",
        "--model",
        out.join("final/critic").to_str().expect("utf-8"),
        "--text",
        "aaa",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let scores: Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(
        scores["scores"][0].as_f64().is_some_and(f64::is_finite),
        "{stdout}"
    );
    // A critic for another objective is a config error naming the field.
    let (code, _, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--objective", "dpo"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("learner.critic"), "{stderr}");
}

#[test]
fn missing_answers_score_nan_and_are_rejected_and_counted() {
    let d = tempfile::tempdir().expect("tempdir");
    // Half the prompts lack the `answer` the rule needs: their samples score NaN.
    let mut lines = vec![];
    for i in 0..16 {
        let answer = if i % 2 == 0 {
            ", \"answer\": \"a\""
        } else {
            ""
        };
        lines.push(format!(
            "{{\"id\": \"p{i}\", \"prompt\": \"Write the letter a\"{answer}}}"
        ));
    }
    std::fs::write(d.path().join("prompts.jsonl"), lines.join("\n")).expect("write");
    let data = format!(
        "prompts = \"{}\"\nheldout_fraction = 0.0",
        d.path().join("prompts.jsonl").display()
    );
    let s = run_ok(&config(d.path(), "iterations = 2", &data, ""), &[]);
    let rejected = s["samples_rejected"]["non_finite_score"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(rejected, 2 * 4 * 4, "{s}");
    assert_eq!(check_ledger(&d.path().join("out")), 2 * 8 * 4);
    let audit = read_audit(d.path().join("out/samples.jsonl"))
        .expect("audit")
        .records;
    assert!(
        audit
            .iter()
            .filter(|a| a.reward.is_none())
            .all(|a| !a.score_errors.is_empty())
    );
}

#[test]
fn bad_input_fails_at_start_up_naming_the_field() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = |name: &str, body: &str| {
        let path = d.path().join(name);
        std::fs::write(&path, body).expect("write");
        path.display().to_string()
    };
    let malformed = p(
        "bad.jsonl",
        "{\"prompt\": \"ok\"}\n{\"prompt\": \n{\"prompt\": \"fine\"}\n",
    );
    let empty = p("empty.jsonl", "");
    let too_long = config(
        &d.path().join("too-long"),
        "iterations = 1",
        "builtin = \"letters\"",
        "",
    );
    let text = std::fs::read_to_string(&too_long).expect("read");
    assert!(text.contains("max_new_tokens = 10"));
    std::fs::write(
        &too_long,
        text.replace("max_new_tokens = 10", "max_new_tokens = 256"),
    )
    .expect("write");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            too_long,
            "coordinator.sampling.max_new_tokens = 256 leaves no room",
        ),
        (
            config(
                &d.path().join("a"),
                "iterations = 0",
                "builtin = \"letters\"",
                "",
            ),
            "coordinator.iterations",
        ),
        (
            config(
                &d.path().join("b"),
                "iterations = 1\nbogus_key = 3",
                "builtin = \"letters\"",
                "",
            ),
            "bogus_key",
        ),
        (
            config(
                &d.path().join("c"),
                "iterations = 1",
                &format!("prompts = \"{malformed}\""),
                "",
            ),
            "line 2",
        ),
        (
            config(
                &d.path().join("d"),
                "iterations = 1",
                &format!("prompts = \"{empty}\""),
                "",
            ),
            "empty",
        ),
        (
            config(
                &d.path().join("e"),
                "iterations = 1",
                "builtin = \"colours\"",
                "",
            ),
            "data.builtin",
        ),
        (
            config(
                &d.path().join("f"),
                "iterations = 1",
                "builtin = \"letters\"",
                "epochs = 0",
            ),
            "learner.epochs",
        ),
        (
            config(
                &d.path().join("g"),
                "iterations = 1\nsamples_per_prompt = 1",
                "builtin = \"letters\"",
                "",
            ),
            "samples_per_prompt",
        ),
        (
            config(
                &d.path().join("i"),
                "iterations = 1",
                "builtin = \"letters\"",
                "\n[rollout]\ndevices = [\"cpu\", \"gpu1\"]",
            ),
            "rollout.devices[1]",
        ),
        (
            config(
                &d.path().join("j"),
                "iterations = 1",
                "builtin = \"letters\"",
                "\n[rollout]\nworkers = 3\ndevices = [\"cpu\", \"cpu\"]",
            ),
            "rollout.workers is 3",
        ),
        (
            config(
                &d.path().join("k"),
                "iterations = 1",
                "builtin = \"letters\"",
                "devices = [\"cpu\", \"cuda:1\"]",
            ),
            "learner.devices",
        ),
        (
            config(
                &d.path().join("l"),
                "iterations = 1",
                "builtin = \"letters\"",
                "precision = \"bf16\"",
            ),
            "learner.precision: precision `bf16` needs a GPU",
        ),
        (
            {
                let cfg = config(
                    &d.path().join("m"),
                    "iterations = 1",
                    "builtin = \"letters\"",
                    "",
                );
                let text = std::fs::read_to_string(&cfg).expect("read run file");
                let text = text.replace("[model]\n", "[model]\nprecision = \"half\"\n");
                std::fs::write(&cfg, text).expect("write run file");
                cfg
            },
            "model.precision: invalid precision `half`",
        ),
    ];
    for (cfg, needle) in cases {
        let (code, stdout, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--quiet"]);
        assert_ne!(code, 0, "{needle}: should fail");
        assert!(stdout.is_empty(), "{needle}: {stdout}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{needle}: {stderr}"
        );
    }
    // The same malformed file with skip_malformed runs, skipping the bad line.
    let cfg = config(
        &d.path().join("h"),
        "iterations = 1",
        &format!("prompts = \"{malformed}\"\nskip_malformed = true\nheldout_fraction = 0.0"),
        "",
    );
    run_ok(&cfg, &[]);
}

#[test]
fn an_eval_section_evaluates_every_checkpoint_after_the_run() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        d.path(),
        "iterations = 2\ncheckpoint_every = 1",
        "builtin = \"letters\"\nbuiltin_prompts = 64",
        "",
    );
    let mut text = std::fs::read_to_string(&cfg).expect("read");
    text.push_str(
        "\n[eval.prompts]\nbuiltin = \"letters\"\nbuiltin_prompts = 64\nlimit = 4\n\n[eval.generation]\nsamples_per_prompt = 1\nmax_new_tokens = 6\n\n[[eval.scorers]]\nname = \"letters\"\nscorer = { type = \"rule\", name = \"letters\" }\n",
    );
    std::fs::write(&cfg, text).expect("write");
    let (code, stdout, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--quiet"]);
    assert_eq!(code, 0, "{stderr}");
    for name in ["initial", "iter-00001", "final"] {
        assert!(
            stdout.contains(name),
            "{name} missing from the eval table: {stdout}"
        );
    }
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("out/eval/report.json")).expect("report.json"),
    )
    .expect("json");
    assert_eq!(report["policies"].as_array().map(Vec::len), Some(3));
    // A bad [eval] section fails at start-up, before any training.
    let bad = config(
        &d.path().join("bad"),
        "iterations = 2",
        "builtin = \"letters\"",
        "",
    );
    let mut text = std::fs::read_to_string(&bad).expect("read");
    text.push_str("\n[eval.generation]\ntop_p = 0.0\n");
    std::fs::write(&bad, text).expect("write");
    let (code, _, stderr) = rlhf(&["run", bad.to_str().expect("utf-8"), "--quiet"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("[eval]") && stderr.contains("top_p"),
        "{stderr}"
    );
    assert!(!d.path().join("bad/out/metrics.jsonl").exists());
}

/// The body of an HTTP/1.1 GET (std only: the endpoint is plain text).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Polls `rlhf status ARGS` until `ready` accepts its JSON (up to 120 s).
fn status_until(args: &[&str], ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let mut all = vec!["status"];
        all.extend_from_slice(args);
        let (code, stdout, stderr) = rlhf(&all);
        if code == 0 {
            let s: Value = serde_json::from_str(&stdout).expect("status is JSON");
            if ready(&s) {
                return s;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never ready: {stdout} {stderr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The admin API of a running `rlhf run`: `rlhf status` reports progress and members,
/// `rlhf stop` ends the run after its current iteration with the final checkpoint written.
#[test]
fn status_and_stop_through_the_admin_api() {
    let d = tempfile::tempdir().expect("tempdir");
    let metrics_port = free_port();
    let extra = format!("iterations = 500\nmetrics_address = \"127.0.0.1:{metrics_port}\"");
    let (mut run, at, cfg) = run_with_admin(d.path(), &extra);
    // By address, and through the run file's cluster.coordinator.
    let s = status_until(&["--coordinator", &at], |s| {
        s["iteration"].as_u64() >= Some(1)
    });
    assert_eq!(s["state"], "running");
    assert_eq!(s["iterations_total"], 500);
    assert!(s["last_metrics"]["reward_mean"].is_number(), "{s}");
    let mut roles: Vec<&str> = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    roles.sort_unstable();
    assert_eq!(roles, ["learner", "rollout", "scorer"]);
    assert!(s["last_timings"]["tokens_per_s"].is_number(), "{s}");
    let s = status_until(&["--config", cfg.to_str().expect("utf-8")], |_| true);
    assert_eq!(s["iterations_total"], 500);
    // Only the run file's [cluster] is read: an operator's copy whose checkpoints are on
    // another machine finds the run too.
    let text = std::fs::read_to_string(&cfg).expect("read");
    let model = fixture().display().to_string();
    assert!(text.contains(&model));
    let elsewhere = d.path().join("operator.toml");
    std::fs::write(&elsewhere, text.replace(&model, "/nowhere/model")).expect("write");
    let s = status_until(&["--config", elsewhere.to_str().expect("utf-8")], |_| true);
    assert_eq!(s["iterations_total"], 500);
    // Prometheus metrics, from the same status.
    let text = http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics");
    for want in [
        "rlhf_state{state=\"running\"} 1",
        "rlhf_iterations_planned 500",
        "rlhf_members{role=\"rollout\"} 1",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} not in:\n{text}");
    }
    for prefix in [
        "rlhf_iteration ",
        "rlhf_last_iteration{name=\"reward_mean\"} ",
        "rlhf_last_timing{name=\"tokens_per_s\"} ",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not in:\n{text}"));
        assert!(line[prefix.len()..].parse::<f64>().is_ok(), "{line}");
    }
    pause_and_unpause(&at);
    assert!(
        http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics")
            .lines()
            .any(|l| l == "rlhf_state{state=\"running\"} 1")
    );
    // Stopped while paused: it stops.
    let (code, stdout, stderr) = rlhf(&["pause", "--coordinator", &at]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"pausing\""), "{stdout}");
    status_until(&["--coordinator", &at], |s| s["state"] == "paused");
    assert!(
        http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics")
            .lines()
            .any(|l| l == "rlhf_state{state=\"paused\"} 1")
    );
    stop_and_wait(&mut run, &at);
    let out = run.wait_with_output().expect("output");
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    let done = summary["iterations"].as_u64().expect("iterations");
    assert!((1..500).contains(&done), "{summary}");
    assert!(d.path().join("out/final/model.safetensors").exists());
    check_ledger(&d.path().join("out"));
    // Nothing listens any more: the error names the address.
    let (code, _, stderr) = rlhf(&["status", "--coordinator", &at]);
    assert_ne!(code, 0);
    assert!(stderr.contains(&at), "{stderr}");
}

/// `rlhf pause` stops new iterations (the state reads `paused`, the iteration count stays),
/// `rlhf unpause` lets the run go on.
fn pause_and_unpause(at: &str) {
    let (code, stdout, stderr) = rlhf(&["pause", "--coordinator", at]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"pausing\""), "{stdout}");
    status_until(&["--coordinator", at], |s| s["state"] == "paused");
    // Iterations already generated (pipelined mode) are still trained; then nothing moves.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let paused = status_until(&["--coordinator", at], |_| true);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let still = status_until(&["--coordinator", at], |_| true);
    assert_eq!(still["state"], "paused");
    assert_eq!(
        still["iteration"], paused["iteration"],
        "iterations went on while paused"
    );
    let (code, stdout, stderr) = rlhf(&["unpause", "--coordinator", at]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"running\""), "{stdout}");
    let was = paused["iteration"].as_u64().expect("iteration");
    let s = status_until(&["--coordinator", at], |s| {
        s["iteration"].as_u64() > Some(was + 1)
    });
    assert_eq!(s["state"], "running");
}

/// Pipelined mode pauses too: generation running ahead stops with the consumer.
#[test]
fn a_pipelined_run_pauses_and_continues() {
    let d = tempfile::tempdir().expect("tempdir");
    let (mut run, at, _) = run_with_admin(d.path(), "iterations = 500\nmax_policy_lag = 2");
    status_until(&["--coordinator", &at], |s| {
        s["iteration"].as_u64() >= Some(1)
    });
    pause_and_unpause(&at);
    stop_and_wait(&mut run, &at);
    assert!(run.wait().expect("wait").success());
    check_ledger(&d.path().join("out"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `rlhf run` of a run file with `coordinator_extra`, its admin API on a free port: the
/// process (stdout piped), the admin address and the run file.
fn run_with_admin(dir: &Path, coordinator_extra: &str) -> (std::process::Child, String, PathBuf) {
    run_with_admin_and(dir, coordinator_extra, "")
}

/// [`run_with_admin`] with `sections` appended to the run file.
fn run_with_admin_and(
    dir: &Path,
    coordinator_extra: &str,
    sections: &str,
) -> (std::process::Child, String, PathBuf) {
    let at = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir, coordinator_extra, "builtin = \"letters\"", "");
    let mut text = std::fs::read_to_string(&cfg).expect("read");
    text.push_str(&format!(
        "\n{sections}\n[cluster]\ncoordinator = \"{at}\"\n"
    ));
    std::fs::write(&cfg, text).expect("write");
    let run = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", cfg.to_str().expect("utf-8"), "--quiet"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rlhf run");
    (run, at, cfg)
}

/// `rlhf stop`, then waits (up to 120 s) for the run to end.
fn stop_and_wait(run: &mut std::process::Child, at: &str) {
    let (code, stdout, stderr) = rlhf(&["stop", "--coordinator", at]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"stopping\""), "{stdout}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while run.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "the run did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Starts `rlhf run cfg` and kills it with -9 as soon as `marker` exists (failing if the run
/// ends before that).
fn kill_after(cfg: &Path, marker: &Path) {
    let mut run = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", cfg.to_str().expect("utf-8"), "--quiet"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rlhf run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !marker.exists() {
        assert!(
            run.try_wait().expect("wait").is_none(),
            "the run ended before {}",
            marker.display()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no {}",
            marker.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        run.try_wait().expect("wait").is_none(),
        "the run finished before it could be killed"
    );
    run.kill().expect("kill -9");
    run.wait().expect("wait");
}

/// A run killed with -9 after a checkpoint resumes from it (`--resume`) and ends exactly as a
/// run that never stopped: the same metrics, samples and final weights, every sample in the
/// ledger accounted for once.
#[test]
fn a_killed_run_resumes_from_its_last_checkpoint_as_if_never_stopped() {
    let extra = "iterations = 12\ncheckpoint_every = 3\neval_every = 6";
    let data = "builtin = \"letters\"";
    let straight = tempfile::tempdir().expect("tempdir");
    let cfg = config(straight.path(), extra, data, "");
    let a = run_ok(&cfg, &[]);

    let killed = tempfile::tempdir().expect("tempdir");
    let cfg = config(killed.path(), extra, data, "");
    let out = killed.path().join("out");
    kill_after(&cfg, &out.join("checkpoints/iter-00003/resume.json"));
    assert!(!out.join("summary.json").exists());

    let b = run_ok(&cfg, &["--resume"]);
    for key in [
        "iterations",
        "policy_version",
        "samples_trained",
        "final_heldout_reward",
    ] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
    let read = |dir: &Path, name: &str| std::fs::read(dir.join("out").join(name)).expect(name);
    for name in ["metrics.jsonl", "samples.jsonl", "final/model.safetensors"] {
        assert!(
            read(straight.path(), name) == read(killed.path(), name),
            "{name} differs after resuming"
        );
    }
    check_ledger(&out);
    // Resuming a finished run with more iterations continues it from final/.
    let more = run_ok(&cfg, &["--resume", "--iterations", "14"]);
    assert_eq!(more["iterations"], 14);
    assert_eq!(more["policy_version"], 14);
    check_ledger(&out);
    // Resuming a run that already finished changes nothing: its own summary (the same wall
    // time) comes back and no log or weight file is written again.
    let modified = |name: &str| {
        std::fs::metadata(out.join(name))
            .and_then(|m| m.modified())
            .expect(name)
    };
    let before = ["metrics.jsonl", "final/model.safetensors", "summary.json"].map(modified);
    let again = run_ok(&cfg, &["--resume", "--iterations", "14"]);
    assert_eq!(again, more);
    assert_eq!(
        ["metrics.jsonl", "final/model.safetensors", "summary.json"].map(modified),
        before
    );
    // Another seed is another run: refused, naming the setting.
    let (code, _, stderr) = rlhf(&[
        "run",
        cfg.to_str().expect("utf-8"),
        "--resume",
        "--seed",
        "9",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("coordinator.seed"), "{stderr}");
    // A fresh run in the same folder replaces the logs: the old checkpoints are no longer
    // resume points, its own final/ is.
    let fresh = run_ok(&cfg, &["--iterations", "2"]);
    assert_eq!(fresh["iterations"], 2);
    let resumed = run_ok(&cfg, &["--resume", "--iterations", "3"]);
    assert_eq!(resumed["iterations"], 3);
    assert_eq!(resumed["policy_version"], 3);
    check_ledger(&out);
}

/// Pipelined mode: generation of the next iteration is in flight when a checkpoint is taken;
/// a run killed after it resumes, redoes those samples, and accounts for every sample once.
#[test]
fn a_killed_pipelined_run_resumes_with_a_consistent_ledger() {
    let d = tempfile::tempdir().expect("tempdir");
    let extra = "iterations = 10\ncheckpoint_every = 2\nmax_policy_lag = 1\nprompts_per_lease = 2";
    let cfg = config(d.path(), extra, "builtin = \"letters\"", "");
    let out = d.path().join("out");
    kill_after(&cfg, &out.join("checkpoints/iter-00002/resume.json"));
    let s = run_ok(&cfg, &["--resume"]);
    assert_eq!(s["iterations"], 10);
    assert_eq!(s["ledger_violations"], 0);
    check_ledger(&out);
}

/// Logs: plain text without colour codes when stderr is not a terminal, and one JSON object
/// per event with `RLHF_LOG_FORMAT=json`.
#[test]
fn logs_are_plain_text_or_json_lines() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(d.path(), "iterations = 1", "builtin = \"letters\"", "");
    let run = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["run", cfg.to_str().expect("utf-8"), "--quiet"])
            .env("RUST_LOG", "info")
            .env("RLHF_LOG_FORMAT", format)
            .output()
            .expect("rlhf run");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = run("text");
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text}"
    );
    let json = run("json");
    let events: Vec<Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["message"] == "prompts loaded"),
        "{json}"
    );
    assert!(events.iter().all(|e| e["timestamp"].is_string()), "{json}");
    assert!(!json.contains(" INFO "), "{json}");
}

/// An OTLP trace collector on loopback: the real OTLP/gRPC `TraceService`, keeping what it is
/// sent as (service name, span).
#[derive(Clone, Default)]
struct Collector {
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, otlp::trace::v1::Span)>>>,
}

#[tonic::async_trait]
impl collector::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<collector::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<collector::ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("not poisoned");
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push((service.clone(), s));
                }
            }
        }
        Ok(tonic::Response::new(
            collector::ExportTraceServiceResponse {
                partial_success: None,
            },
        ))
    }
}

fn attribute(s: &otlp::trace::v1::Span, key: &str) -> String {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value))
        .unwrap_or_default()
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, `rlhf run` exports its spans over OTLP/gRPC: the
/// coordinator's phases (produce, generate, score, consume, train) and every service's gRPC
/// requests, and a request's server span is the child of the caller's span in the same trace
/// (the trace context crossed the gRPC call: rollout Generate under the coordinator's
/// generate, the learner's Train under train, FetchWeights under the rollout worker's work).
#[test]
fn traces_are_exported_over_otlp_and_linked_across_grpc_calls() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let collected = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = collected.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(collector::trace_service_server::TraceServiceServer::new(
                server,
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(d.path(), "iterations = 2", "builtin = \"letters\"", "");
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", cfg.to_str().expect("utf-8"), "--quiet"])
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .output()
        .expect("rlhf run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = collected.spans.lock().expect("not poisoned").clone();
    assert!(!spans.is_empty(), "no span reached the collector");
    assert!(
        spans
            .iter()
            .all(|(service, _)| service.contains("rlhf-run")),
        "{:?}",
        spans.first().map(|s| &s.0)
    );
    let named = |name: &str| -> Vec<&otlp::trace::v1::Span> {
        spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == name)
            .collect()
    };
    for name in ["produce", "generate", "score", "consume", "train", "grpc"] {
        assert!(!named(name).is_empty(), "no `{name}` span");
    }
    // The server span of an RPC has the calling span as its parent, in the caller's trace.
    let parent_of = |rpc: &str| -> Vec<&otlp::trace::v1::Span> {
        let calls: Vec<_> = named("grpc")
            .into_iter()
            .filter(|s| attribute(s, "rpc").contains(rpc))
            .collect();
        assert!(!calls.is_empty(), "no {rpc} call");
        calls
            .iter()
            .map(|c| {
                spans
                    .iter()
                    .map(|(_, s)| s)
                    .find(|s| s.span_id == c.parent_span_id && s.trace_id == c.trace_id)
                    .unwrap_or_else(|| panic!("{rpc}: the caller's span is not its parent"))
            })
            .collect()
    };
    for (rpc, caller) in [
        ("/rlhf.v1.Rollout/Generate", "generate"),
        ("/rlhf.v1.Reward/Score", "score"),
        ("/rlhf.v1.Learner/Train", "train"),
    ] {
        for parent in parent_of(rpc) {
            assert_eq!(parent.name, caller, "{rpc}");
        }
    }
    // The worker fetches new weights while serving Generate: the same trace again.
    let generate_traces: Vec<&Vec<u8>> = named("grpc")
        .into_iter()
        .filter(|s| attribute(s, "rpc").contains("/rlhf.v1.Rollout/Generate"))
        .map(|s| &s.trace_id)
        .collect();
    let fetches = parent_of("/rlhf.v1.Learner/FetchWeights");
    assert!(
        fetches
            .iter()
            .all(|p| generate_traces.contains(&&p.trace_id)),
        "FetchWeights outside a Generate trace"
    );
}

/// `rlhf run` with `[cluster.tls]` (relative paths, beside the run file): every in-process role
/// serves and calls over mutual TLS on loopback, and the run is the same as without it. A
/// missing key file stops it at start, named.
#[test]
fn an_in_process_run_over_mutual_tls() {
    let d = tempfile::tempdir().expect("tempdir");
    let tls = d.path().join("tls");
    let (code, _, stderr) = rlhf(&[
        "certs",
        "--out",
        tls.to_str().expect("utf-8"),
        "--name",
        "127.0.0.1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let data = "builtin = \"letters\"\nbuiltin_prompts = 32";
    let plain = run_ok(
        &config(&d.path().join("plain"), "iterations = 2", data, ""),
        &[],
    );
    let cfg = config(d.path(), "iterations = 2", data, "");
    let text = std::fs::read_to_string(&cfg).expect("run file");
    let with = |key: &str| {
        format!(
            "{text}\n[cluster.tls]\nca = \"tls/ca.crt\"\ncert = \"tls/tls.crt\"\nkey = \"tls/{key}\"\n"
        )
    };
    std::fs::write(&cfg, with("tls.key")).expect("write");
    let secured = run_ok(&cfg, &[]);
    assert_eq!(secured["iterations"], 2);
    assert_eq!(
        secured["final_heldout_reward"],
        plain["final_heldout_reward"]
    );
    std::fs::write(&cfg, with("missing.key")).expect("write");
    let (code, _, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--quiet"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cluster.tls") && stderr.contains("missing.key"),
        "{stderr}"
    );
}

/// Prompts too long for the policy's context (with `max_new_tokens` added) are skipped by the
/// workers and dropped in the ledger as `prompt_too_long`, counted, and the run goes on with
/// the others.
#[test]
fn prompts_too_long_for_the_context_are_dropped_and_counted() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut lines = vec![];
    for i in 0..16 {
        // tiny-qwen2's context is 256 tokens: every fourth prompt is far longer.
        let prompt = if i % 4 == 0 {
            "Write the letter a. ".repeat(80)
        } else {
            "Write the letter a".to_string()
        };
        lines.push(format!(
            "{{\"id\": \"p{i}\", \"prompt\": \"{prompt}\", \"answer\": \"a\"}}"
        ));
    }
    std::fs::write(d.path().join("prompts.jsonl"), lines.join("\n")).expect("write");
    let data = format!(
        "prompts = \"{}\"\nheldout_fraction = 0.0",
        d.path().join("prompts.jsonl").display()
    );
    // Two iterations of 8 prompts: one pass over the 16, so the 4 long ones each once.
    let s = run_ok(&config(d.path(), "iterations = 2", &data, ""), &[]);
    assert_eq!(s["iterations"], 2, "{s}");
    assert_eq!(s["samples_rejected"]["prompt_too_long"], 4 * 4, "{s}");
    let out = d.path().join("out");
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    let too_long: f64 = metrics
        .iter()
        .map(|m| m.extra.get("prompts_too_long").copied().unwrap_or(0.0))
        .sum();
    assert_eq!(too_long, 4.0);
    assert_eq!(check_ledger(&out), 12 * 4);
}

/// `rlhf evict`: an evicted rollout worker gets no new leases while the other carries the run;
/// the learner and the last worker standing cannot be evicted, an unknown name is named; a
/// readmitted worker gets leases again.
#[test]
fn a_rollout_worker_is_evicted_and_readmitted() {
    let d = tempfile::tempdir().expect("tempdir");
    let metrics_at = format!("127.0.0.1:{}", free_port());
    let (mut run, at, cfg) = run_with_admin_and(
        d.path(),
        &format!("iterations = 500\nprompts_per_lease = 2\nmetrics_address = \"{metrics_at}\""),
        "[rollout]\nworkers = 2",
    );
    let evict = |args: &[&str]| {
        let mut all = vec!["evict"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--coordinator", &at]);
        rlhf(&all)
    };
    status_until(&["--coordinator", &at], |s| {
        s["iteration"].as_u64() >= Some(2)
    });
    let (code, stdout, stderr) = evict(&["rollout-1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"rollout-1\""), "{stdout}");
    let evicted_at = status_until(&["--coordinator", &at], |_| true)["iteration"]
        .as_u64()
        .expect("iteration");
    for (name, says) in [
        ("rollout-0", "last rollout"),
        ("learner", "cannot be evicted"),
        ("nobody", "no member named `nobody`"),
    ] {
        let (code, _, stderr) = evict(&[name]);
        assert_ne!(code, 0, "{name}");
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
    let s = status_until(&["--coordinator", &at], |s| {
        s["iteration"].as_u64() >= Some(evicted_at + 4)
    });
    let flagged: Vec<(String, bool)> = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "rollout")
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["evicted"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert!(flagged.contains(&("rollout-1".into(), true)), "{s}");
    assert!(flagged.contains(&("rollout-0".into(), false)), "{s}");
    let metrics = http_get(&metrics_at, "/metrics");
    for want in [
        "rlhf_members{role=\"rollout\"} 2",
        "rlhf_members_evicted{role=\"rollout\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "{want} not in:\n{metrics}"
        );
    }
    let readmitted_at = s["iteration"].as_u64().expect("iteration");
    let out = d.path().join("out");
    let kept = || std::fs::read_to_string(out.join("evicted.json")).expect("evicted.json");
    assert_eq!(kept(), r#"[["rollout","rollout-1"]]"#);
    let (code, stdout, stderr) = evict(&["rollout-1", "--readmit"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"evicted":[]}"#);
    assert_eq!(kept(), "[]");
    status_until(&["--coordinator", &at], |s| {
        s["iteration"].as_u64() >= Some(readmitted_at + 4)
    });
    // Evicted again, stopped, and resumed: the resumed run keeps the eviction.
    let (code, _, stderr) = evict(&["rollout-1"]);
    assert_eq!(code, 0, "{stderr}");
    let evicted_again = status_until(&["--coordinator", &at], |_| true)["iteration"]
        .as_u64()
        .expect("iteration");
    stop_and_wait(&mut run, &at);
    assert!(run.wait().expect("wait").success());
    let mut resumed = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", cfg.to_str().expect("utf-8"), "--quiet", "--resume"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("resume");
    let s = status_until(&["--coordinator", &at], |s| {
        s["state"] == "running" && s["iteration"].as_u64() >= Some(evicted_again + 5)
    });
    let still: Vec<&Value> = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["name"] == "rollout-1")
        .collect();
    assert!(
        !still.is_empty() && still.iter().all(|m| m["evicted"] == true),
        "{s}"
    );
    let resumed_at = s["iteration"].as_u64().expect("iteration");
    stop_and_wait(&mut resumed, &at);
    assert!(resumed.wait().expect("wait").success());
    check_ledger(&out);
    // Leases per worker and iteration: both before the eviction, only rollout-0 in the
    // iterations that started after it and before the readmission, both again after.
    let leases: Vec<(u64, String)> = read_history(out.join("ledger.jsonl"))
        .expect("ledger")
        .records
        .iter()
        .filter_map(|e| match e {
            rlhf_data::LedgerEvent::Leased {
                iteration, worker, ..
            } => Some((*iteration, worker.clone())),
            _ => None,
        })
        .collect();
    let to = |worker: &str, range: std::ops::Range<u64>| {
        leases
            .iter()
            .filter(|(i, w)| w == worker && range.contains(i))
            .count()
    };
    assert!(to("rollout-1", 0..evicted_at) > 0, "{leases:?}");
    let drained = evicted_at + 1..readmitted_at;
    assert_eq!(to("rollout-1", drained.clone()), 0, "{leases:?}");
    assert!(to("rollout-0", drained) > 0, "{leases:?}");
    assert!(
        to("rollout-1", readmitted_at + 1..readmitted_at + 4) > 0,
        "{leases:?}"
    );
    assert_eq!(
        to("rollout-1", evicted_again + 1..resumed_at),
        0,
        "{leases:?}"
    );
}

/// `rlhf set`: a paused run is extended (and its evaluation interval changed) while it goes on;
/// bad keys and values are refused naming them; the change is kept in settings.json, so a run
/// killed after its original end resumes to the new one; a fresh run forgets it.
#[test]
fn live_settings_extend_a_run_and_survive_a_resume() {
    let d = tempfile::tempdir().expect("tempdir");
    let (mut run, at, cfg) = run_with_admin(d.path(), "iterations = 40\ncheckpoint_every = 2");
    status_until(&["--coordinator", &at], |s| {
        s["iteration"].as_u64() >= Some(1)
    });
    let (code, _, stderr) = rlhf(&["pause", "--coordinator", &at]);
    assert_eq!(code, 0, "{stderr}");
    let paused = status_until(&["--coordinator", &at], |s| s["state"] == "paused");
    let done = paused["iteration"].as_u64().expect("iteration");
    let set = |pairs: &[&str]| {
        let mut all = vec!["set"];
        all.extend_from_slice(pairs);
        all.extend_from_slice(&["--coordinator", &at]);
        rlhf(&all)
    };
    let not_above = format!("iterations={done}");
    for (pairs, says) in [
        (
            vec!["temperature=0.5"],
            "live settings: iterations, eval_every, checkpoint_every, lr",
        ),
        (vec!["lr=0"], "lr: `0` is not a positive number"),
        (
            vec!["iterations=many"],
            "iterations: `many` is not a whole number",
        ),
        (vec![not_above.as_str()], "is not above the"),
        (vec!["iterations"], "expected key=value"),
    ] {
        let (code, _, stderr) = set(&pairs);
        assert_ne!(code, 0, "{pairs:?}");
        assert!(stderr.contains(says), "{pairs:?}: {stderr}");
    }
    let (code, stdout, stderr) = set(&["iterations=50", "eval_every=25", "lr=0.004"]);
    assert_eq!(code, 0, "{stderr}");
    let settings: Value = serde_json::from_str(&stdout).expect("settings JSON");
    assert_eq!(settings["iterations"], 50, "{settings}");
    assert_eq!(settings["eval_every"], 25, "{settings}");
    assert_eq!(settings["lr"], 0.004, "{settings}");
    let s = status_until(&["--coordinator", &at], |_| true);
    assert_eq!(s["iterations_total"], 50);
    assert_eq!(s["settings"]["lr"], 0.004, "{s}");
    assert_eq!(s["settings"]["eval_every"], 25, "{s}");
    let (code, _, stderr) = rlhf(&["unpause", "--coordinator", &at]);
    assert_eq!(code, 0, "{stderr}");
    // Killed after the run file's end (40), before the new one (50).
    let out = d.path().join("out");
    let marker = out.join("checkpoints/iter-00044/resume.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !marker.exists() {
        assert!(
            run.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        assert!(std::time::Instant::now() < deadline, "no checkpoint 44");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run.kill().expect("kill -9");
    run.wait().expect("wait");
    let summary = run_ok(&cfg, &["--resume"]);
    assert_eq!(summary["iterations"], 50, "{summary}");
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    let iterations: Vec<u64> = metrics.iter().map(|m| m.iteration).collect();
    assert_eq!(iterations, (0..50).collect::<Vec<u64>>());
    let evaluated: Vec<u64> = metrics
        .iter()
        .filter(|m| m.extra.contains_key("heldout_reward"))
        .map(|m| m.iteration)
        .collect();
    assert_eq!(evaluated, [24, 49]);
    // The learning rate: the run file's (0.005) until the pause, the live one after it, also
    // after the resume (a fresh learner process).
    for m in &metrics {
        let lr = m.extra.get("lr").copied();
        let want = if m.iteration < done { 0.005 } else { 0.004 };
        assert_eq!(lr, Some(want), "iteration {}", m.iteration);
    }
    check_ledger(&out);
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("settings.json")).expect("settings.json"),
    )
    .expect("JSON");
    assert_eq!(kept["iterations"], 50);
    assert_eq!(kept["lr"], 0.004);
    // A fresh run in the same folder starts from the run file again.
    let fresh = run_ok(&cfg, &[]);
    assert_eq!(fresh["iterations"], 40, "{fresh}");
    assert!(!out.join("settings.json").exists());
}

/// Held-out prompts too long for the context are left out of the held-out reward, said once.
#[test]
fn held_out_prompts_too_long_are_reported_once() {
    let d = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let prompt = if i % 4 == 0 {
                "Write the letter a".to_string()
            } else {
                "Write the letter a. ".repeat(80)
            };
            format!("{{\"id\": \"p{i}\", \"prompt\": \"{prompt}\", \"answer\": \"a\"}}")
        })
        .collect();
    std::fs::write(d.path().join("prompts.jsonl"), lines.join("\n")).expect("write");
    let data = format!(
        "prompts = \"{}\"\nheldout_fraction = 0.5",
        d.path().join("prompts.jsonl").display()
    );
    let cfg = config(d.path(), "iterations = 3\neval_every = 1", &data, "");
    let (code, _, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--quiet"]);
    assert_eq!(code, 0, "{stderr}");
    let said = stderr
        .lines()
        .filter(|l| l.contains("held-out prompts too long"))
        .count();
    assert_eq!(said, 1, "{stderr}");
}

/// A JSON POST over HTTP/1.1 (std only): the status and the body, or `None` when nothing
/// answers at `addr` yet.
fn http_post(addr: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// A run whose scorer routes every prompt's best-vs-worst pair to people: a labelling bot on
/// the HTTP page prefers the shorter completion; every training prompt is asked once (the
/// held-out evaluations never), and the audit log shows the bot's choice as the prompt's best
/// and its other sample as the worst.
#[test]
fn human_labels_from_the_labeling_page_decide_the_trained_pairs() {
    let d = tempfile::tempdir().expect("tempdir");
    let page = format!("127.0.0.1:{}", free_port());
    let labels = d.path().join("labels.jsonl");
    let cfg = config(
        d.path(),
        "iterations = 2\nscore_deadline_s = 120.0",
        "builtin = \"letters\"",
        "",
    );
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "scorer = { type = \"rule\", name = \"letters\" }",
        &format!(
            "scorer = {{ type = \"human\", route = \"all\", label_margin = 1.0, deadline_s = 60.0, \
             listen = \"{page}\", labels_file = \"{}\", base = {{ type = \"rule\", name = \"letters\" }} }}",
            labels.display()
        ),
    );
    // The coordinator must wait longer than the scorer waits for people.
    std::fs::write(
        &cfg,
        text.replace("score_deadline_s = 120.0", "score_deadline_s = 60.0"),
    )
    .expect("write");
    let (code, _, stderr) = rlhf(&["run", cfg.to_str().expect("utf-8"), "--quiet"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("coordinator.score_deadline_s (60 s) must be longer than the human scorer's deadline_s (60 s)"),
        "{stderr}"
    );
    std::fs::write(&cfg, text).expect("write");
    let mut run = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "run",
            cfg.to_str().expect("utf-8"),
            "--quiet",
            "--iterations",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start rlhf run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut answered = 0;
    while run.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "the run did not end");
        let next = http_post(&page, "/api/next", &serde_json::json!({"labeler": "bot"}));
        let Some((200, v)) = next else {
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        let item = &v["item"];
        if item.is_null() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let len = |k: &str| item[k].as_str().map_or(0, |s| s.chars().count());
        let choice = match len("a").cmp(&len("b")) {
            std::cmp::Ordering::Less => "a",
            std::cmp::Ordering::Greater => "b",
            std::cmp::Ordering::Equal => "tie",
        };
        let body = serde_json::json!({"item": item["item"], "choice": choice, "labeler": "bot"});
        let (status, reply) = http_post(&page, "/api/label", &body).expect("the page answers");
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["used"], true, "{reply}");
        answered += 1;
    }
    let output = run.wait_with_output().expect("output");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // 2 iterations x 8 prompts, each asked once; the held-out evaluations asked nothing.
    assert_eq!(answered, 16);
    let records: Vec<Value> = std::fs::read_to_string(&labels)
        .expect("labels file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 16);
    let out = d.path().join("out");
    assert_eq!(check_ledger(&out), 2 * 8 * 4);
    let audit = read_audit(out.join("samples.jsonl"))
        .expect("audit")
        .records;
    let mut decided = 0;
    for r in &records {
        assert_eq!(r["late"], false);
        let Some(preferred) = r["preferred"].as_object() else {
            continue;
        };
        let group: Vec<_> = audit
            .iter()
            .filter(|a| {
                Some(a.iteration) == r["iteration"].as_u64()
                    && Some(a.prompt_id.as_str()) == r["prompt_id"].as_str()
            })
            .collect();
        assert_eq!(group.len(), 4);
        let index = |side: &Value| side["sample_id"]["sample_index"].as_u64();
        let other = if index(&r["a"]) == preferred["sample_index"].as_u64() {
            index(&r["b"])
        } else {
            index(&r["a"])
        };
        let reward = |i: Option<u64>| {
            group
                .iter()
                .find(|a| Some(u64::from(a.sample_index)) == i)
                .and_then(|a| a.reward)
                .expect("a reward")
        };
        let (best, worst) = (reward(preferred["sample_index"].as_u64()), reward(other));
        for a in &group {
            let v = a.reward.expect("every sample scored");
            assert!(v <= best && v >= worst, "{r}");
        }
        assert!(best > worst);
        decided += 1;
    }
    assert!(decided > 8, "most pairs differ in length: {decided}");

    // The labels as preference pairs, then a reward model trained on them.
    let pairs = d.path().join("pairs.jsonl");
    let (code, stdout, stderr) = rlhf(&[
        "labels",
        labels.to_str().expect("utf-8"),
        "--out",
        pairs.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["pairs"], decided, "{summary}");
    assert_eq!(summary["ties"], 16 - decided, "{summary}");
    let written: Vec<Value> = std::fs::read_to_string(&pairs)
        .expect("pairs")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    for p in &written {
        let len = |k: &str| p[k].as_str().map_or(0, |s| s.chars().count());
        assert!(
            len("chosen") < len("rejected"),
            "the bot preferred the shorter: {p}"
        );
        assert_eq!(p["labeler"], "bot");
        assert!(p["messages"].is_array() || p["prompt"].is_string(), "{p}");
    }
    let rm = d.path().join("rm.toml");
    std::fs::write(
        &rm,
        format!(
            "[model]\npath = \"{}\"\n\n[rm]\ndata = \"{}\"\noutput_dir = \"{}\"\nbatch_size = 4\nepochs = 1\nheldout_fraction = 0.0\n",
            fixture().display(),
            pairs.display(),
            d.path().join("rm").display()
        ),
    )
    .expect("write rm config");
    let (code, _, stderr) = rlhf(&["rm", rm.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(d.path().join("rm/config.json").exists());
    // The labels file itself is never the output.
    let (code, _, stderr) = rlhf(&[
        "labels",
        labels.to_str().expect("utf-8"),
        "--out",
        labels.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("is the labels file itself"), "{stderr}");
}

/// Self-rewarding: the scorer is the policy itself as a judge (`lm_judge` with `policy =
/// true`, its checkpoint taken from `[model].path`); every sample is judged by the version
/// that generated it, fetched from the learner.
#[test]
fn the_policy_judges_its_own_samples_at_their_version() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        d.path(),
        "iterations = 3\ncheckpoint_every = 1",
        "builtin = \"letters\"",
        "",
    );
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        "scorer = { type = \"rule\", name = \"letters\" }",
        "scorer = { type = \"lm_judge\", policy = true, mode = \"pointwise\" }",
    );
    std::fs::write(&cfg, text).expect("write");
    let s = run_ok(&cfg, &[]);
    assert_eq!(s["iterations"], 3, "{s}");
    let out = d.path().join("out");
    assert_eq!(check_ledger(&out), 3 * 8 * 4);
    let audit = read_audit(out.join("samples.jsonl"))
        .expect("audit")
        .records;
    let mut versions = std::collections::BTreeSet::new();
    for a in &audit {
        let judged_by = a.scores.get("lm_judge:policy.policy_version").copied();
        assert_eq!(judged_by, Some(a.policy_version.0 as f64), "{a:?}");
        versions.insert(a.policy_version.0);
        let reward = a.reward.expect("every sample judged");
        assert!((1.0..=5.0).contains(&reward), "{reward}");
    }
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);

    // The judge of iteration 1 had version 1's weights (saved as checkpoints/iter-00001): the
    // same judge loaded from that checkpoint gives the recorded rewards, the initial one does
    // not.
    let judge = |path: &Path| {
        let cfg: rlhf_reward::ScorerConfig = serde_json::from_value(serde_json::json!({
            "type": "lm_judge", "path": path, "mode": "pointwise"
        }))
        .expect("judge config");
        cfg.build(&rlhf_reward::RuleRegistry::new()).expect("judge")
    };
    let second: Vec<_> = audit.iter().filter(|a| a.iteration == 1).take(4).collect();
    let inputs: Vec<rlhf_reward::ScoreInput> = second
        .iter()
        .map(|a| {
            rlhf_reward::ScoreInput::new(
                a.prompt_id.as_str(),
                a.prompt.as_str(),
                a.completion.as_str(),
            )
            .with_messages(vec![rlhf_core::ChatMessage::new("user", a.prompt.as_str())])
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let score = |path: &Path| -> Vec<f64> {
        let judge = judge(path);
        runtime
            .block_on(judge.score(&inputs))
            .into_iter()
            .map(|r| r.expect("scored").value)
            .collect()
    };
    let recorded: Vec<f64> = second.iter().map(|a| a.reward.expect("reward")).collect();
    let v1 = score(&out.join("checkpoints/iter-00001"));
    let v0 = score(&fixture());
    for ((r, a), b) in recorded.iter().zip(&v1).zip(&v0) {
        assert!((r - a).abs() < 1e-5, "{recorded:?} vs version 1's {v1:?}");
        assert!((r - b).abs() > 1e-5, "{recorded:?} vs version 0's {v0:?}");
    }
}

/// SPPO on a general preference model: a local LM judges each pair of a prompt's samples in
/// both orders; every sample's reward is its win rate against the others, and SPPO regresses
/// each sample's log-ratio onto it. A scorer whose values are not win probabilities stops the
/// run naming the objective.
#[test]
fn sppo_trains_on_pairwise_win_rates() {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = config(d.path(), "iterations = 2", "builtin = \"letters\"", "");
    let judge = format!(
        "scorer = {{ type = \"lm_judge\", path = \"{}\", mode = \"pairwise\" }}",
        fixture().display()
    );
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        text.replace("scorer = { type = \"rule\", name = \"letters\" }", &judge),
    )
    .expect("write");
    let s = run_ok(&cfg, &["--objective", r#"{"name": "sppo", "beta": 0.1}"#]);
    let out = d.path().join("out");
    assert_eq!(check_ledger(&out), 2 * 8 * 4);
    assert_eq!(s["samples_trained"], 2 * 8 * 4);
    let audit = read_audit(out.join("samples.jsonl"))
        .expect("audit")
        .records;
    let mut per_prompt: std::collections::BTreeMap<(u64, String), f64> = Default::default();
    for a in &audit {
        let p = a.reward.expect("every sample judged");
        assert!((0.0..=1.0).contains(&p), "{p}");
        *per_prompt
            .entry((a.iteration, a.prompt_id.clone()))
            .or_default() += p;
    }
    // Four samples, six comparisons whose two sides add to 1: each prompt's win rates sum to 2.
    for (k, sum) in per_prompt {
        assert!((sum - 2.0).abs() < 1e-9, "{k:?}: {sum}");
    }
    let metrics = read_metrics(out.join("metrics.jsonl"))
        .expect("metrics")
        .records;
    assert!(
        metrics.iter().all(|m| m.loss.is_some_and(f64::is_finite)),
        "{metrics:?}"
    );

    // The letters rule scores fractions; a regex count is not a probability.
    let text = std::fs::read_to_string(&cfg).expect("read").replace(
        &judge,
        "scorer = { type = \"regex\", pattern = \"[a-z]\", mode = \"count\" }",
    );
    std::fs::write(&cfg, text).expect("write");
    let (code, _, stderr) = rlhf(&[
        "run",
        cfg.to_str().expect("utf-8"),
        "--quiet",
        "--objective",
        "sppo",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("sppo needs win probabilities"), "{stderr}");
}
