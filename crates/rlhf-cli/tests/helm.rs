//! The Helm chart (`helm/rlhf`), checked and run for real without a Kubernetes cluster.
//!
//! `helm/check.py` renders and lints the chart with the real Helm library (helm-python-sdk,
//! Helm v4) and validates every object against the Kubernetes API schemas. The end-to-end test
//! then starts every pod the chart declares as a local process, the way the kubelet would: the
//! container's command and args with `$(VAR)` references expanded from its env (downward-API
//! fields included), its ConfigMap, Secret, emptyDir and PersistentVolumeClaim volumes as
//! folders (a Secret's files are the ones the test made, as an operator would), the
//! image's files (deploy/Dockerfile's COPY lines) from this checkout, the chart's readiness
//! probes. Each pod gets a loopback address of its own (127.x.y.z) as its pod IP (so `0.0.0.0`
//! means that address), and Service and pod DNS names resolve to pod IPs. A cluster's
//! scheduling, image pulls, real DNS and kubelet restarts are not exercised here.
//!
//! Needs Python with helm-python-sdk, PyYAML and kubernetes-validate: `RLHF_HELM_PYTHON`
//! (scripts/test makes a virtual environment and sets it), else `python3`.

mod common;

use common::wait_until;
use rlhf_membership::local::LocalEtcd;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Command {
    let python = std::env::var("RLHF_HELM_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut c = Command::new(python);
    c.arg(repo().join("helm/check.py"));
    c
}

/// `check.py ARGS`: stdout, failing with its stderr.
fn check(args: &[&str]) -> String {
    let out = python()
        .args(args)
        .output()
        .expect("run helm/check.py (set RLHF_HELM_PYTHON to a Python with helm-python-sdk)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "helm/check.py {args:?} failed (scripts/test installs its Python packages): {stderr}"
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The chart lints cleanly (strict), every values set in helm/rlhf/ci renders to objects the
/// Kubernetes 1.28 and 1.34 schemas accept, and bad values are refused naming the value.
#[test]
fn the_chart_lints_and_renders_valid_kubernetes_objects() {
    let out = check(&["lint"]);
    for set in [
        "default values",
        "ci/gpu-values.yaml",
        "ci/external-etcd-values.yaml",
        "ci/human-labels-values.yaml",
    ] {
        assert!(out.contains(set), "{set} not checked: {out}");
    }
}

/// The run files the chart writes for its example values sets are run files `rlhf` accepts
/// (their checkpoints stood in for by the tiny fixtures, their GPUs by the CPU).
#[test]
fn the_example_values_give_run_files_rlhf_accepts() {
    let d = tempfile::tempdir().expect("tempdir");
    let models = d.path().join("models");
    std::fs::create_dir_all(&models).expect("models");
    let fixtures = repo().join("tests/fixtures/hf-tiny");
    let secrets = d.path().join("secrets");
    let made = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "certs",
            "--out",
            secrets.to_str().expect("utf-8"),
            "--name",
            "rlhf",
        ])
        .output()
        .expect("rlhf certs");
    assert!(made.status.success(), "{made:?}");
    std::fs::write(secrets.join("tokens"), "viewer 0123456789abcdef0123\n").expect("tokens");
    let secret_dir = format!("{}/", secrets.display());
    for set in [
        "ci/gpu-values.yaml",
        "ci/external-etcd-values.yaml",
        "ci/human-labels-values.yaml",
    ] {
        let objects = render_file(&repo().join("helm/rlhf").join(set));
        if set.contains("human") {
            // The labels outlive the scorer pod: its extra volume is mounted where the run
            // file keeps them.
            let scorer = objects
                .iter()
                .find(|o| o["kind"] == "Job" && name_of(o).ends_with("-scorer"))
                .expect("the scorer Job");
            let pod = &scorer["spec"]["template"]["spec"];
            assert!(
                pod["volumes"].as_array().is_some_and(|v| v.iter().any(|v| {
                    v["name"] == "labels"
                        && v["persistentVolumeClaim"]["claimName"] == "human-labels"
                })),
                "{pod}"
            );
            assert!(
                pod["containers"][0]["volumeMounts"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m["mountPath"] == "/labels")),
                "{pod}"
            );
        }
        let run = config_map(&objects)["data"]["run.toml"]
            .as_str()
            .expect("run.toml")
            .to_string();
        if set.contains("external-etcd") {
            for line in [
                "admin_tokens = \"/etc/rlhf-auth/tokens\"",
                "[cluster.tls]",
                "server_name = \"rlhf.alignment\"",
                "operator_name = \"rlhf-operator.alignment\"",
                "[cluster.etcd_tls]",
                "cert = \"/etc/rlhf-etcd-tls/tls.crt\"",
            ] {
                assert!(run.contains(line), "{set}: no `{line}` in {run}");
            }
        }
        // Every checkpoint under /models becomes a tiny one (a reward model for the scorer).
        for (i, _) in run.match_indices("\"/models/") {
            let name: String = run[i + 9..]
                .chars()
                .take_while(|c| !matches!(c, '/' | '"'))
                .collect();
            let fixture = if name.contains("Reward") {
                "tiny-llama-rm"
            } else {
                "tiny-qwen2"
            };
            let link = models.join(&name);
            if !link.exists() {
                std::os::unix::fs::symlink(fixtures.join(fixture), &link).expect("symlink");
            }
        }
        let toml = d.path().join("run.toml");
        // This build has no CUDA: the GPU settings become CPU ones. The Secrets' files are
        // ones `rlhf certs` made.
        let run = run
            .replace("/etc/rlhf-tls/", &secret_dir)
            .replace("/etc/rlhf-etcd-tls/", &secret_dir)
            .replace("/etc/rlhf-auth/", &secret_dir)
            .replace("\"/models/", &format!("\"{}/", models.display()))
            .replace("\"cuda:0\"", "\"cpu\"")
            .replace("\"bf16\"", "\"f32\"");
        std::fs::write(&toml, &run).expect("write");
        // `rlhf learner --config` loads and checks the whole run file, then connects to etcd:
        // the etcd endpoints (not reachable here) are the only failure.
        let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["learner", "--config", toml.to_str().expect("utf-8")])
            .output()
            .expect("rlhf learner");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("cluster.etcd") && !stderr.contains("run.toml:"),
            "{set}: {stderr}"
        );
    }
}

fn render_file(values: &Path) -> Vec<Value> {
    let out = check(&["render", values.to_str().expect("utf-8")]);
    serde_json::from_str(&out).expect("rendered objects are JSON")
}

fn config_map(objects: &[Value]) -> &Value {
    objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("a ConfigMap")
}

fn name_of(o: &Value) -> String {
    o["metadata"]["name"].as_str().expect("name").to_string()
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One pod of a workload (StatefulSet, Deployment, Job) or a test hook.
struct Pod {
    name: String,
    component: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    spec: Value,
    ip: String,
    /// A volume claim template's claims are per pod: `{template}-{pod}`.
    claim_templates: Vec<String>,
}

/// The chart's objects as pods with addresses, and what resolves to them.
struct Cluster {
    root: PathBuf,
    objects: Vec<Value>,
    pods: Vec<Pod>,
    /// DNS name (a Service, or `pod.service` for StatefulSet pods) to pod IP.
    dns: BTreeMap<String, String>,
    /// Paths inside the image to files of this checkout (deploy/Dockerfile's COPY lines).
    image_files: BTreeMap<String, PathBuf>,
    /// Secrets the operator created before installing: name to (file, contents).
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    children: Vec<(String, Child)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// deploy/Dockerfile's `COPY SRC DST` lines from the build context (not from the build stage),
/// each source checked to exist.
fn image_files() -> BTreeMap<String, PathBuf> {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("Dockerfile");
    let mut files = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() == 3 && words[0] == "COPY" && words[1] != "." {
            let src = repo().join(words[1]);
            assert!(
                src.exists(),
                "deploy/Dockerfile copies {}: missing",
                words[1]
            );
            files.insert(words[2].to_string(), src);
        }
    }
    assert!(
        text.contains("COPY --from=build /src/target/release/rlhf /usr/local/bin/rlhf"),
        "the image's binary"
    );
    files
}

impl Cluster {
    fn new(
        objects: Vec<Value>,
        root: &Path,
        secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> Self {
        // A loopback /24 of its own per cluster: per process, and per cluster in a process (the
        // tests run in parallel threads).
        static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = std::process::id() * 8 + CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let net = format!("127.{}.{}", 1 + n % 250, 1 + (n / 250) % 250);
        let mut pods = Vec::new();
        for o in &objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            let (count, suffix) = match kind {
                "StatefulSet" => (o["spec"]["replicas"].as_u64().unwrap_or(1), ""),
                "Deployment" => (o["spec"]["replicas"].as_u64().unwrap_or(1), "d"),
                "Job" => (o["spec"]["parallelism"].as_u64().unwrap_or(1), "j"),
                "Pod" => (1, "test"),
                _ => continue,
            };
            let template = if kind == "Pod" {
                o.clone()
            } else {
                o["spec"]["template"].clone()
            };
            let claim_templates: Vec<String> = o["spec"]["volumeClaimTemplates"]
                .as_array()
                .map(|t| t.iter().map(name_of).collect())
                .unwrap_or_default();
            for i in 0..count {
                let name = match kind {
                    "Pod" => name_of(o),
                    _ => format!("{}-{suffix}{i}", name_of(o)),
                };
                let mut labels = str_map(&template["metadata"]["labels"]);
                let mut annotations = str_map(&template["metadata"]["annotations"]);
                if kind == "StatefulSet" {
                    labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
                }
                if o["spec"]["completionMode"] == "Indexed" {
                    let index = "batch.kubernetes.io/job-completion-index";
                    labels.insert(index.into(), i.to_string());
                    annotations.insert(index.into(), i.to_string());
                }
                let component = labels
                    .get("app.kubernetes.io/component")
                    .cloned()
                    .unwrap_or_else(|| "test".into());
                pods.push(Pod {
                    ip: format!("{net}.{}", pods.len() + 2),
                    name,
                    component,
                    labels,
                    annotations,
                    spec: template["spec"].clone(),
                    claim_templates: claim_templates
                        .iter()
                        .map(|t| format!("{t}-{}-{i}", name_of(o)))
                        .collect(),
                });
            }
        }
        let mut dns = BTreeMap::new();
        for s in objects.iter().filter(|o| o["kind"] == "Service") {
            let selector = str_map(&s["spec"]["selector"]);
            let selected: Vec<&Pod> = pods
                .iter()
                .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                .collect();
            let service = name_of(s);
            if let Some(p) = selected.first() {
                dns.insert(service.clone(), p.ip.clone());
            }
            for p in selected {
                dns.insert(format!("{}.{service}", p.name), p.ip.clone());
            }
        }
        Cluster {
            root: root.to_path_buf(),
            objects,
            pods,
            dns,
            image_files: image_files(),
            secrets,
            children: Vec::new(),
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    fn pods_of(&self, component: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.component == component)
            .map(|p| p.name.clone())
            .collect()
    }

    /// The pod's view of the world: its mount paths, the image's files, DNS names and
    /// `0.0.0.0`, each replaced by what it is here.
    fn rewrites(&self, pod: &Pod) -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = vec![("0.0.0.0".into(), pod.ip.clone())];
        for (name, ip) in &self.dns {
            r.push((name.clone(), ip.clone()));
        }
        for (path, src) in &self.image_files {
            r.push((path.clone(), src.display().to_string()));
        }
        for (path, dir) in self.mounts(pod) {
            r.push((path, dir.display().to_string()));
        }
        // Longest first: a name never shadows a longer one that starts with it.
        r.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        r
    }

    /// Mount path to host folder for the pod's (only) container.
    fn mounts(&self, pod: &Pod) -> Vec<(String, PathBuf)> {
        let volumes = pod.spec["volumes"].as_array().cloned().unwrap_or_default();
        let container = &pod.spec["containers"][0];
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().expect("mount name");
            let path = m["mountPath"].as_str().expect("mountPath").to_string();
            let dir = match volumes.iter().find(|v| v["name"] == name) {
                Some(v) if v.get("persistentVolumeClaim").is_some() => {
                    self.root.join("claims").join(
                        v["persistentVolumeClaim"]["claimName"]
                            .as_str()
                            .expect("claim"),
                    )
                }
                Some(_) => self.root.join("pods").join(&pod.name).join(name),
                None => {
                    let claim = pod
                        .claim_templates
                        .iter()
                        .find(|c| c.starts_with(&format!("{name}-")))
                        .unwrap_or_else(|| panic!("{}: no volume {name}", pod.name));
                    self.root.join("claims").join(claim)
                }
            };
            mounts.push((path, dir));
        }
        mounts
    }

    /// Starts the pod's container: volumes made, command resolved, env and args expanded.
    fn start(&mut self, name: &str) {
        let pod = self.pod(name);
        let rewrites = self.rewrites(pod);
        let volumes = pod.spec["volumes"].as_array().cloned().unwrap_or_default();
        for (path, dir) in self.mounts(pod) {
            std::fs::create_dir_all(&dir).expect("volume folder");
            let mount = &pod.spec["containers"][0]["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .find(|m| m["mountPath"] == path.as_str())
                .expect("mount")["name"];
            let volume = volumes.iter().find(|v| &v["name"] == mount);
            if let Some(cm) = volume.and_then(|v| v["configMap"]["name"].as_str()) {
                let cm = self
                    .objects
                    .iter()
                    .find(|o| o["kind"] == "ConfigMap" && name_of(o) == cm)
                    .unwrap_or_else(|| panic!("{name}: no ConfigMap {cm}"));
                for (file, text) in str_map(&cm["data"]) {
                    std::fs::write(dir.join(file), rewrite(&text, &rewrites)).expect("write");
                }
            }
            if let Some(secret) = volume.and_then(|v| v["secret"]["secretName"].as_str()) {
                let files = self
                    .secrets
                    .get(secret)
                    .unwrap_or_else(|| panic!("{name}: no Secret {secret} (create it first)"));
                for (file, bytes) in files {
                    std::fs::write(dir.join(file), bytes).expect("write");
                }
            }
        }
        let c = &pod.spec["containers"][0];
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("HOSTNAME".into(), pod.name.clone());
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().expect("env name").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                rewrite(&expand(v, &env), &rewrites)
            } else {
                let field = e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: env {key}: only fieldRef is run here"));
                match field {
                    "status.podIP" => pod.ip.clone(),
                    "metadata.name" => pod.name.clone(),
                    "metadata.namespace" => "ml".into(),
                    f => {
                        let (map, key) = if let Some(k) = f.strip_prefix("metadata.labels['") {
                            (&pod.labels, k)
                        } else if let Some(k) = f.strip_prefix("metadata.annotations['") {
                            (&pod.annotations, k)
                        } else {
                            panic!("{name}: env {key}: field {f}")
                        };
                        let k = key.strip_suffix("']").expect("quoted key");
                        map.get(k)
                            .unwrap_or_else(|| panic!("{name}: no label or annotation {k}"))
                            .clone()
                    }
                }
            };
            env.insert(key, value);
        }
        let mut argv: Vec<String> = c["command"]
            .as_array()
            .into_iter()
            .chain(c["args"].as_array())
            .flatten()
            .map(|a| rewrite(&expand(a.as_str().expect("arg"), &env), &rewrites))
            .collect();
        let program = match argv.remove(0).as_str() {
            "rlhf" => PathBuf::from(env!("CARGO_BIN_EXE_rlhf")),
            "etcd" => LocalEtcd::binary(),
            other => panic!("{name}: no local program for `{other}`"),
        };
        let workdir = self.root.join("pods").join(&pod.name).join("workdir");
        std::fs::create_dir_all(&workdir).expect("workdir");
        let log = |ext: &str| {
            std::fs::File::create(self.root.join(format!("{name}.{ext}"))).expect("log file")
        };
        let child = Command::new(program)
            .args(&argv)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .current_dir(&workdir)
            .stdout(log("out"))
            .stderr(log("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.children.push((name.to_string(), child));
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not started"))
            .1
    }

    /// The pod's readiness probe passes (tcpSocket or httpGet on its port).
    fn ready(&self, name: &str) -> bool {
        let pod = self.pod(name);
        let c = &pod.spec["containers"][0];
        let probe = &c["readinessProbe"];
        let (action, port) = if probe.get("tcpSocket").is_some() {
            ("tcp", &probe["tcpSocket"]["port"])
        } else {
            ("http", &probe["httpGet"]["port"])
        };
        let port = match port.as_u64() {
            Some(p) => p,
            None => c["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|p| &p["name"] == port)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("{name}: no port {port}")),
        };
        let addr = format!("{}:{port}", pod.ip);
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return false;
        };
        if action == "tcp" {
            return true;
        }
        let path = probe["httpGet"]["path"].as_str().unwrap_or("/");
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
    }

    fn log(&self, name: &str, ext: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{name}.{ext}"))).unwrap_or_default()
    }
}

/// `$(VAR)` references to the container's earlier env (Kubernetes' expansion).
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Replaces whole names (paths, hosts, addresses) in one pass: a match must not continue a
/// longer name on either side, and replaced text is never looked at again.
fn rewrite(text: &str, rewrites: &[(String, String)]) -> String {
    let part = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let mut out = String::new();
    let mut i = 0;
    'scan: while i < text.len() {
        let before = text[..i].chars().next_back();
        if before.is_none_or(|c| !part(c)) {
            for (from, to) in rewrites {
                if text[i..].starts_with(from.as_str())
                    && text[i + from.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| !part(c))
                {
                    out.push_str(to);
                    i += from.len();
                    continue 'scan;
                }
            }
        }
        let c = text[i..].chars().next().expect("a char");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn wait_exit(cluster: &mut Cluster, name: &str, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = cluster.child(name).try_wait().expect("wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not exit within {within:?}: {}",
            cluster.log(name, "err")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const VALUES: &str = r#"
runFile: |
  [model]
  path = "/opt/rlhf/models/tiny-qwen2"

  [data]
  builtin = "letters"
  builtin_prompts = 64

  [coordinator]
  output_dir = "/data/run"
  iterations = 40
  prompts_per_iteration = 4
  samples_per_prompt = 4
  checkpoint_every = 2
  eval_every = 20
  eval_prompts = 4

  [coordinator.sampling]
  max_new_tokens = 8

  [learner]
  objective = { name = "dpo" }
  batch_units = 4

  [scorer]
  name = "letters"
  scorer = { type = "rule", name = "letters" }
cluster:
  # The chart's default TTL (10 s) outlasts the new raft election after a member dies.
  memberTtlS: 10
  waitMembersS: 120
coordinator:
  replicas: 2
rollout:
  replicas: 2
etcd:
  replicas: 3
"#;

/// The chart's pods run a distributed run: a three-member etcd, a learner, two rollout workers,
/// a scorer and two coordinators (one leads, one stands by with its admin port closed, so only
/// the leader is ready). `helm test`'s pod reads the run's status; one etcd member is killed
/// mid-run and the run goes on. The Job completes: the leader finishes the run and the standby,
/// leading after it, finds the run finished and leaves it as it is. The learner, rollout and
/// scorer Jobs complete too: their pods exit 0 once the run has ended.
#[test]
fn the_chart_runs_a_distributed_run() {
    let d = tempfile::tempdir().expect("tempdir");
    run_chart(d.path(), VALUES, BTreeMap::new());
}

/// The same with `tls.existingSecret` and `auth.existingSecret`: the Secrets made as
/// docs/security.md says (`rlhf certs --name <release full name>`, a tokens file), every role
/// serving and calling over mutual TLS at its pod IP (certificates checked for the chart's
/// server name), and the `helm test` pod reading the status with the cluster's certificate.
#[test]
fn the_chart_runs_a_distributed_run_over_mutual_tls() {
    let d = tempfile::tempdir().expect("tempdir");
    let certs = d.path().join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args([
            "certs",
            "--out",
            certs.to_str().expect("utf-8"),
            "--name",
            "demo-rlhf",
        ])
        .output()
        .expect("rlhf certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read(certs.join(f)).expect("certificate file");
    let tls: BTreeMap<String, Vec<u8>> = ["ca.crt", "tls.crt", "tls.key"]
        .iter()
        .map(|f| (f.to_string(), read(f)))
        .collect();
    let tokens = BTreeMap::from([(
        "tokens".to_string(),
        b"operator op-token-0123456789abcdef\n".to_vec(),
    )]);
    let secrets = BTreeMap::from([("run-tls".to_string(), tls), ("run-admin".into(), tokens)]);
    let values =
        format!("{VALUES}tls:\n  existingSecret: run-tls\nauth:\n  existingSecret: run-admin\n");
    let members = run_chart(d.path(), &values, secrets);
    assert!(
        members.iter().all(|a| a.starts_with("https://")),
        "{members:?}"
    );
}

/// Installs the chart rendered with `values` and runs it to its end (see the tests above);
/// returns the member addresses the `helm test` pod saw.
fn run_chart(
    root: &Path,
    values: &str,
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Vec<String> {
    let d = root;
    let values_file = d.join("values.yaml");
    std::fs::write(&values_file, values).expect("values");
    let objects = render_file(&values_file);
    let mut cluster = Cluster::new(objects, d, secrets);
    let etcd = cluster.pods_of("etcd");
    assert_eq!(etcd.len(), 3);
    for p in &etcd {
        cluster.start(p);
    }
    for p in &etcd {
        wait_until(&format!("{p} ready"), Duration::from_secs(60), || {
            cluster.ready(p)
        });
    }
    let coordinators = cluster.pods_of("coordinator");
    assert_eq!(coordinators.len(), 2);
    let roles: Vec<String> = ["learner", "rollout", "scorer"]
        .iter()
        .flat_map(|r| cluster.pods_of(r))
        .collect();
    assert_eq!(roles.len(), 4, "{roles:?}");
    for p in roles.iter().chain(&coordinators) {
        cluster.start(p);
    }
    for p in &roles {
        wait_until(&format!("{p} ready"), Duration::from_secs(60), || {
            cluster.ready(p)
        });
    }
    // One coordinator leads (ready), the other stands by (not ready).
    wait_until("a coordinator leads", Duration::from_secs(60), || {
        coordinators.iter().any(|c| cluster.ready(c))
    });
    let leader = coordinators
        .iter()
        .find(|c| cluster.ready(c))
        .expect("a leader")
        .clone();
    let standby = coordinators
        .iter()
        .find(|c| **c != leader)
        .expect("a standby")
        .clone();
    assert!(!cluster.ready(&standby), "the standby is ready");
    // `helm test`: the status pod reaches the leader through etcd.
    let tests = cluster.pods_of("test");
    assert_eq!(tests.len(), 1);
    cluster.start(&tests[0]);
    let status = wait_exit(&mut cluster, &tests[0], Duration::from_secs(60));
    let out = cluster.log(&tests[0], "out");
    assert!(status.success(), "{}", cluster.log(&tests[0], "err"));
    let status: Value = serde_json::from_str(&out).expect("status JSON");
    assert!(
        ["starting", "running"].contains(&status["state"].as_str().unwrap_or_default()),
        "{status}"
    );
    let members: Vec<String> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["address"].as_str().expect("address").to_string())
        .collect();
    assert_eq!(members.len(), 4, "{status}");
    // One etcd member of three dies mid-run.
    let run = d.join("claims/demo-rlhf-output/run");
    let marker = run.join("checkpoints/iter-00002/resume.json");
    wait_until("the first checkpoints", Duration::from_secs(300), || {
        marker.exists()
    });
    cluster
        .child(&etcd[0])
        .kill()
        .expect("kill -9 an etcd member");
    // The Job completes: every coordinator pod exits 0 with the same summary.
    let mut summaries = Vec::new();
    for c in [&leader, &standby] {
        let status = wait_exit(&mut cluster, c, Duration::from_secs(300));
        assert!(status.success(), "{c}: {}", cluster.log(c, "err"));
        let summary: Value = serde_json::from_str(&cluster.log(c, "out")).expect("summary");
        summaries.push(summary);
    }
    assert_eq!(
        summaries[0],
        summaries[1],
        "{}",
        cluster.log(&leader, "err")
    );
    // The run went on through the etcd member's death: no restart, no change of leader.
    let led = cluster.log(&leader, "err");
    assert!(
        !led.contains("restart") && !led.contains("lost leadership"),
        "{led}"
    );
    assert_eq!(summaries[0]["iterations"], 40);
    assert_eq!(summaries[0]["policy_version"], 40);
    assert_eq!(summaries[0]["ledger_violations"], 0);
    assert!(
        cluster.log(&standby, "err").contains("already finished"),
        "{}",
        cluster.log(&standby, "err")
    );
    let iterations: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON")["iteration"]
                .as_u64()
                .expect("iteration")
        })
        .collect();
    assert_eq!(iterations, (0..40).collect::<Vec<u64>>());
    assert!(run.join("final/model.safetensors").exists());
    // The run ended: the learner's, rollout workers' and scorer's Jobs complete too, every
    // pod exiting 0 by itself (`exit_after_run`), so their GPUs are free before `helm
    // uninstall`.
    for p in &roles {
        let status = wait_exit(&mut cluster, p, Duration::from_secs(60));
        assert!(status.success(), "{p}: {}", cluster.log(p, "err"));
        assert!(
            cluster.log(p, "err").contains("the run ended"),
            "{p}: {}",
            cluster.log(p, "err")
        );
    }
    members
}
