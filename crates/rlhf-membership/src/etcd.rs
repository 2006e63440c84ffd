//! [`EtcdMembership`]: the [`Membership`] of distributed mode, kept in etcd.
//!
//! Layout under the prefix (default `/rlhf`):
//! - `{prefix}/members/{role}/{name}` → `{lease id in hex} {address}`, attached to that lease.
//!   The registration's fencing epoch is the key's `mod_revision`: etcd's revision counter
//!   grows with every write to the store, so epochs are strictly increasing across the whole
//!   membership, whichever process registered. Heartbeats keep the lease alive and do not
//!   write the key, so the epoch of a registration never changes; a re-registration writes it
//!   again and fences the old holder. When heartbeats stop (the process died, or lost etcd)
//!   the lease expires and etcd deletes the key.
//! - `{prefix}/rendezvous/{group}` → bytes a group's first rank publishes for the others (the
//!   NCCL unique id of a multi-node learner), attached to the publisher's registration lease:
//!   it lives exactly as long as the publisher stays registered. See
//!   [`EtcdMembership::publish`] and [`EtcdMembership::wait_published`].

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

use crate::{Member, Membership, MembershipError, Role};

/// Membership kept in an etcd cluster.
#[derive(Clone)]
pub struct EtcdMembership {
    client: Client,
    prefix: String,
    endpoints: String,
}

impl std::fmt::Debug for EtcdMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembership")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A registration as stored: its lease and its address.
struct Stored {
    lease: i64,
    address: String,
    epoch: u64,
}

impl EtcdMembership {
    /// Connects to etcd (`host:port` or `http://host:port` endpoints) and keeps every key
    /// under `prefix` (e.g. `/rlhf/my-run`). Fails, naming the endpoints, when no endpoint
    /// answers within `timeout`.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, MembershipError> {
        if endpoints.is_empty() {
            return Err(MembershipError::Invalid(
                "no etcd endpoint given (cluster.etcd)".into(),
            ));
        }
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            return Err(MembershipError::Invalid(format!(
                "etcd prefix `{prefix}` must start with `/` (cluster.etcd_prefix)"
            )));
        }
        let names = endpoints.join(", ");
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let backend = |e: etcd_client::Error| {
            MembershipError::Backend(format!("etcd at {names}: cannot connect: {e}"))
        };
        let mut client = tokio::time::timeout(timeout, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| {
                MembershipError::Backend(format!("etcd at {names}: no answer within {timeout:?}"))
            })?
            .map_err(backend)?;
        // `connect` is lazy about the server: ask it something so a dead endpoint fails here.
        tokio::time::timeout(timeout, client.status())
            .await
            .map_err(|_| {
                MembershipError::Backend(format!("etcd at {names}: no answer within {timeout:?}"))
            })?
            .map_err(backend)?;
        Ok(Self {
            client,
            prefix,
            endpoints: names,
        })
    }

    fn backend(&self, what: &str, e: etcd_client::Error) -> MembershipError {
        MembershipError::Backend(format!("etcd at {}: {what}: {e}", self.endpoints))
    }

    fn member_key(&self, role: Role, name: &str) -> String {
        format!("{}/members/{role}/{name}", self.prefix)
    }

    fn rendezvous_key(&self, group: &str) -> String {
        format!("{}/rendezvous/{group}", self.prefix)
    }

    async fn stored(&self, role: Role, name: &str) -> Result<Option<Stored>, MembershipError> {
        let key = self.member_key(role, name);
        let r = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(|e| self.backend(&format!("get {key}"), e))?;
        r.kvs()
            .first()
            .map(|kv| parse(&key, kv.value(), kv.mod_revision()))
            .transpose()
    }

    /// Publishes `value` for `group` on behalf of a registered member: the value is attached to
    /// that member's lease (it disappears when the registration does) and is written only if
    /// the registration still has `epoch` (a fenced publisher cannot overwrite). A later
    /// publication by a newer registration replaces it.
    pub async fn publish(
        &self,
        role: Role,
        name: &str,
        epoch: u64,
        group: &str,
        value: &[u8],
    ) -> Result<(), MembershipError> {
        check_name("group", group)?;
        let Some(s) = self.stored(role, name).await? else {
            return Err(MembershipError::NotRegistered {
                role,
                name: name.into(),
            });
        };
        let member = self.member_key(role, name);
        let key = self.rendezvous_key(group);
        let revision = i64::try_from(epoch)
            .map_err(|_| MembershipError::Invalid(format!("epoch {epoch} is out of range")))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                member.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                value,
                Some(PutOptions::new().with_lease(s.lease)),
            )]);
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| self.backend(&format!("publish {key}"), e))?;
        if r.succeeded() {
            return Ok(());
        }
        Err(match self.stored(role, name).await? {
            Some(now) => MembershipError::StaleEpoch {
                role,
                name: name.into(),
                given: epoch,
                current: now.epoch,
            },
            None => MembershipError::NotRegistered {
                role,
                name: name.into(),
            },
        })
    }

    /// The value published for `group`, waiting up to `timeout` for it to appear.
    pub async fn wait_published(
        &self,
        group: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, MembershipError> {
        check_name("group", group)?;
        let key = self.rendezvous_key(group);
        let waiting = async {
            let mut client = self.client.clone();
            let r = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| self.backend(&format!("get {key}"), e))?;
            if let Some(kv) = r.kvs().first() {
                return Ok(kv.value().to_vec());
            }
            // Watch from the revision just after the read, so a put in between is not missed.
            let next = r.header().map(|h| h.revision() + 1).unwrap_or(0);
            let mut stream = client
                .watch(
                    key.as_str(),
                    Some(WatchOptions::new().with_start_revision(next)),
                )
                .await
                .map_err(|e| self.backend(&format!("watch {key}"), e))?;
            loop {
                let Some(m) = stream
                    .message()
                    .await
                    .map_err(|e| self.backend(&format!("watch {key}"), e))?
                else {
                    return Err(MembershipError::Backend(format!(
                        "etcd at {}: watch on {key} ended",
                        self.endpoints
                    )));
                };
                if m.canceled() {
                    return Err(MembershipError::Backend(format!(
                        "etcd at {}: watch on {key} canceled: {}",
                        self.endpoints,
                        m.cancel_reason()
                    )));
                }
                for ev in m.events() {
                    if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                        return Ok(kv.value().to_vec());
                    }
                }
            }
        };
        tokio::time::timeout(timeout, waiting).await.map_err(|_| {
            MembershipError::Timeout(format!("nothing published at {key} within {timeout:?}"))
        })?
    }
}

/// Leadership of a name (see [`EtcdMembership::lead`]), held on a lease that a background task
/// keeps alive. Lost when the lease cannot be renewed (etcd unreachable for about its TTL, or
/// the process was paused past it): the holder must then stop acting as leader.
pub struct Leadership {
    lost: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    client: Client,
    key: String,
    lease: i64,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Leadership {
    /// Whether leadership was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when leadership is lost.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Gives leadership up at once (a waiting candidate takes over without waiting for the TTL).
    pub async fn resign(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::lease(
                self.key.as_str(),
                CompareOp::Equal,
                self.lease,
            )])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        let _ = c.txn(txn).await;
        let _ = c.lease_revoke(self.lease).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdMembership {
    /// Becomes the leader of `name` (key `{prefix}/leader/{name}`, value `holder`), waiting
    /// while another process holds it; `waiting` is called with the current holder each time
    /// this has to wait. Leadership is a key attached to a lease of `ttl`: when its holder stops
    /// renewing it (killed, paused, cut off from etcd), etcd deletes it after the TTL and the
    /// next candidate takes over.
    pub async fn lead(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        mut waiting: impl FnMut(&str) + Send,
    ) -> Result<Leadership, MembershipError> {
        check_name("leadership", name)?;
        let key = format!("{}/leader/{name}", self.prefix);
        let mut client = self.client.clone();
        let seconds = lease_seconds(ttl);
        loop {
            let lease = client
                .lease_grant(seconds, None)
                .await
                .map_err(|e| self.backend("grant a lease", e))?
                .id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    holder,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let won = client
                .txn(txn)
                .await
                .map_err(|e| self.backend(&format!("campaign for {key}"), e))?
                .succeeded();
            if won {
                return self.keep_leading(key, lease, ttl).await;
            }
            let _ = client.lease_revoke(lease).await;
            // Someone leads: wait for the key to go (deleted on resignation or lease expiry).
            let r = client
                .get(key.as_str(), None)
                .await
                .map_err(|e| self.backend(&format!("get {key}"), e))?;
            let Some(kv) = r.kvs().first() else {
                continue;
            };
            waiting(&String::from_utf8_lossy(kv.value()));
            let next = r.header().map(|h| h.revision() + 1).unwrap_or(0);
            let mut stream = client
                .watch(
                    key.as_str(),
                    Some(WatchOptions::new().with_start_revision(next)),
                )
                .await
                .map_err(|e| self.backend(&format!("watch {key}"), e))?;
            'watch: loop {
                let m = stream
                    .message()
                    .await
                    .map_err(|e| self.backend(&format!("watch {key}"), e))?;
                let Some(m) = m else { break 'watch };
                if m.canceled() {
                    break 'watch;
                }
                if m.events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    break 'watch;
                }
            }
        }
    }

    async fn keep_leading(
        &self,
        key: String,
        lease: i64,
        ttl: Duration,
    ) -> Result<Leadership, MembershipError> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| self.backend("lease keep-alive", e))?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let what = key.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                // A renewal that does not answer within the TTL is as good as lost.
                let renewal = async {
                    match keeper.keep_alive().await {
                        Ok(()) => matches!(stream.message().await, Ok(Some(r)) if r.ttl() > 0),
                        Err(_) => false,
                    }
                };
                let renewed = tokio::time::timeout(ttl, renewal).await.unwrap_or(false);
                if !renewed {
                    tracing::error!(key = %what, "leadership lost: its lease could not be renewed");
                    let _ = tx.send(true);
                    return;
                }
            }
        });
        Ok(Leadership {
            lost: rx,
            task,
            client: self.client.clone(),
            key,
            lease,
        })
    }
}

/// A TTL as etcd leases count it: whole seconds, at least 1 (etcd raises very short leases to
/// its own minimum).
fn lease_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs_f64().ceil() as u64)
        .unwrap_or(i64::MAX)
        .max(1)
}

fn check_name(what: &str, name: &str) -> Result<(), MembershipError> {
    if name.is_empty() || name.contains(['/', ' ', '\n']) {
        return Err(MembershipError::Invalid(format!(
            "{what} `{name}` must be non-empty, without `/`, spaces or newlines"
        )));
    }
    Ok(())
}

fn parse(key: &str, value: &[u8], mod_revision: i64) -> Result<Stored, MembershipError> {
    let bad = || MembershipError::Backend(format!("etcd key {key}: unreadable registration"));
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (lease, address) = text.split_once(' ').ok_or_else(bad)?;
    Ok(Stored {
        lease: i64::from_str_radix(lease, 16).map_err(|_| bad())?,
        address: address.to_string(),
        epoch: u64::try_from(mod_revision).map_err(|_| bad())?,
    })
}

#[async_trait]
impl Membership for EtcdMembership {
    async fn register(
        &self,
        role: Role,
        name: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<u64, MembershipError> {
        check_name("name", name)?;
        if address.is_empty() || address.contains(char::is_whitespace) {
            return Err(MembershipError::Invalid(format!(
                "address `{address}` must be non-empty, without spaces"
            )));
        }
        let key = self.member_key(role, name);
        let mut client = self.client.clone();
        let old = self.stored(role, name).await?;
        let seconds = lease_seconds(ttl);
        let lease = client
            .lease_grant(seconds, None)
            .await
            .map_err(|e| self.backend("grant a lease", e))?
            .id();
        let r = client
            .put(
                key.as_str(),
                format!("{lease:x} {address}"),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| self.backend(&format!("put {key}"), e))?;
        let epoch = r
            .header()
            .map(|h| h.revision())
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(|| {
                MembershipError::Backend(format!("etcd: put {key} returned no revision"))
            })?;
        // The old lease no longer holds the key; revoke it so it stops counting.
        if let Some(old) = old.filter(|o| o.lease != lease) {
            let _ = client.lease_revoke(old.lease).await;
        }
        Ok(epoch)
    }

    async fn heartbeat(&self, role: Role, name: &str, epoch: u64) -> Result<(), MembershipError> {
        let not_registered = || MembershipError::NotRegistered {
            role,
            name: name.into(),
        };
        let s = self.stored(role, name).await?.ok_or_else(not_registered)?;
        if s.epoch != epoch {
            return Err(MembershipError::StaleEpoch {
                role,
                name: name.into(),
                given: epoch,
                current: s.epoch,
            });
        }
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = client
            .lease_keep_alive(s.lease)
            .await
            .map_err(|e| self.backend("lease keep-alive", e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| self.backend("lease keep-alive", e))?;
        let answer = stream
            .message()
            .await
            .map_err(|e| self.backend("lease keep-alive", e))?;
        match answer {
            // A TTL of 0 means the lease had already expired.
            Some(a) if a.ttl() > 0 => Ok(()),
            _ => Err(not_registered()),
        }
    }

    async fn deregister(&self, role: Role, name: &str, epoch: u64) -> Result<(), MembershipError> {
        let key = self.member_key(role, name);
        let revision = i64::try_from(epoch)
            .map_err(|_| MembershipError::Invalid(format!("epoch {epoch} is out of range")))?;
        let Some(s) = self.stored(role, name).await? else {
            return Err(MembershipError::NotRegistered {
                role,
                name: name.into(),
            });
        };
        // Delete only this registration: a newer one of the same name stays.
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut client = self.client.clone();
        let r = client
            .txn(txn)
            .await
            .map_err(|e| self.backend(&format!("delete {key}"), e))?;
        if !r.succeeded() {
            return Err(MembershipError::StaleEpoch {
                role,
                name: name.into(),
                given: epoch,
                current: s.epoch,
            });
        }
        // Also drops anything this member published.
        let _ = client.lease_revoke(s.lease).await;
        Ok(())
    }

    async fn members(&self, role: Role) -> Result<Vec<Member>, MembershipError> {
        let prefix = format!("{}/members/{role}/", self.prefix);
        let r = self
            .client
            .clone()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.backend(&format!("list {prefix}"), e))?;
        let mut out = Vec::with_capacity(r.kvs().len());
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let s = parse(&key, kv.value(), kv.mod_revision())?;
            let name = key.strip_prefix(prefix.as_str()).unwrap_or(&key);
            out.push(Member {
                role,
                name: name.to_string(),
                address: s.address,
                epoch: s.epoch,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
