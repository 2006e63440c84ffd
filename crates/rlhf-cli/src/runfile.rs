//! The run file (TOML) that `rlhf run` and the role commands read: one file describes the
//! whole experiment; each role takes its section. Unknown keys are errors, and every section is
//! validated at start-up with the offending field named.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rlhf_coordinator::{CoordinatorConfig, DataConfig};
use rlhf_learner::LearnerConfig;
use rlhf_proto::security::{AdminAuth, AdminTokens, Tls};
use rlhf_reward::ScorerServiceConfig;
use rlhf_rollout::RolloutConfig;
use serde::Deserialize;

/// The policy every role starts from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face checkpoint folder (relative paths are relative to the run file's folder,
    /// then to the working directory).
    pub path: PathBuf,
    /// cpu or cuda:N, for the learner and the rollout workers (unless `learner.device` or
    /// `rollout.devices` say otherwise).
    #[serde(default)]
    pub device: String,
    /// Compute precision of the learner and the rollout workers: `f32` (default) or `bf16`
    /// (docs/gpu.md; needs a GPU).
    #[serde(default)]
    pub precision: String,
}

/// Rollout workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Workers `rlhf run` starts (1 when left out; one per entry of `devices` when those are
    /// given).
    #[serde(default)]
    pub workers: Option<usize>,
    /// One worker per entry, on that device (`cpu`, `cuda:N`): e.g. the learner on `cuda:0`
    /// and generators on `cuda:1`, `cuda:2`. Empty: every worker on `model.device`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Rows decoded together per worker.
    #[serde(default = "default_rows")]
    pub max_batch_rows: usize,
}

fn default_rows() -> usize {
    64
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            workers: None,
            devices: vec![],
            max_batch_rows: default_rows(),
        }
    }
}

impl RolloutSection {
    /// How many workers run: one per device when `devices` is given, else `workers` (1).
    pub fn worker_count(&self) -> usize {
        if self.devices.is_empty() {
            self.workers.unwrap_or(1)
        } else {
            self.devices.len()
        }
    }

    /// Checks `workers` against `devices`, naming the field.
    fn validate(&self) -> Result<()> {
        match self.workers {
            Some(0) => bail!("rollout.workers must be at least 1"),
            Some(w) if !self.devices.is_empty() && w != self.devices.len() => bail!(
                "rollout.workers is {w} but rollout.devices lists {} devices: leave workers out \
                 (one worker runs per device)",
                self.devices.len()
            ),
            _ => Ok(()),
        }
    }
}

/// One role per process (`rlhf coordinator|rollout|scorer|learner`): static addresses, or etcd.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// host:port of the coordinator's admin API.
    #[serde(default)]
    pub coordinator: Option<String>,
    /// host:port of the learner.
    #[serde(default)]
    pub learner: Option<String>,
    /// host:port of each rollout worker.
    #[serde(default)]
    pub rollout: Vec<String>,
    /// host:port of each scorer.
    #[serde(default)]
    pub scorer: Vec<String>,
    /// etcd endpoints (`host:port`). With them the roles register themselves in etcd (with a
    /// lease of `member_ttl_s`, heartbeated) and the coordinator finds them there instead of
    /// in the static lists above.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// Key prefix in etcd: runs with different prefixes share an etcd without seeing each other.
    #[serde(default = "default_etcd_prefix")]
    pub etcd_prefix: String,
    /// Seconds a member stays registered after its last heartbeat (heartbeats every third).
    #[serde(default = "default_member_ttl_s")]
    pub member_ttl_s: u64,
    /// Seconds the coordinator waits for a learner, a rollout worker and a scorer to register.
    #[serde(default = "default_wait_members_s")]
    pub wait_members_s: u64,
    /// With etcd: how many times a run that failed because a role died or could not be
    /// reached is continued from its newest resume point, once every role is back.
    #[serde(default = "default_restarts")]
    pub restarts: u32,
    /// With etcd: the learner, rollout workers and scorers exit (status 0) once the run they
    /// serve ends (the coordinator marks it in etcd), instead of waiting for the next run. The
    /// Helm chart sets it, so that the roles' Jobs complete and free their GPUs.
    #[serde(default)]
    pub exit_after_run: bool,
    /// Names this run (with `exit_after_run`): its end mark carries it, and a role with the
    /// same `run_id` that starts after the run ended (it was pending, or restarted late) exits
    /// at once instead of waiting for a next run. Roles ignore the marks of other run ids.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Mutual TLS between the roles, and TLS on the admin API (docs/security.md).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// TLS to etcd's client port: etcd's CA, and this process's certificate and key when etcd
    /// checks clients (`--client-cert-auth`).
    #[serde(default)]
    pub etcd_tls: Option<TlsSection>,
    /// A file of admin API tokens, one `<role> <token>` per line (`viewer`: status;
    /// `operator`: also stop, pause, unpause). Without it the admin API is open.
    #[serde(default)]
    pub admin_tokens: Option<PathBuf>,
}

/// PEM files for TLS (relative paths are relative to the run file's folder, then to the
/// working directory).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The CA that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This process's certificate (chain), presented when serving and calling.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name to check in servers' certificates instead of the host of each address (one
    /// certificate with this name can then serve every role, whatever its address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// `[cluster.tls]` only: on the admin API, only client certificates valid for this name
    /// count as operators; other members' certificates may read the status (viewer). Without
    /// it any certificate of the CA is an operator.
    #[serde(default)]
    pub operator_name: Option<String>,
}

impl TlsSection {
    fn validate(&self, field: &str) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            bail!("{field}: give both `cert` and `key`, or neither");
        }
        if self
            .server_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            bail!("{field}.server_name: empty (leave it out to check each address's host)");
        }
        if let Some(n) = &self.operator_name
            && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            bail!("{field}.operator_name: `{n}` is not a DNS name");
        }
        Ok(())
    }

    fn resolve(&mut self, base: &Path) {
        self.ca = resolve(base, &self.ca);
        for p in [&mut self.cert, &mut self.key].into_iter().flatten() {
            *p = resolve(base, p);
        }
    }

    /// Reads the files; `identity`: this process's certificate and key are required.
    fn load(&self, field: &str, identity: bool) -> Result<Tls> {
        let pair = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ if identity => bail!(
                "{field}: `cert` and `key` are required here (a role serves and calls with its \
                 certificate)"
            ),
            _ => None,
        };
        Tls::load(&self.ca, pair, self.server_name.clone()).with_context(|| field.to_string())
    }
}

/// Which process reads `[cluster]`'s security settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The coordinator (`rlhf run` too): serves the admin API, so it reads the tokens too.
    Coordinator,
    /// A learner, rollout worker or scorer.
    Role,
    /// A client of the admin API (`rlhf status` ...).
    AdminClient,
}

/// The transport security `[cluster]` asks for, with its files read.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Mutual TLS between the roles (and TLS on the admin API).
    pub tls: Option<Tls>,
    /// TLS to etcd.
    pub etcd_tls: Option<Tls>,
    /// The admin API's tokens.
    pub admin: AdminAuth,
}

fn default_restarts() -> u32 {
    3
}

impl ClusterSection {
    /// Only the `[cluster]` section of a run file, checked: what `rlhf status | stop | pause`
    /// need to find the coordinator, without the rest of the run (its checkpoints may be on
    /// another machine).
    pub fn load(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            cluster: ClusterSection,
        }
        let mut only: Only = read_toml(path)?;
        only.cluster
            .validate()
            .with_context(|| format!("{}: invalid [cluster]", path.display()))?;
        only.cluster
            .resolve(path.parent().unwrap_or(Path::new(".")));
        Ok(only.cluster)
    }

    fn resolve(&mut self, base: &Path) {
        for t in [&mut self.tls, &mut self.etcd_tls].into_iter().flatten() {
            t.resolve(base);
        }
        if let Some(p) = &mut self.admin_tokens {
            *p = resolve(base, p);
        }
    }

    /// Reads the TLS files, and the tokens file when this process serves the admin API
    /// (only the coordinator reads it). A process serving a role needs its
    /// certificate and key; an admin client may have only the CA.
    pub fn security(&self, process: Process) -> Result<Security> {
        let role = process != Process::AdminClient;
        let tls = match &self.tls {
            Some(t) => Some(t.load("cluster.tls", role)?),
            None => None,
        };
        let etcd_tls = match &self.etcd_tls {
            Some(t) => Some(t.load("cluster.etcd_tls", false)?),
            None => None,
        };
        let tokens = match &self.admin_tokens {
            Some(p) if process == Process::Coordinator => {
                Some(AdminTokens::load(p).context("cluster.admin_tokens")?)
            }
            _ => None,
        };
        if tokens.is_some() && tls.is_none() {
            tracing::warn!(
                "cluster.admin_tokens without cluster.tls: tokens cross the network in clear \
                 text"
            );
        }
        if self
            .etcd_tls
            .as_ref()
            .is_some_and(|t| t.operator_name.is_some())
        {
            bail!("cluster.etcd_tls.operator_name: only [cluster.tls] names operators");
        }
        let operator_name = self.tls.as_ref().and_then(|t| t.operator_name.clone());
        Ok(Security {
            tls,
            etcd_tls,
            admin: AdminAuth::new(tokens).with_operator_name(operator_name),
        })
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            coordinator: None,
            learner: None,
            rollout: Vec::new(),
            scorer: Vec::new(),
            etcd: Vec::new(),
            etcd_prefix: default_etcd_prefix(),
            member_ttl_s: default_member_ttl_s(),
            wait_members_s: default_wait_members_s(),
            restarts: default_restarts(),
            exit_after_run: false,
            run_id: None,
            tls: None,
            etcd_tls: None,
            admin_tokens: None,
        }
    }
}

impl ClusterSection {
    fn validate(&self) -> Result<()> {
        if self.member_ttl_s < 2 {
            bail!(
                "cluster.member_ttl_s is {}: it must be at least 2 (heartbeats every third of it)",
                self.member_ttl_s
            );
        }
        if !self.etcd_prefix.starts_with('/') {
            bail!(
                "cluster.etcd_prefix `{}` must start with `/`",
                self.etcd_prefix
            );
        }
        if self.exit_after_run && self.etcd.is_empty() {
            bail!("cluster.exit_after_run: needs cluster.etcd (the run's end is marked there)");
        }
        if let Some(t) = &self.tls {
            t.validate("cluster.tls")?;
        }
        if let Some(t) = &self.etcd_tls {
            t.validate("cluster.etcd_tls")?;
            if self.etcd.is_empty() {
                bail!("cluster.etcd_tls: set, but cluster.etcd names no endpoint");
            }
        }
        Ok(())
    }
}

fn default_etcd_prefix() -> String {
    "/rlhf".into()
}

fn default_member_ttl_s() -> u64 {
    10
}

fn default_wait_members_s() -> u64 {
    300
}

/// A whole run file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    pub model: ModelSection,
    pub data: DataConfig,
    pub coordinator: CoordinatorConfig,
    #[serde(default = "default_learner")]
    pub learner: LearnerConfig,
    #[serde(default)]
    pub rollout: RolloutSection,
    pub scorer: ScorerServiceConfig,
    #[serde(default)]
    pub cluster: ClusterSection,
    /// An `rlhf eval` config (docs/eval.md) without `[[policies]]`: after the run, the initial
    /// policy, every checkpoint and the final policy are evaluated with it.
    #[serde(default)]
    pub eval: Option<toml::Table>,
}

fn default_learner() -> LearnerConfig {
    LearnerConfig::new(PathBuf::new())
}

/// Resolves a relative path against the run file's folder when it exists there.
/// Reads a TOML file into `T`; a parse error names the file, on one line.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            e.to_string().replace('\n', " ").trim()
        )
    })
}

/// Resolves each relative path against the folder of `file` when it exists there.
pub fn resolve_beside(file: &Path, paths: &mut [&mut PathBuf]) {
    let base = file.parent().unwrap_or(Path::new("."));
    for p in paths.iter_mut() {
        **p = resolve(base, p);
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.as_os_str().is_empty() {
        return p.to_path_buf();
    }
    let beside = base.join(p);
    if beside.exists() {
        beside
    } else {
        p.to_path_buf()
    }
}

impl RunFile {
    /// Reads, fills in shared settings and validates a run file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut f: RunFile = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        f.model.path = resolve(base, &f.model.path);
        if !f.model.path.join("config.json").exists() {
            bail!(
                "{}: model.path: {} is not a Hugging Face checkpoint folder (no config.json)",
                path.display(),
                f.model.path.display()
            );
        }
        if let Some(p) = &f.data.prompts {
            f.data.prompts = Some(resolve(base, p));
        }
        if f.learner.model.as_os_str().is_empty() {
            f.learner.model = f.model.path.clone();
        }
        if f.learner.device.is_empty() && f.learner.devices.is_empty() {
            f.learner.device = f.model.device.clone();
        }
        if f.learner.precision.is_empty() {
            f.learner.precision = f.model.precision.clone();
        }
        rlhf_model::Precision::from_setting(&f.model.precision)
            .map_err(|e| anyhow::anyhow!("{}: model.precision: {e}", path.display()))?;
        // A judge that is the policy reads the policy's checkpoint unless told otherwise.
        let policy_path = f.model.path.clone();
        f.scorer.scorer.for_each_mut(&mut |s| {
            if let rlhf_reward::ScorerConfig::LmJudge(j) = s
                && j.policy
                && j.path.as_os_str().is_empty()
            {
                j.path = policy_path.clone();
            }
        });
        let ctx = |what: &str| format!("{}: {what}", path.display());
        f.learner
            .validate()
            .with_context(|| ctx("invalid [learner]"))?;
        f.coordinator
            .validate(&f.data, f.learner.objective.kind())
            .with_context(|| ctx("invalid [coordinator] or [data]"))?;
        f.scorer
            .scorer
            .validate()
            .with_context(|| ctx("invalid [scorer]"))?;
        if let Some(wait) = f.scorer.scorer.human_deadline_s()
            && f.coordinator.score_deadline_s <= wait
        {
            bail!(
                "{}: coordinator.score_deadline_s ({} s) must be longer than the human scorer's \
                 deadline_s ({wait} s), or the coordinator gives up before the labels arrive",
                path.display(),
                f.coordinator.score_deadline_s
            );
        }
        f.rollout
            .validate()
            .with_context(|| ctx("invalid [rollout]"))?;
        f.cluster
            .validate()
            .with_context(|| ctx("invalid [cluster]"))?;
        f.cluster.resolve(base);
        let model = rlhf_model::ModelConfig::from_dir(&f.model.path)
            .map_err(|e| anyhow::anyhow!("{}: model.path: {e}", path.display()))?;
        let new_tokens = f.coordinator.sampling.max_new_tokens as usize;
        if new_tokens >= model.max_position_embeddings {
            bail!(
                "{}: coordinator.sampling.max_new_tokens = {new_tokens} leaves no room for a \
                 prompt in the policy's context (max_position_embeddings = {})",
                path.display(),
                model.max_position_embeddings
            );
        }
        for i in 0..f.rollout.worker_count() {
            f.rollout_config(i).validate().with_context(|| {
                if f.rollout.devices.is_empty() {
                    ctx("invalid [rollout]")
                } else {
                    ctx(&format!("invalid [rollout]: rollout.devices[{i}]"))
                }
            })?;
        }
        if f.eval.is_some() {
            f.eval_config(vec![("initial".into(), f.model.path.clone())], base)
                .with_context(|| ctx("invalid [eval]"))?;
        }
        Ok(f)
    }

    /// The `[eval]` section as an evaluation of `policies` (name, folder); outputs default to
    /// `<output_dir>/eval`.
    pub fn eval_config(
        &self,
        policies: Vec<(String, PathBuf)>,
        base: &Path,
    ) -> Result<rlhf_eval::EvalConfig> {
        let mut table = self.eval.clone().unwrap_or_default();
        if table.contains_key("policies") {
            bail!("eval.policies: leave it out, `rlhf run` evaluates its own checkpoints");
        }
        let list = policies
            .into_iter()
            .map(|(name, path)| {
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String(name));
                t.insert(
                    "path".into(),
                    toml::Value::String(path.display().to_string()),
                );
                toml::Value::Table(t)
            })
            .collect();
        table.insert("policies".into(), toml::Value::Array(list));
        let output = table
            .entry("output")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(o) = output {
            o.entry("dir").or_insert_with(|| {
                toml::Value::String(
                    self.coordinator
                        .output_dir
                        .join("eval")
                        .display()
                        .to_string(),
                )
            });
        }
        let text = toml::to_string(&table).context("eval: re-serialising the section")?;
        let config = rlhf_eval::EvalConfig::from_toml_str(&text, base)?;
        config.validate()?;
        Ok(config)
    }

    /// The config of rollout worker `i`.
    pub fn rollout_config(&self, i: usize) -> RolloutConfig {
        let mut c = RolloutConfig::new(self.model.path.clone());
        c.name = format!("rollout-{i}");
        c.device = self
            .rollout
            .devices
            .get(i)
            .unwrap_or(&self.model.device)
            .clone();
        c.max_batch_rows = self.rollout.max_batch_rows;
        c.precision = self.model.precision.clone();
        c
    }
}
