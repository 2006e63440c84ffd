//! One role per process: `rlhf learner`, `rlhf rollout`, `rlhf scorer` and `rlhf coordinator`
//! started as separate OS processes, talking gRPC over loopback TCP, with static addresses from
//! the run file's `[cluster]` or registered in a real etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rlhf_membership::{Membership, Role};

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

/// A run file for an IPO run on the tiny fixture, with extra `[coordinator]` lines and this
/// `[cluster]` section.
fn run_file(dir: &Path, iterations: u32, coordinator: &str, cluster: &str) -> PathBuf {
    let cfg = dir.join("run.toml");
    let text = format!(
        r#"
[model]
path = "{model}"

[data]
builtin = "letters"
builtin_prompts = 40

[coordinator]
output_dir = "{out}"
iterations = {iterations}
{coordinator}
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
{cluster}
"#,
        model = fixture().display(),
        out = dir.join("out").display(),
    );
    std::fs::write(&cfg, text).expect("write");
    cfg
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a role")
}

/// Runs the coordinator to its end, checks its summary and returns its stderr.
fn coordinate(cfg: &str, out: &Path, extra: &[&str]) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg])
        .args(extra)
        .output()
        .expect("run the coordinator");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).expect("summary JSON");
    assert_eq!(summary["iterations"], 2);
    assert_eq!(summary["policy_version"], 2);
    assert_eq!(summary["ledger_violations"], 0);
    assert!(out.join("final/model.safetensors").exists());
    stderr.into_owned()
}

#[test]
fn every_role_in_its_own_process() {
    let d = tempfile::tempdir().expect("tempdir");
    let [c, l, r, s] = [free_port(), free_port(), free_port(), free_port()];
    let cfg = run_file(
        d.path(),
        2,
        "",
        &format!(
            r#"coordinator = "127.0.0.1:{c}"
learner = "127.0.0.1:{l}"
rollout = ["127.0.0.1:{r}"]
scorer = ["127.0.0.1:{s}"]"#
        ),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let _roles = Kill(vec![
        spawn(&["learner", "--config", cfg]),
        spawn(&["rollout", "--config", cfg, "--index", "0"]),
        spawn(&["scorer", "--config", cfg, "--index", "0"]),
    ]);
    coordinate(cfg, &d.path().join("out"), &[]);
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

/// Distributed mode: the roles listen on ports of their own choosing, register themselves in a
/// real etcd, and the coordinator finds them there. A role stopped by a signal leaves at once;
/// one killed with -9 stays until its lease expires.
#[test]
fn roles_find_each_other_through_etcd() {
    let etcd = rlhf_membership::local::LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = run_file(
        d.path(),
        500,
        "",
        &format!(
            "etcd = [\"{}\"]\netcd_prefix = \"/test/run\"\nmember_ttl_s = 60",
            etcd.endpoint()
        ),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let any = "127.0.0.1:0";
    let mut roles = Kill(vec![
        spawn(&["learner", "--config", cfg, "--listen", any]),
        spawn(&["rollout", "--config", cfg, "--index", "0", "--listen", any]),
        spawn(&["scorer", "--config", cfg, "--index", "0", "--listen", any]),
    ]);
    // The coordinator registers its admin API in etcd: `rlhf status|stop --config` find it.
    let coordinator = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg, "--listen", any])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the coordinator");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["status", "--config", cfg])
            .output()
            .expect("rlhf status");
        if out.status.success() {
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if s["iteration"].as_u64() >= Some(1) {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "no progress: {out:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let members = status["members"].as_array().expect("members");
    for (role, name) in [
        ("learner", "learner"),
        ("rollout", "rollout-0"),
        ("scorer", "scorer-0"),
    ] {
        let m = members
            .iter()
            .find(|m| m["role"] == role && m["name"] == name)
            .unwrap_or_else(|| panic!("{role} {name} not in {status}"));
        let address = m["address"].as_str().expect("address");
        assert!(
            address.starts_with("http://127.0.0.1:") && !address.ends_with(":0"),
            "{m}"
        );
    }
    let stop = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["stop", "--config", cfg])
        .output()
        .expect("rlhf stop");
    assert!(stop.status.success(), "{stop:?}");
    let out = coordinator
        .wait_with_output()
        .expect("the coordinator ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    let done = summary["iterations"].as_u64().expect("iterations");
    assert!((1..500).contains(&done), "{summary}");
    assert_eq!(summary["ledger_violations"], 0);
    assert!(d.path().join("out/final/model.safetensors").exists());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let m = rt
        .block_on(rlhf_membership::EtcdMembership::connect(
            &[etcd.endpoint().to_string()],
            "/test/run",
            Duration::from_secs(10),
        ))
        .expect("connect");
    let names = |role| -> Vec<String> {
        let members = rt.block_on(m.members(role)).expect("members");
        members.into_iter().map(|x| x.name).collect()
    };
    assert_eq!(names(Role::Learner), ["learner"]);
    assert_eq!(names(Role::Rollout), ["rollout-0"]);
    assert_eq!(names(Role::Scorer), ["scorer-0"]);
    // The coordinator left when it finished.
    assert!(names(Role::Coordinator).is_empty());
    // SIGTERM: the scorer drains and deregisters, long before its 60 s lease would expire.
    let scorer = roles.0.pop().expect("scorer");
    let term = Command::new("kill")
        .args(["-TERM", &scorer.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !names(Role::Scorer).is_empty() {
        assert!(Instant::now() < deadline, "the scorer did not deregister");
        std::thread::sleep(Duration::from_millis(100));
    }
    roles.0.push(scorer);
    // kill -9: nothing deregisters the rollout worker; etcd keeps it until the lease expires.
    roles.0[1].kill().expect("kill -9");
    roles.0[1].wait().expect("wait");
    assert_eq!(names(Role::Rollout), ["rollout-0"]);
}

/// The coordinator waits for members to register, and names the missing roles when they never
/// come.
#[test]
fn the_coordinator_names_roles_missing_from_etcd() {
    let etcd = rlhf_membership::local::LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = run_file(
        d.path(),
        2,
        "",
        &format!("etcd = [\"{}\"]\nwait_members_s = 2", etcd.endpoint()),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let _learner = Kill(vec![spawn(&[
        "learner",
        "--config",
        cfg,
        "--listen",
        "127.0.0.1:0",
    ])]);
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg])
        .output()
        .expect("run the coordinator");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no rollout, no scorer registered under /rlhf"),
        "{stderr}"
    );
    // A dead etcd is named.
    let dead = format!("127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(cfg)
        .expect("read")
        .replace(etcd.endpoint(), &dead);
    std::fs::write(cfg, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["scorer", "--config", cfg, "--listen", "127.0.0.1:0"])
        .output()
        .expect("run a scorer");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&dead) && stderr.contains("cluster.etcd"),
        "{stderr}"
    );
}

/// Distributed mode with a standby: two coordinators campaign in etcd, one leads and the other
/// waits; the leader is killed with -9 after a checkpoint, and the standby takes over when its
/// lease expires, resumes from that checkpoint with the same (still running) learner and
/// workers, and finishes the run with every iteration logged once and a valid ledger.
#[test]
fn a_standby_coordinator_takes_over_a_killed_leader() {
    let etcd = rlhf_membership::local::LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = run_file(
        d.path(),
        30,
        "checkpoint_every = 2",
        &format!(
            "etcd = [\"{}\"]\netcd_prefix = \"/test/standby\"\nmember_ttl_s = 2",
            etcd.endpoint()
        ),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let any = "127.0.0.1:0";
    let mut roles = Kill(vec![
        spawn(&["learner", "--config", cfg, "--listen", any]),
        spawn(&["rollout", "--config", cfg, "--index", "0", "--listen", any]),
        spawn(&["scorer", "--config", cfg, "--index", "0", "--listen", any]),
        spawn(&["coordinator", "--config", cfg, "--listen", any]),
    ]);
    // The first coordinator leads (its admin API is registered) before the second starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["status", "--config", cfg])
        .output()
        .expect("rlhf status")
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the first coordinator never led");
        std::thread::sleep(Duration::from_millis(100));
    }
    let file = |name: &str| std::fs::File::create(d.path().join(name)).expect("log file");
    let mut standby = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg, "--listen", any])
        .stdout(file("standby.out"))
        .stderr(file("standby.err"))
        .spawn()
        .expect("start the standby");
    let marker = d.path().join("out/checkpoints/iter-00002/resume.json");
    while !marker.exists() {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    let leader = &mut roles.0[3];
    assert!(
        leader.try_wait().expect("wait").is_none(),
        "the leader ended early"
    );
    leader.kill().expect("kill -9 the leader");
    leader.wait().expect("wait");
    let status = wait_exit(&mut standby, "the standby");
    let err = std::fs::read_to_string(d.path().join("standby.err")).expect("stderr");
    assert!(status.success(), "{err}");
    assert!(
        err.contains("standby: the coordinator at http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("taking over the run"), "{err}");
    let out = std::fs::read(d.path().join("standby.out")).expect("stdout");
    let summary: serde_json::Value = serde_json::from_slice(&out).expect("summary JSON");
    assert_eq!(summary["iterations"], 30);
    // 30, not more: the learner was reset to the checkpoint (a fresh start would have counted
    // on from the versions the killed leader had trained).
    assert_eq!(summary["policy_version"], 30);
    assert_eq!(summary["ledger_violations"], 0);
    let metrics = rlhf_data_metrics(&d.path().join("out/metrics.jsonl"));
    assert_eq!(metrics, (0..30).collect::<Vec<u64>>());
}

/// Waits (up to 300 s) for `child` to exit; kills it and fails otherwise.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The iteration of every line of a metrics log, in order.
fn rlhf_data_metrics(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["iteration"]
                .as_u64()
                .expect("iteration")
        })
        .collect()
}

/// Distributed mode under churn: a rollout worker in use is killed with -9 and the run goes on
/// with the other; a worker started mid-run registers in etcd and is leased prompts; the run is
/// then stopped through the admin API, with every sample accounted for once.
#[test]
fn workers_die_and_join_during_a_distributed_run() {
    let etcd = rlhf_membership::local::LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    // One prompt per lease: every live worker gets some of each iteration.
    let cfg = run_file(
        d.path(),
        100_000,
        "prompts_per_lease = 1",
        &format!(
            "etcd = [\"{}\"]\netcd_prefix = \"/test/churn\"\nmember_ttl_s = 2",
            etcd.endpoint()
        ),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let any = "127.0.0.1:0";
    let out = d.path().join("out");
    let mut roles = Kill(vec![
        spawn(&["learner", "--config", cfg, "--listen", any]),
        spawn(&["scorer", "--config", cfg, "--index", "0", "--listen", any]),
        spawn(&["rollout", "--config", cfg, "--index", "0", "--listen", any]),
        spawn(&["rollout", "--config", cfg, "--index", "1", "--listen", any]),
    ]);
    let file = |name: &str| std::fs::File::create(d.path().join(name)).expect("log file");
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg, "--listen", any])
        .stdout(file("coordinator.out"))
        .stderr(file("coordinator.err"))
        .spawn()
        .expect("start the coordinator");
    let lines = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .map(|t| t.lines().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let leased_to = |worker: &str| {
        lines("ledger.jsonl")
            .iter()
            .filter(|l| {
                l.contains("\"event\":\"leased\"")
                    && l.contains(&format!("\"worker\":\"{worker}\""))
            })
            .count()
    };
    let wait = |what: &str, ready: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !ready() {
            assert!(Instant::now() < deadline, "not within 300 s: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("rollout-1 is leased prompts", &|| {
        leased_to("rollout-1") > 0
    });
    roles.0[3].kill().expect("kill -9 rollout-1");
    roles.0[3].wait().expect("wait");
    let at_kill = lines("metrics.jsonl").len();
    wait("three more iterations without rollout-1", &|| {
        lines("metrics.jsonl").len() >= at_kill + 3
    });
    roles.0.push(spawn(&[
        "rollout", "--config", cfg, "--index", "2", "--listen", any,
    ]));
    wait("rollout-2 joins and is leased prompts", &|| {
        leased_to("rollout-2") > 0
    });
    let stop = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["stop", "--config", cfg])
        .output()
        .expect("rlhf stop");
    assert!(stop.status.success(), "{stop:?}");
    let status = wait_exit(&mut coordinator, "the coordinator");
    let err = std::fs::read_to_string(d.path().join("coordinator.err")).expect("stderr");
    assert!(status.success(), "{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("coordinator.out")).expect("stdout"))
            .expect("summary JSON");
    assert_eq!(summary["ledger_violations"], 0, "{summary}");
    let done = summary["iterations"].as_u64().expect("iterations");
    assert!(done >= at_kill as u64 + 3 && done < 100_000, "{summary}");
    assert_eq!(
        rlhf_data_metrics(&out.join("metrics.jsonl")),
        (0..done).collect::<Vec<_>>()
    );
}

/// Distributed mode: the learner is killed with -9 mid-run and a new learner process starts;
/// the coordinator's run fails, and it continues from its newest resume point once the new
/// learner has registered (`cluster.restarts`), restoring the learner's state from the
/// checkpoint: every iteration logged once, policy version equal to the iterations.
#[test]
fn a_killed_learner_is_replaced_and_the_run_continues_from_its_checkpoint() {
    let etcd = rlhf_membership::local::LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = run_file(
        d.path(),
        30,
        "checkpoint_every = 2",
        &format!(
            "etcd = [\"{}\"]\netcd_prefix = \"/test/learner\"\nmember_ttl_s = 2",
            etcd.endpoint()
        ),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let any = "127.0.0.1:0";
    let mut roles = Kill(vec![
        spawn(&["learner", "--config", cfg, "--listen", any]),
        spawn(&["rollout", "--config", cfg, "--index", "0", "--listen", any]),
        spawn(&["scorer", "--config", cfg, "--index", "0", "--listen", any]),
    ]);
    let file = |name: &str| std::fs::File::create(d.path().join(name)).expect("log file");
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["coordinator", "--config", cfg])
        .stdout(file("coordinator.out"))
        .stderr(file("coordinator.err"))
        .spawn()
        .expect("start the coordinator");
    let marker = d.path().join("out/checkpoints/iter-00002/resume.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    roles.0[0].kill().expect("kill -9 the learner");
    roles.0[0].wait().expect("wait");
    roles
        .0
        .push(spawn(&["learner", "--config", cfg, "--listen", any]));
    let status = wait_exit(&mut coordinator, "the coordinator");
    let err = std::fs::read_to_string(d.path().join("coordinator.err")).expect("stderr");
    assert!(status.success(), "{err}");
    assert!(err.contains("restart 1 of cluster.restarts = 3"), "{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("coordinator.out")).expect("stdout"))
            .expect("summary JSON");
    assert_eq!(summary["iterations"], 30);
    assert_eq!(summary["policy_version"], 30);
    assert_eq!(summary["ledger_violations"], 0);
    assert_eq!(
        rlhf_data_metrics(&d.path().join("out/metrics.jsonl")),
        (0..30).collect::<Vec<u64>>()
    );
}
