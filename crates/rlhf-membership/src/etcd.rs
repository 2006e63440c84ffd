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

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions,
};

use crate::{Member, Membership, MembershipError, Role};
use rlhf_proto::security::Tls;

/// Membership kept in an etcd cluster.
#[derive(Clone)]
pub struct EtcdMembership {
    /// One client per endpoint, in the order given. Requests go to the member in use and move
    /// on to the next one when it cannot be reached ([`EtcdMembership::call`]): etcd-client's
    /// own balancing over several endpoints keeps routing requests to a member that died.
    clients: Arc<Vec<(String, Client)>>,
    /// Index into `clients` of the member in use.
    current: Arc<AtomicUsize>,
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
    ///
    /// With `tls` the client port is spoken to over TLS: etcd's certificate is checked against
    /// its CA (for the host of each endpoint, or its `server_name`), and this process's
    /// certificate is presented when it has one (etcd's `--client-cert-auth`).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        tls: Option<&Tls>,
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
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let options = match tls {
                Some(t) => options.clone().with_tls(t.client_config(endpoint)),
                None => options.clone(),
            };
            let connected =
                tokio::time::timeout(timeout, Client::connect([endpoint.as_str()], Some(options)))
                    .await;
            match connected {
                Ok(Ok(c)) => clients.push((endpoint.clone(), c)),
                Ok(Err(e)) => tracing::warn!(%endpoint, "etcd endpoint left out: {e}"),
                Err(_) => tracing::warn!(%endpoint, "etcd endpoint left out: no answer"),
            }
        }
        if clients.is_empty() {
            return Err(MembershipError::Backend(format!(
                "etcd at {names}: cannot connect to any endpoint"
            )));
        }
        let me = Self {
            clients: Arc::new(clients),
            current: Arc::default(),
            prefix,
            endpoints: names,
        };
        // Connecting is lazy about the servers: ask one something so that an etcd that is not
        // there fails here.
        tokio::time::timeout(
            timeout,
            me.call("status", |mut c| async move { c.status().await }),
        )
        .await
        .map_err(|_| {
            MembershipError::Backend(format!(
                "etcd at {}: no answer within {timeout:?}",
                me.endpoints
            ))
        })??;
        Ok(me)
    }

    /// Runs `op` with the client of the member in use. When that member cannot be reached (it
    /// died, or is cut off), moves on to the next endpoint and tries again: every endpoint
    /// twice, with a pause after each round, before giving up with the last error.
    async fn call<T, Fut>(
        &self,
        what: &str,
        op: impl Fn(Client) -> Fut,
    ) -> Result<T, MembershipError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let mut failures = 0;
        loop {
            let i = self.current.load(Ordering::SeqCst) % n;
            let (endpoint, client) = &self.clients[i];
            match op(client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if unreachable(&e) && failures + 1 < 2 * n => {
                    failures += 1;
                    tracing::debug!(%endpoint, "etcd member unreachable, trying the next: {e}");
                    let _ = self.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    if failures % n == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) => return Err(self.backend(what, e)),
            }
        }
    }

    /// The value of `key` (with the store's revision in its header).
    async fn get(&self, key: &str) -> Result<etcd_client::GetResponse, MembershipError> {
        self.call(&format!("get {key}"), |mut c| async move {
            c.get(key, None).await
        })
        .await
    }

    /// Runs `txn` (`what` names it in errors).
    async fn txn(&self, what: &str, txn: Txn) -> Result<etcd_client::TxnResponse, MembershipError> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// A new lease of `ttl` (whole seconds, at least 1).
    async fn grant(&self, ttl: Duration) -> Result<i64, MembershipError> {
        let seconds = lease_seconds(ttl);
        Ok(self
            .call("grant a lease", |mut c| async move {
                c.lease_grant(seconds, None).await
            })
            .await?
            .id())
    }

    /// Revokes `lease` (deleting its keys); a failure only leaves it until it expires.
    async fn revoke(&self, lease: i64) {
        let _ = self
            .call("revoke a lease", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
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

    fn run_ended_key(&self) -> String {
        format!("{}/run/ended", self.prefix)
    }

    /// The store's revision now: a run-end mark written later ([`EtcdMembership::run_end`])
    /// has a higher one.
    pub async fn revision(&self) -> Result<i64, MembershipError> {
        let r = self.get(&self.run_ended_key()).await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Marks the run under this prefix as ended (`{prefix}/run/ended`, on no lease: it stays),
    /// with a note for whoever reads it. Roles that serve the run and were asked to
    /// (`cluster.exit_after_run`) exit when they see it.
    pub async fn mark_run_ended(&self, note: &str) -> Result<(), MembershipError> {
        let key = self.run_ended_key();
        self.call(&format!("put {key}"), |mut c| {
            let key = key.clone();
            async move { c.put(key, note, None).await }
        })
        .await
        .map(|_| ())
    }

    /// The newest run-end mark under this prefix, if any: the revision it was written at
    /// and its note.
    pub async fn run_end(&self) -> Result<Option<(i64, String)>, MembershipError> {
        let r = self.get(&self.run_ended_key()).await?;
        Ok(r.kvs().first().map(|kv| {
            (
                kv.mod_revision(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        }))
    }

    async fn stored(&self, role: Role, name: &str) -> Result<Option<Stored>, MembershipError> {
        let key = self.member_key(role, name);
        let r = self.get(&key).await?;
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
        let r = self.txn(&format!("publish {key}"), txn).await?;
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
            let r = self.get(&key).await?;
            if let Some(kv) = r.kvs().first() {
                return Ok(kv.value().to_vec());
            }
            let mut stream = self.watch_after(&key, &r).await?;
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
    etcd: EtcdMembership,
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

    /// Resolves when leadership is lost; never after it was given up ([`Leadership::resign`]
    /// or dropped), which is not a loss.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            if rx.wait_for(|lost| *lost).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Gives leadership up at once (a waiting candidate takes over without waiting for the TTL).
    pub async fn resign(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let txn = Txn::new()
            .when([Compare::lease(
                self.key.as_str(),
                CompareOp::Equal,
                self.lease,
            )])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        let _ = self.etcd.txn("resign", txn).await;
        self.etcd.revoke(self.lease).await;
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
        let k = key.as_str();
        loop {
            let lease = self.grant(ttl).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(k, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    k,
                    holder,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let won = self
                .txn(&format!("campaign for {key}"), txn)
                .await?
                .succeeded();
            if won {
                return self.keep_leading(key, lease, ttl).await;
            }
            self.revoke(lease).await;
            // Someone leads: wait for the key to go (deleted on resignation or lease expiry).
            let r = self.get(k).await?;
            let Some(kv) = r.kvs().first() else {
                continue;
            };
            waiting(&String::from_utf8_lossy(kv.value()));
            let mut stream = self.watch_after(k, &r).await?;
            // The watch ends when the key goes, and also when the member serving it dies:
            // either way, campaign again (through a member that answers).
            while let Ok(Some(m)) = stream.message().await {
                if m.canceled()
                    || m.events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                {
                    break;
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
        let mut keeper = Some(self.keep_alive(lease).await?);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let what = key.clone();
        let etcd = self.clone();
        let task = tokio::spawn(async move {
            let mut renewed_at = Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                // Renewals that fail (the member serving them died) are tried again through
                // the next members until the TTL since the last renewal has passed.
                loop {
                    let left = ttl.saturating_sub(renewed_at.elapsed());
                    let renewal = renew(&etcd, lease, &mut keeper);
                    if tokio::time::timeout(left, renewal).await.unwrap_or(false) {
                        renewed_at = Instant::now();
                        break;
                    }
                    if renewed_at.elapsed() >= ttl {
                        tracing::error!(
                            key = %what,
                            "leadership lost: its lease could not be renewed"
                        );
                        let _ = tx.send(true);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Ok(Leadership {
            lost: rx,
            task,
            etcd: self.clone(),
            key,
            lease,
        })
    }

    /// A watch on `key` from the revision just after the read `r`, so that a change between
    /// the read and the watch is not missed.
    async fn watch_after(
        &self,
        key: &str,
        r: &etcd_client::GetResponse,
    ) -> Result<etcd_client::WatchStream, MembershipError> {
        let next = r.header().map(|h| h.revision() + 1).unwrap_or(0);
        let options = WatchOptions::new().with_start_revision(next);
        self.call(&format!("watch {key}"), |mut c| {
            let options = options.clone();
            async move { c.watch(key, Some(options)).await }
        })
        .await
    }

    /// A keep-alive stream for `lease`, opened on a member that answers.
    async fn keep_alive(
        &self,
        lease: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), MembershipError> {
        self.call("lease keep-alive", |mut c| async move {
            c.lease_keep_alive(lease).await
        })
        .await
    }
}

/// Renews `lease` once on its keep-alive stream, opening a new stream (on a member that
/// answers) if there is none; a failed stream is dropped. True when etcd confirmed the lease.
async fn renew(
    etcd: &EtcdMembership,
    lease: i64,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> bool {
    if keeper.is_none() {
        *keeper = etcd.keep_alive(lease).await.ok();
    }
    let Some((k, stream)) = keeper.as_mut() else {
        return false;
    };
    let renewed = match k.keep_alive().await {
        Ok(()) => matches!(stream.message().await, Ok(Some(r)) if r.ttl() > 0),
        Err(_) => false,
    };
    if !renewed {
        *keeper = None;
    }
    renewed
}

/// Errors that mean "this member cannot be reached now": worth trying another member. A
/// connection the member reset when it died comes as `Unknown` with a transport error inside.
/// (A request whose answer was lost may have been applied; retrying one is harmless here: an
/// extra lease expires, a campaign or deregistration finds the key changed.)
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                true
            }
            tonic::Code::Unknown => std::error::Error::source(s)
                .is_some_and(|source| source.is::<tonic::transport::Error>()),
            _ => false,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
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
        let k = key.as_str();
        let old = self.stored(role, name).await?;
        let lease = self.grant(ttl).await?;
        let value = format!("{lease:x} {address}");
        let v = value.as_str();
        let r = self
            .call(&format!("put {key}"), |mut c| async move {
                c.put(k, v, Some(PutOptions::new().with_lease(lease))).await
            })
            .await?;
        let epoch = r
            .header()
            .map(|h| h.revision())
            .and_then(|r| u64::try_from(r).ok())
            .ok_or_else(|| {
                MembershipError::Backend(format!("etcd: put {key} returned no revision"))
            })?;
        // The old lease no longer holds the key; revoke it so it stops counting.
        if let Some(old) = old.filter(|o| o.lease != lease) {
            self.revoke(old.lease).await;
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
        let lease = s.lease;
        let ttl = self
            .call("lease keep-alive", |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map(|a| a.ttl()))
            })
            .await?;
        match ttl {
            // A TTL of 0 means the lease had already expired.
            Some(t) if t > 0 => Ok(()),
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
        let r = self.txn(&format!("delete {key}"), txn).await?;
        if !r.succeeded() {
            return Err(MembershipError::StaleEpoch {
                role,
                name: name.into(),
                given: epoch,
                current: s.epoch,
            });
        }
        // Also drops anything this member published.
        self.revoke(s.lease).await;
        Ok(())
    }

    async fn members(&self, role: Role) -> Result<Vec<Member>, MembershipError> {
        let prefix = format!("{}/members/{role}/", self.prefix);
        let p = prefix.as_str();
        let r = self
            .call(&format!("list {prefix}"), |mut c| async move {
                c.get(p, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
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
