//! The coordinator's view of the other services: live members from [`Membership`] and gRPC
//! clients to them (one cached channel per address).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rlhf_membership::{Member, Membership, Role};
use rlhf_proto::security::Tls;
use rlhf_proto::trace::{Traced, traced};
use rlhf_proto::v1::learner_client::LearnerClient;
use rlhf_proto::v1::reward_client::RewardClient;
use rlhf_proto::v1::rollout_client::RolloutClient;
use tonic::transport::Channel;

use crate::CoordinatorError;

/// Members and clients.
#[derive(Debug, Clone)]
pub struct Cluster {
    membership: Arc<dyn Membership>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Addresses that failed recently, and until when they are avoided.
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
    max_message_bytes: usize,
    /// Mutual TLS to the members (their addresses' scheme is ignored then).
    tls: Option<Tls>,
    /// Members evicted through the admin API: given no new work.
    evicted: Evictions,
}

/// Members evicted through the admin API (`Admin.Evict`), by role and name; shared by the
/// admin service and the [`Cluster`]. Kept in `<output_dir>/evicted.json` (see
/// [`Evictions::kept_in`]) so that a resumed run (a restart, a standby taking over) keeps them.
#[derive(Debug, Clone, Default)]
pub struct Evictions {
    set: Arc<Mutex<std::collections::BTreeSet<(Role, String)>>>,
    file: Option<std::path::PathBuf>,
}

/// The file in the output folder.
pub const EVICTED_FILE: &str = "evicted.json";

impl Evictions {
    /// Evictions kept in `out`'s `evicted.json`: a resumed run starts with the ones made
    /// before; a fresh run with none (the file is removed).
    pub fn kept_in(out: &std::path::Path, resume: bool) -> Result<Self, CoordinatorError> {
        let path = out.join(EVICTED_FILE);
        let io = |e: std::io::Error| CoordinatorError::Io(format!("{}: {e}", path.display()));
        let mut set = std::collections::BTreeSet::new();
        match std::fs::read_to_string(&path) {
            Ok(text) if resume => {
                let listed: Vec<(String, String)> = serde_json::from_str(&text)
                    .map_err(|e| CoordinatorError::Io(format!("{}: {e}", path.display())))?;
                for (role, name) in listed {
                    let role = [Role::Rollout, Role::Scorer]
                        .into_iter()
                        .find(|r| r.to_string() == role)
                        .ok_or_else(|| {
                            CoordinatorError::Io(format!(
                                "{}: `{role}` is not a role that can be evicted",
                                path.display()
                            ))
                        })?;
                    set.insert((role, name));
                }
                if !set.is_empty() {
                    tracing::info!(
                        evicted = set.len(),
                        "evictions of the run ({EVICTED_FILE}) kept"
                    );
                }
            }
            Ok(_) => std::fs::remove_file(&path).map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok(Self {
            set: Arc::new(Mutex::new(set)),
            file: Some(path),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<(Role, String)>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `name` of `role` is evicted.
    pub fn contains(&self, role: Role, name: &str) -> bool {
        self.lock().contains(&(role, name.to_string()))
    }

    /// Evicts (true: it was not evicted before) and keeps the list.
    pub fn insert(&self, role: Role, name: &str) -> Result<bool, CoordinatorError> {
        let mut set = self.lock();
        let new = set.insert((role, name.to_string()));
        self.save(&set)?;
        Ok(new)
    }

    /// Readmits (true: it was evicted) and keeps the list.
    pub fn remove(&self, role: Role, name: &str) -> Result<bool, CoordinatorError> {
        let mut set = self.lock();
        let was = set.remove(&(role, name.to_string()));
        self.save(&set)?;
        Ok(was)
    }

    fn save(
        &self,
        set: &std::collections::BTreeSet<(Role, String)>,
    ) -> Result<(), CoordinatorError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let listed: Vec<(String, &String)> = set.iter().map(|(r, n)| (r.to_string(), n)).collect();
        let io = |e: std::io::Error| CoordinatorError::Io(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text =
            serde_json::to_string(&listed).map_err(|e| CoordinatorError::Io(e.to_string()))?;
        crate::resume::write_atomic(path, &text)
    }

    /// Every evicted (role, name).
    pub fn list(&self) -> Vec<(Role, String)> {
        self.lock().iter().cloned().collect()
    }
}

/// How long a member that failed a request is avoided (when others are available).
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

impl Cluster {
    pub fn new(
        membership: Arc<dyn Membership>,
        max_message_bytes: usize,
        tls: Option<Tls>,
        evicted: Evictions,
    ) -> Self {
        Self {
            membership,
            channels: Arc::default(),
            suspects: Arc::default(),
            max_message_bytes,
            tls,
            evicted,
        }
    }

    /// The membership this cluster reads.
    pub fn membership(&self) -> &Arc<dyn Membership> {
        &self.membership
    }

    /// Live members of a role that are not evicted; an error when there are none.
    pub async fn members(&self, role: Role) -> Result<Vec<Member>, CoordinatorError> {
        let all = self
            .membership
            .members(role)
            .await
            .map_err(|e| CoordinatorError::Cluster(e.to_string()))?;
        let registered = all.len();
        let m: Vec<Member> = all
            .into_iter()
            .filter(|m| !self.evicted.contains(role, &m.name))
            .collect();
        if m.is_empty() {
            return Err(CoordinatorError::Cluster(if registered > 0 {
                format!("no live {role} that is not evicted ({registered} evicted)")
            } else {
                format!("no live {role} is registered")
            }));
        }
        Ok(m)
    }

    /// Marks a member's address as failing: [`Cluster::healthy`] avoids it for a while.
    pub fn suspect(&self, address: &str) {
        let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        s.insert(address.to_string(), Instant::now() + SUSPECT_FOR);
    }

    /// The members not recently failing; all of them when every one is suspect.
    pub fn healthy(&self, members: Vec<Member>) -> Vec<Member> {
        let now = Instant::now();
        let mut s = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, until| *until > now);
        let ok: Vec<Member> = members
            .iter()
            .filter(|m| !s.contains_key(&m.address))
            .cloned()
            .collect();
        if ok.is_empty() { members } else { ok }
    }

    /// A channel to `address` (connected lazily, reused).
    pub fn channel(&self, address: &str) -> Result<Channel, CoordinatorError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let c = rlhf_proto::security::endpoint(address, self.tls.as_ref())
            .map_err(|e| CoordinatorError::Cluster(e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), c.clone());
        Ok(c)
    }

    pub fn rollout(&self, address: &str) -> Result<RolloutClient<Traced>, CoordinatorError> {
        Ok(RolloutClient::new(traced(self.channel(address)?))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn reward(&self, address: &str) -> Result<RewardClient<Traced>, CoordinatorError> {
        Ok(RewardClient::new(traced(self.channel(address)?))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn learner(&self, address: &str) -> Result<LearnerClient<Traced>, CoordinatorError> {
        Ok(LearnerClient::new(traced(self.channel(address)?))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}
