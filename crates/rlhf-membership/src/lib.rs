//! rlhf-membership: which services are alive and where they serve.
//!
//! [`Membership`] is what the coordinator asks; [`InMemoryMembership`] serves `rlhf run` (all
//! roles in one process). Registrations carry a fencing epoch (strictly increasing across the
//! whole membership) and expire unless heartbeated within their TTL. Expiry is decided from
//! tokio's clock, so tests can pause time. [`EtcdMembership`] keeps the same registrations in
//! etcd for distributed mode; [`Registration`] keeps one alive from a member's process.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

mod etcd;
pub mod local;
mod registration;

pub use etcd::{EtcdMembership, Leadership};
pub use registration::Registration;

/// The role a member plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Rollout,
    Scorer,
    Learner,
    Coordinator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Rollout => "rollout",
            Role::Scorer => "scorer",
            Role::Learner => "learner",
            Role::Coordinator => "coordinator",
        })
    }
}

/// A live member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    pub name: String,
    /// Where it serves gRPC, e.g. `http://127.0.0.1:7001`.
    pub address: String,
    /// Fencing epoch of this registration.
    pub epoch: u64,
}

/// Membership errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("{role} `{name}` is not registered (expired or never joined)")]
    NotRegistered { role: Role, name: String },
    #[error("{role} `{name}`: epoch {given} is stale (current {current})")]
    StaleEpoch {
        role: Role,
        name: String,
        given: u64,
        current: u64,
    },
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// The membership store failed or could not be reached.
    #[error("{0}")]
    Backend(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// The membership service as the coordinator and the workers see it.
#[async_trait]
pub trait Membership: Send + Sync + fmt::Debug {
    /// Registers (or re-registers) a member; returns its new fencing epoch.
    async fn register(
        &self,
        role: Role,
        name: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<u64, MembershipError>;
    /// Extends a registration; fails for an expired registration or a stale epoch.
    async fn heartbeat(&self, role: Role, name: &str, epoch: u64) -> Result<(), MembershipError>;
    /// Removes a member's registration if it still has `epoch` (a fenced holder cannot remove
    /// its successor).
    async fn deregister(&self, role: Role, name: &str, epoch: u64) -> Result<(), MembershipError>;
    /// Live members of a role, sorted by name.
    async fn members(&self, role: Role) -> Result<Vec<Member>, MembershipError>;
}

#[derive(Debug)]
struct Entry {
    address: String,
    epoch: u64,
    ttl: Duration,
    expires: Instant,
}

/// The last epoch handed out, and the registrations.
type Table = (u64, HashMap<(Role, String), Entry>);

/// Membership kept in this process's memory.
#[derive(Debug, Default)]
pub struct InMemoryMembership {
    inner: Mutex<Table>,
}

impl InMemoryMembership {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Membership for InMemoryMembership {
    async fn register(
        &self,
        role: Role,
        name: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<u64, MembershipError> {
        if name.is_empty() || address.is_empty() {
            return Err(MembershipError::Invalid(
                "name and address must not be empty".into(),
            ));
        }
        let mut g = self.lock();
        g.0 += 1;
        let epoch = g.0;
        g.1.insert(
            (role, name.to_string()),
            Entry {
                address: address.to_string(),
                epoch,
                ttl,
                expires: Instant::now() + ttl,
            },
        );
        Ok(epoch)
    }

    async fn heartbeat(&self, role: Role, name: &str, epoch: u64) -> Result<(), MembershipError> {
        let now = Instant::now();
        let mut g = self.lock();
        let key = (role, name.to_string());
        match g.1.get_mut(&key) {
            Some(e) if e.expires > now => {
                if e.epoch != epoch {
                    return Err(MembershipError::StaleEpoch {
                        role,
                        name: name.into(),
                        given: epoch,
                        current: e.epoch,
                    });
                }
                e.expires = now + e.ttl;
                Ok(())
            }
            _ => {
                g.1.remove(&key);
                Err(MembershipError::NotRegistered {
                    role,
                    name: name.into(),
                })
            }
        }
    }

    async fn deregister(&self, role: Role, name: &str, epoch: u64) -> Result<(), MembershipError> {
        let mut g = self.lock();
        let key = (role, name.to_string());
        match g.1.get(&key) {
            Some(e) if e.epoch != epoch => Err(MembershipError::StaleEpoch {
                role,
                name: name.into(),
                given: epoch,
                current: e.epoch,
            }),
            Some(_) => {
                g.1.remove(&key);
                Ok(())
            }
            None => Err(MembershipError::NotRegistered {
                role,
                name: name.into(),
            }),
        }
    }

    async fn members(&self, role: Role) -> Result<Vec<Member>, MembershipError> {
        let now = Instant::now();
        let mut g = self.lock();
        g.1.retain(|_, e| e.expires > now);
        let mut out: Vec<Member> =
            g.1.iter()
                .filter(|((r, _), _)| *r == role)
                .map(|((r, n), e)| Member {
                    role: *r,
                    name: n.clone(),
                    address: e.address.clone(),
                    epoch: e.epoch,
                })
                .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn registrations_expire_without_heartbeats() -> Result<(), MembershipError> {
        let m = InMemoryMembership::new();
        let ttl = Duration::from_secs(10);
        let e1 = m.register(Role::Rollout, "w1", "http://a", ttl).await?;
        let e2 = m.register(Role::Rollout, "w2", "http://b", ttl).await?;
        assert!(e2 > e1);
        m.register(Role::Learner, "l", "http://c", ttl).await?;
        assert_eq!(m.members(Role::Rollout).await?.len(), 2);
        tokio::time::advance(Duration::from_secs(6)).await;
        m.heartbeat(Role::Rollout, "w1", e1).await?;
        tokio::time::advance(Duration::from_secs(6)).await;
        let live = m.members(Role::Rollout).await?;
        assert_eq!(
            live.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["w1"]
        );
        assert!(matches!(
            m.heartbeat(Role::Rollout, "w2", e2).await,
            Err(MembershipError::NotRegistered { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn stale_epochs_are_fenced() -> Result<(), MembershipError> {
        let m = InMemoryMembership::new();
        let ttl = Duration::from_secs(10);
        let old = m.register(Role::Scorer, "s", "http://a", ttl).await?;
        let new = m.register(Role::Scorer, "s", "http://b", ttl).await?;
        assert!(matches!(
            m.heartbeat(Role::Scorer, "s", old).await,
            Err(MembershipError::StaleEpoch { .. })
        ));
        m.heartbeat(Role::Scorer, "s", new).await?;
        assert_eq!(m.members(Role::Scorer).await?[0].address, "http://b");
        assert!(matches!(
            m.deregister(Role::Scorer, "s", old).await,
            Err(MembershipError::StaleEpoch { .. })
        ));
        m.deregister(Role::Scorer, "s", new).await?;
        assert!(m.members(Role::Scorer).await?.is_empty());
        Ok(())
    }
}
