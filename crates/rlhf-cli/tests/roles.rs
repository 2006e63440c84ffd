//! One role per process: `rlhf learner`, `rlhf rollout`, `rlhf scorer` and `rlhf coordinator`
//! started as separate OS processes with static addresses from the run file's `[cluster]`,
//! talking gRPC over loopback TCP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Kills the role processes when the test ends, however it ends.
struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2")
}

#[test]
fn every_role_in_its_own_process() {
    let d = tempfile::tempdir().expect("tempdir");
    let [c, l, r, s] = [free_port(), free_port(), free_port(), free_port()];
    let cfg = d.path().join("run.toml");
    let text = format!(
        r#"
[model]
path = "{model}"

[data]
builtin = "letters"
builtin_prompts = 40

[coordinator]
output_dir = "{out}"
iterations = 2
prompts_per_iteration = 4
samples_per_prompt = 2
eval_prompts = 4

[coordinator.sampling]
max_new_tokens = 6

[learner]
objective = {{ name = "ipo", beta = 0.1 }}

[scorer]
scorer = {{ type = "rule", name = "letters" }}

[cluster]
coordinator = "127.0.0.1:{c}"
learner = "127.0.0.1:{l}"
rollout = ["127.0.0.1:{r}"]
scorer = ["127.0.0.1:{s}"]
"#,
        model = fixture().display(),
        out = d.path().join("out").display(),
    );
    std::fs::write(&cfg, text).expect("write");
    let cfg = cfg.to_str().expect("utf-8");
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a role")
    };
    let _roles = Kill(vec![
        spawn(&["learner", "--config", cfg]),
        spawn(&["rollout", "--config", cfg, "--index", "0"]),
        spawn(&["scorer", "--config", cfg, "--index", "0"]),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg])
        .output()
        .expect("run the coordinator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(summary["iterations"], 2);
    assert_eq!(summary["policy_version"], 2);
    assert_eq!(summary["ledger_violations"], 0);
    assert!(d.path().join("out/final/model.safetensors").exists());
    // The coordinator with a missing address fails at start-up, naming it.
    let bad = d.path().join("bad.toml");
    let text = std::fs::read_to_string(d.path().join("run.toml"))
        .expect("read")
        .replace(&format!("rollout = [\"127.0.0.1:{r}\"]"), "rollout = []");
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "rollout",
            "--config",
            bad.to_str().expect("utf-8"),
            "--index",
            "0",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.rollout"));
}
