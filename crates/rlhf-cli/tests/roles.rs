//! One role per process: `rlhf learner`, `rlhf rollout`, `rlhf scorer` and `rlhf coordinator`
//! started as separate OS processes, talking gRPC over loopback TCP, with static addresses from
//! the run file's `[cluster]` or registered in a real etcd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::wait_until;
use rlhf_membership::local::LocalEtcd;
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

/// Where a role listens in the etcd tests: any free port.
const ANY: &str = "127.0.0.1:0";

/// The `[cluster]` lines of a run through `etcd` under `prefix`, with leases of `ttl_s`.
fn etcd_cluster(etcd: &LocalEtcd, prefix: &str, ttl_s: u32) -> String {
    format!(
        "etcd = [\"{}\"]\netcd_prefix = \"{prefix}\"\nmember_ttl_s = {ttl_s}",
        etcd.endpoint()
    )
}

/// `rlhf ROLE --config CFG --index INDEX` listening on a free port.
fn listening(cfg: &str, role: &str, index: usize) -> Child {
    spawn(&[
        role,
        "--config",
        cfg,
        "--index",
        &index.to_string(),
        "--listen",
        ANY,
    ])
}

/// A learner, rollout worker 0 and scorer 0 registering themselves.
fn learner_rollout_scorer(cfg: &str) -> Vec<Child> {
    vec![
        listening(cfg, "learner", 0),
        listening(cfg, "rollout", 0),
        listening(cfg, "scorer", 0),
    ]
}

/// `rlhf ARGS` with stdout and stderr in `dir/NAME.out` and `dir/NAME.err`.
fn spawn_logged(dir: &Path, name: &str, args: &[&str]) -> Child {
    let file = |ext: &str| std::fs::File::create(dir.join(format!("{name}.{ext}"))).expect("log");
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .stdout(file("out"))
        .stderr(file("err"))
        .spawn()
        .expect("spawn")
}

/// Waits for a coordinator started by [`spawn_logged`] to succeed; its summary and stderr.
fn summary_of(dir: &Path, name: &str, child: &mut Child) -> (serde_json::Value, String) {
    let status = wait_exit(child, name);
    let err = std::fs::read_to_string(dir.join(format!("{name}.err"))).expect("stderr");
    assert!(status.success(), "{err}");
    let out = std::fs::read(dir.join(format!("{name}.out"))).expect("stdout");
    (serde_json::from_slice(&out).expect("summary JSON"), err)
}

/// The checkpoint after iteration 2 is a resume point.
fn second_checkpoint(dir: &Path) -> impl Fn() -> bool {
    let marker = dir.join("out/checkpoints/iter-00002/resume.json");
    move || marker.exists()
}

/// Distributed mode: the roles listen on ports of their own choosing, register themselves in a
/// real etcd, and the coordinator finds them there. A role stopped by a signal leaves at once;
/// one killed with -9 stays until its lease expires.
#[test]
fn roles_find_each_other_through_etcd() {
    let etcd = LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = run_file(d.path(), 500, "", &etcd_cluster(&etcd, "/test/run", 60));
    let cfg = cfg.to_str().expect("utf-8");
    let mut roles = Kill(learner_rollout_scorer(cfg));
    // The coordinator registers its admin API in etcd: `rlhf status|stop --config` find it.
    let mut coordinator = spawn_logged(
        d.path(),
        "coordinator",
        &["coordinator", "--config", cfg, "--listen", ANY],
    );
    let status = std::cell::RefCell::new(serde_json::Value::Null);
    wait_until("the run progresses", Duration::from_secs(120), || {
        let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["status", "--config", cfg])
            .output()
            .expect("rlhf status");
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ready = out.status.success() && s["iteration"].as_u64() >= Some(1);
        *status.borrow_mut() = s;
        ready
    });
    let status = status.into_inner();
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
    let (summary, _) = summary_of(d.path(), "coordinator", &mut coordinator);
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
            None,
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
    let term = Command::new("kill")
        .args(["-TERM", &roles.0[2].id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    wait_until("the scorer deregisters", Duration::from_secs(20), || {
        names(Role::Scorer).is_empty()
    });
    // kill -9: nothing deregisters the rollout worker; etcd keeps it until the lease expires.
    roles.0[1].kill().expect("kill -9");
    roles.0[1].wait().expect("wait");
    assert_eq!(names(Role::Rollout), ["rollout-0"]);
}

/// The coordinator waits for members to register, and names the missing roles when they never
/// come.
#[test]
fn the_coordinator_names_roles_missing_from_etcd() {
    let etcd = LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = run_file(
        d.path(),
        2,
        "",
        &format!("etcd = [\"{}\"]\nwait_members_s = 2", etcd.endpoint()),
    );
    let cfg = cfg.to_str().expect("utf-8");
    let _learner = Kill(vec![listening(cfg, "learner", 0)]);
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
        .args(["scorer", "--config", cfg, "--listen", ANY])
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
    let etcd = LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cluster = etcd_cluster(&etcd, "/test/standby", 2);
    let cfg = run_file(d.path(), 30, "checkpoint_every = 2", &cluster);
    let cfg = cfg.to_str().expect("utf-8");
    let mut roles = Kill(learner_rollout_scorer(cfg));
    roles
        .0
        .push(spawn(&["coordinator", "--config", cfg, "--listen", ANY]));
    // The first coordinator leads (its admin API is registered) before the second starts.
    wait_until(
        "the first coordinator leads",
        Duration::from_secs(120),
        || {
            Command::new(env!("CARGO_BIN_EXE_rlhf"))
                .args(["status", "--config", cfg])
                .output()
                .expect("rlhf status")
                .status
                .success()
        },
    );
    // The standby's admin port stays closed until it leads (a Kubernetes Service or readiness
    // check reaches only the leader).
    // A loopback address of its own: the other tests' listeners (all on 127.0.0.1) cannot
    // take its port while it is closed and make it look open.
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let standby_at = format!("127.0.0.2:{port}");
    let mut standby = spawn_logged(
        d.path(),
        "standby",
        &["coordinator", "--config", cfg, "--listen", &standby_at],
    );
    let standby_err = d.path().join("standby.err");
    wait_until("the standby waits", Duration::from_secs(60), || {
        std::fs::read_to_string(&standby_err).is_ok_and(|e| e.contains("standby:"))
    });
    let admin_open = || std::net::TcpStream::connect(&standby_at).is_ok();
    assert!(!admin_open(), "a standby accepts admin connections");
    wait_until(
        "a checkpoint",
        Duration::from_secs(300),
        second_checkpoint(d.path()),
    );
    let leader = &mut roles.0[3];
    assert!(
        leader.try_wait().expect("wait").is_none(),
        "the leader ended early"
    );
    assert!(!admin_open(), "a standby accepts admin connections");
    leader.kill().expect("kill -9 the leader");
    leader.wait().expect("wait");
    wait_until(
        "the new leader serves the admin API",
        Duration::from_secs(120),
        admin_open,
    );
    let (summary, err) = summary_of(d.path(), "standby", &mut standby);
    assert!(
        err.contains("standby: the coordinator at http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("taking over the run"), "{err}");
    assert_eq!(summary["iterations"], 30);
    // 30, not more: the learner was reset to the checkpoint (a fresh start would have counted
    // on from the versions the killed leader had trained).
    assert_eq!(summary["policy_version"], 30);
    assert_eq!(summary["ledger_violations"], 0);
    let metrics = rlhf_data_metrics(&d.path().join("out/metrics.jsonl"));
    assert_eq!(metrics, (0..30).collect::<Vec<u64>>());
    // A coordinator that leads after the run finished (a standby's turn, a restarted pod)
    // leaves it as it is: the same summary, the logs untouched.
    let mut late = spawn_logged(
        d.path(),
        "late",
        &["coordinator", "--config", cfg, "--listen", ANY, "--resume"],
    );
    let (again, _) = summary_of(d.path(), "late", &mut late);
    assert_eq!(again, summary);
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
    let etcd = LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    // One prompt per lease: every live worker gets some of each iteration.
    let cluster = etcd_cluster(&etcd, "/test/churn", 2);
    let cfg = run_file(d.path(), 100_000, "prompts_per_lease = 1", &cluster);
    let cfg = cfg.to_str().expect("utf-8");
    let out = d.path().join("out");
    let mut roles = Kill(learner_rollout_scorer(cfg));
    roles.0.push(listening(cfg, "rollout", 1));
    let mut coordinator = spawn_logged(
        d.path(),
        "coordinator",
        &["coordinator", "--config", cfg, "--listen", ANY],
    );
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
    let within = Duration::from_secs(300);
    wait_until("rollout-1 is leased prompts", within, || {
        leased_to("rollout-1") > 0
    });
    roles.0[3].kill().expect("kill -9 rollout-1");
    roles.0[3].wait().expect("wait");
    let at_kill = lines("metrics.jsonl").len();
    wait_until("three more iterations without rollout-1", within, || {
        lines("metrics.jsonl").len() >= at_kill + 3
    });
    roles.0.push(listening(cfg, "rollout", 2));
    wait_until("rollout-2 joins and is leased prompts", within, || {
        leased_to("rollout-2") > 0
    });
    let stop = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["stop", "--config", cfg])
        .output()
        .expect("rlhf stop");
    assert!(stop.status.success(), "{stop:?}");
    let (summary, _) = summary_of(d.path(), "coordinator", &mut coordinator);
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
    let etcd = LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cluster = etcd_cluster(&etcd, "/test/learner", 2);
    let cfg = run_file(d.path(), 30, "checkpoint_every = 2", &cluster);
    let cfg = cfg.to_str().expect("utf-8");
    let mut roles = Kill(learner_rollout_scorer(cfg));
    let mut coordinator = spawn_logged(d.path(), "coordinator", &["coordinator", "--config", cfg]);
    wait_until(
        "a checkpoint",
        Duration::from_secs(300),
        second_checkpoint(d.path()),
    );
    roles.0[0].kill().expect("kill -9 the learner");
    roles.0[0].wait().expect("wait");
    roles.0.push(listening(cfg, "learner", 0));
    let (summary, err) = summary_of(d.path(), "coordinator", &mut coordinator);
    assert!(err.contains("restart 1 of cluster.restarts = 3"), "{err}");
    assert_eq!(summary["iterations"], 30);
    assert_eq!(summary["policy_version"], 30, "{err}");
    assert_eq!(summary["ledger_violations"], 0);
    assert_eq!(
        rlhf_data_metrics(&d.path().join("out/metrics.jsonl")),
        (0..30).collect::<Vec<u64>>()
    );
}

/// `rlhf ARGS` with extra environment; its exit status, stdout and stderr.
fn rlhf_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .env_remove("RLHF_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run rlhf");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Transport security end to end: certificates from `rlhf certs`, etcd with TLS and client
/// certificates, every role serving and calling over mutual TLS, and an admin API that takes a
/// member's certificate or a token of the right role. A client without a certificate of the
/// cluster's CA cannot call a role.
#[test]
fn roles_over_mutual_tls_with_admin_tokens() {
    let d = tempfile::tempdir().expect("tempdir");
    let tls = d.path().join("tls");
    let certs = |stem: &str| {
        let (ok, out, err) = rlhf_env(
            &[
                "certs",
                "--out",
                tls.to_str().expect("utf-8"),
                "--name",
                "127.0.0.1",
                "--stem",
                stem,
            ],
            &[],
        );
        assert!(ok, "{err}");
        (out, err)
    };
    let (snippet, made) = certs("node");
    assert!(
        snippet.starts_with("[cluster.tls]") && made.contains("made a CA"),
        "{made}"
    );
    let (_, reused) = certs("etcd");
    assert!(reused.contains("existing CA"), "{reused}");
    let f = |name: &str| tls.join(name).display().to_string();
    let etcd = LocalEtcd::start_tls(
        &tls.join("ca.crt"),
        &tls.join("etcd.crt"),
        &tls.join("etcd.key"),
    )
    .expect("start etcd with TLS");
    let (viewer, operator) = ("viewer-token-0123456789", "operator-token-0123456789");
    let tokens = d.path().join("tokens");
    std::fs::write(&tokens, format!("viewer {viewer}\noperator {operator}\n")).expect("tokens");
    let etcd_lines = format!(
        "{}\n\n[cluster.etcd_tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        etcd_cluster(&etcd, "/test/tls", 60),
        ca = f("ca.crt"),
        cert = f("node.crt"),
        key = f("node.key"),
    );
    let cluster = format!(
        "admin_tokens = \"{}\"\n{etcd_lines}\n[cluster.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\noperator_name = \"rlhf-operator\"\n",
        tokens.display(),
        f("ca.crt"),
        f("node.crt"),
        f("node.key"),
    );
    let cfg = run_file(d.path(), 500, "", &cluster);
    let cfg = cfg.to_str().expect("utf-8");
    let _roles = Kill(learner_rollout_scorer(cfg));
    let mut coordinator = spawn_logged(
        d.path(),
        "coordinator",
        &["coordinator", "--config", cfg, "--listen", ANY],
    );
    // An operator's file: where etcd is, and the cluster's CA, but no member certificate.
    let ops = d.path().join("ops.toml");
    std::fs::write(
        &ops,
        format!(
            "[cluster]\n{etcd_lines}\n[cluster.tls]\nca = \"{}\"\n",
            f("ca.crt")
        ),
    )
    .expect("ops file");
    let ops = ops.to_str().expect("utf-8");
    let status = std::cell::RefCell::new(serde_json::Value::Null);
    wait_until("the run progresses", Duration::from_secs(120), || {
        let (ok, out, _) = rlhf_env(&["status", "--config", ops], &[("RLHF_TOKEN", viewer)]);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let ready = ok && s["iteration"].as_u64() >= Some(1);
        *status.borrow_mut() = s;
        ready
    });
    let status = status.into_inner();
    let learner = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["role"] == "learner")
        .and_then(|m| m["address"].as_str())
        .expect("learner address")
        .to_string();
    assert!(learner.starts_with("https://127.0.0.1:"), "{status}");

    // No token, or a viewer's token for a stop: refused, saying why.
    let (ok, _, err) = rlhf_env(&["status", "--config", ops], &[]);
    assert!(!ok && err.contains("needs a token"), "{err}");
    let (ok, _, err) = rlhf_env(&["stop", "--config", ops], &[("RLHF_TOKEN", viewer)]);
    assert!(!ok && err.contains("viewer token may not"), "{err}");
    // A member's certificate (the roles' own run file) reads the status without a token, but
    // is no operator (`operator_name`).
    let (ok, _, err) = rlhf_env(&["status", "--config", cfg], &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = rlhf_env(&["pause", "--config", cfg], &[]);
    assert!(!ok && err.contains("viewer certificate may not"), "{err}");

    // The learner, called directly: only a client with a certificate of the cluster's CA.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let call = |tls: Option<&rlhf_proto::security::Tls>| {
        rt.block_on(async {
            let channel = rlhf_proto::security::endpoint(&learner, tls)
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let mut c = rlhf_proto::v1::learner_client::LearnerClient::new(channel);
            c.status(rlhf_proto::v1::LearnerStatusRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    };
    let load = |dir: &Path, stem: &str| {
        let (ca, cert, key) = (
            dir.join("ca.crt"),
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        rlhf_proto::security::Tls::load(&ca, Some((&cert, &key)), None).expect("load TLS")
    };
    call(Some(&load(&tls, "node"))).expect("a member reaches the learner");
    call(None).expect_err("plaintext reached the learner");
    let ca_only = rlhf_proto::security::Tls::load(&tls.join("ca.crt"), None, None).expect("ca");
    call(Some(&ca_only)).expect_err("a client without a certificate reached the learner");
    let other = d.path().join("other");
    let (ok, _, err) = rlhf_env(
        &[
            "certs",
            "--out",
            other.to_str().expect("utf-8"),
            "--name",
            "127.0.0.1",
        ],
        &[],
    );
    assert!(ok, "{err}");
    call(Some(&load(&other, "tls"))).expect_err("another CA's certificate reached the learner");

    // By address (`--coordinator`, as behind a port-forward): TLS needs --ca, and the
    // certificate must name the host dialled or --server-name.
    let coordinator_at = rt
        .block_on(async {
            let etcd_tls = rlhf_proto::security::Tls::load(
                &tls.join("ca.crt"),
                Some((&tls.join("node.crt"), &tls.join("node.key"))),
                None,
            )?;
            let m = rlhf_membership::EtcdMembership::connect(
                &[etcd.endpoint().to_string()],
                "/test/tls",
                Duration::from_secs(10),
                Some(&etcd_tls),
            )
            .await?;
            anyhow::Ok(m.members(Role::Coordinator).await?)
        })
        .expect("the coordinator in etcd")
        .first()
        .expect("a coordinator")
        .address
        .clone();
    let ca = f("ca.crt");
    let by_address = |extra: &[&str]| {
        let mut args = vec!["status", "--coordinator", coordinator_at.as_str()];
        args.extend_from_slice(extra);
        rlhf_env(&args, &[("RLHF_TOKEN", viewer)])
    };
    let (ok, _, err) = by_address(&[]);
    assert!(!ok && err.contains("pass --ca"), "{err}");
    let (ok, _, err) = by_address(&["--ca", &ca]);
    assert!(ok, "{err}");
    let (ok, _, err) = by_address(&["--ca", &ca, "--server-name", "elsewhere.example"]);
    assert!(!ok && err.contains("cannot reach"), "{err}");

    // An operator's token stops the run.
    let token_file = d.path().join("operator.token");
    std::fs::write(&token_file, format!("{operator}\n")).expect("token file");
    let (ok, _, err) = rlhf_env(
        &[
            "stop",
            "--config",
            ops,
            "--token-file",
            token_file.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (summary, _) = summary_of(d.path(), "coordinator", &mut coordinator);
    let done = summary["iterations"].as_u64().expect("iterations");
    assert!((1..500).contains(&done), "{summary}");
    assert_eq!(summary["ledger_violations"], 0);
}

/// `cluster.exit_after_run`: once the coordinator has finished the run, the learner, the rollout
/// worker and the scorer exit with status 0 by themselves (on Kubernetes their Jobs complete
/// and free their GPUs); without it they stay for the next run (the tests above). A role of the
/// same `run_id` that starts only after the end (pending, or restarted late) exits at once; one
/// of another run id waits for its own run.
#[test]
fn roles_exit_after_the_run_when_asked() {
    let etcd = LocalEtcd::start().expect("start etcd");
    let d = tempfile::tempdir().expect("tempdir");
    let cluster = |id: &str| {
        format!(
            "{}\nexit_after_run = true\nrun_id = \"{id}\"",
            etcd_cluster(&etcd, "/test/exit", 60)
        )
    };
    let cfg = run_file(d.path(), 2, "", &cluster("r1"));
    let cfg = cfg.to_str().expect("utf-8");
    let mut roles = Kill(learner_rollout_scorer(cfg));
    coordinate(cfg, &d.path().join("out"), &[]);
    for (i, role) in ["learner", "rollout", "scorer"].iter().enumerate() {
        let status = wait_exit(&mut roles.0[i], role);
        assert!(status.success(), "{role}: {status}");
    }
    let late = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["rollout", "--config", cfg, "--index", "1", "--listen", ANY])
        .output()
        .expect("a late rollout worker");
    let said = String::from_utf8_lossy(&late.stderr);
    assert!(
        late.status.success() && said.contains("run r1 already ended"),
        "{said}"
    );
    let next = tempfile::tempdir().expect("tempdir");
    let next_cfg = run_file(next.path(), 2, "", &cluster("r2"));
    let mut other = Kill(vec![listening(
        next_cfg.to_str().expect("utf-8"),
        "rollout",
        0,
    )]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        other.0[0].try_wait().expect("try_wait").is_none(),
        "a role of run r2 left on run r1's end"
    );
}
