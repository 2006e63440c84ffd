//! [`Registration`]: a member that stays registered while its process lives.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Membership, MembershipError, Role};

/// A registration heartbeated in the background every third of its TTL. When it expired
/// anyway (the process was paused, or lost the membership service for longer than the TTL) it
/// registers again with a new epoch. When a newer registration of the same name fenced it, it
/// stops: [`Registration::epoch`] turns `None` and the holder should stop serving.
#[derive(Debug)]
pub struct Registration {
    membership: Arc<dyn Membership>,
    role: Role,
    name: String,
    epoch: watch::Receiver<Option<u64>>,
    task: JoinHandle<()>,
}

impl Registration {
    /// Registers `name` (failing if that first registration fails) and keeps it alive.
    pub async fn start(
        membership: Arc<dyn Membership>,
        role: Role,
        name: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Self, MembershipError> {
        let first = membership.register(role, name, address, ttl).await?;
        tracing::info!(%role, name, address, epoch = first, "registered");
        let (tx, rx) = watch::channel(Some(first));
        let (m, n, a) = (membership.clone(), name.to_string(), address.to_string());
        let task = tokio::spawn(async move {
            let mut epoch = first;
            loop {
                tokio::time::sleep(ttl / 3).await;
                match m.heartbeat(role, &n, epoch).await {
                    Ok(()) => {}
                    Err(MembershipError::NotRegistered { .. }) => {
                        match m.register(role, &n, &a, ttl).await {
                            Ok(e) => {
                                tracing::warn!(%role, name = %n, epoch = e, "registration had expired: registered again");
                                epoch = e;
                                let _ = tx.send(Some(e));
                            }
                            Err(e) => {
                                tracing::warn!(%role, name = %n, "registering again failed: {e}; retrying")
                            }
                        }
                    }
                    Err(e @ MembershipError::StaleEpoch { .. }) => {
                        tracing::error!(%role, name = %n, "fenced by a newer registration: {e}");
                        let _ = tx.send(None);
                        return;
                    }
                    Err(e) => tracing::warn!(%role, name = %n, "heartbeat failed: {e}; retrying"),
                }
            }
        });
        Ok(Self {
            membership,
            role,
            name: name.to_string(),
            epoch: rx,
            task,
        })
    }

    /// The current epoch; `None` once a newer registration of the same name fenced this one.
    pub fn epoch(&self) -> Option<u64> {
        *self.epoch.borrow()
    }

    /// Stops heartbeating and removes the registration (unless it was fenced or expired).
    pub async fn leave(mut self) -> Result<(), MembershipError> {
        self.task.abort();
        let _ = (&mut self.task).await;
        let Some(epoch) = self.epoch() else {
            return Ok(());
        };
        match self
            .membership
            .deregister(self.role, &self.name, epoch)
            .await
        {
            Ok(()) | Err(MembershipError::NotRegistered { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}
