//! The coordinator's gRPC face: the Admin API (status) and the Coordinator API (members
//! register and heartbeat into the [`Membership`]).

use std::sync::Arc;
use std::time::Duration;

use rlhf_core::CancellationToken;
use rlhf_membership::{Membership, MembershipError, Role};
use rlhf_proto::security::{Access, AdminAuth};
use rlhf_proto::v1;
use tonic::{Request, Response, Status};

use crate::cluster::Evictions;
use crate::live::Live;
use crate::status::SharedStatus;

/// Seconds a registration lives without a heartbeat.
pub const MEMBER_TTL_SECONDS: u32 = 30;

/// Serves `Admin.Status` from the run's shared status, and `Admin.Stop`.
pub struct AdminService {
    pub status: SharedStatus,
    pub membership: Arc<dyn Membership>,
    /// The run's shutdown token: cancelling it stops the run after its current iteration.
    pub stop: CancellationToken,
    /// Whether the run is asked to pause (read between iterations, [`crate::driver::unpaused`]).
    pub pause: tokio::sync::watch::Sender<bool>,
    /// Who may call what (viewer: status; operator: the rest).
    pub auth: AdminAuth,
    /// Members evicted through [`Admin.Evict`](v1::admin_server::Admin::evict).
    pub evicted: Evictions,
    /// Settings changed through [`Admin.Set`](v1::admin_server::Admin::set).
    pub live: Live,
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.auth.check(&request, Access::Viewer)?;
        let mut s = self.status.get();
        s.settings_json = serde_json::to_string(&self.live.get()).unwrap_or_default();
        for role in [Role::Rollout, Role::Scorer, Role::Learner] {
            for m in self.membership.members(role).await.unwrap_or_default() {
                s.members.push(v1::MemberStatus {
                    role: role.to_string(),
                    evicted: self.evicted.contains(role, &m.name),
                    name: m.name,
                    address: m.address,
                });
            }
        }
        Ok(Response::new(s))
    }

    async fn stop(
        &self,
        request: Request<v1::StopRequest>,
    ) -> Result<Response<v1::StopResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        let mut state = String::new();
        self.status.update(|s| {
            if s.state != "finished" && s.state != "failed" {
                s.state = "stopping".into();
            }
            state = s.state.clone();
        });
        if !self.stop.is_cancelled() {
            tracing::info!("stop requested through the admin API: stopping after this iteration");
            self.stop.cancel();
        }
        Ok(Response::new(v1::StopResponse { state }))
    }

    async fn pause(
        &self,
        request: Request<v1::PauseRequest>,
    ) -> Result<Response<v1::PauseResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        Ok(Response::new(self.set_paused(true)))
    }

    async fn unpause(
        &self,
        request: Request<v1::UnpauseRequest>,
    ) -> Result<Response<v1::PauseResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        Ok(Response::new(self.set_paused(false)))
    }

    async fn evict(
        &self,
        request: Request<v1::EvictRequest>,
    ) -> Result<Response<v1::EvictResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        let r = request.into_inner();
        let mut found = None;
        let mut names = Vec::new();
        for role in [Role::Rollout, Role::Scorer, Role::Learner] {
            let members = self.membership.members(role).await.map_err(status)?;
            if members.iter().any(|m| m.name == r.name) {
                found = Some((role, members));
                break;
            }
            names.extend(members.into_iter().map(|m| m.name));
        }
        let Some((role, members)) = found else {
            // A readmission of a member that has left since is still a readmission.
            for role in [Role::Rollout, Role::Scorer] {
                if r.readmit && self.evicted.remove(role, &r.name).map_err(internal)? {
                    tracing::info!(%role, name = %r.name, "readmitted through the admin API");
                    return Ok(Response::new(self.evictions().await));
                }
            }
            return Err(Status::not_found(format!(
                "no member named `{}` (members: {})",
                r.name,
                names.join(", ")
            )));
        };
        if role == Role::Learner {
            return Err(Status::failed_precondition(
                "the learner cannot be evicted (stop the run instead)",
            ));
        }
        if r.readmit {
            if !self.evicted.remove(role, &r.name).map_err(internal)? {
                return Err(Status::failed_precondition(format!(
                    "{role} `{}` is not evicted",
                    r.name
                )));
            }
            tracing::info!(%role, name = %r.name, "readmitted through the admin API");
        } else {
            let others = members
                .iter()
                .filter(|m| m.name != r.name && !self.evicted.contains(role, &m.name))
                .count();
            if others == 0 && !self.evicted.contains(role, &r.name) {
                return Err(Status::failed_precondition(format!(
                    "{role} `{}` is the last {role} that is not evicted: the run needs one",
                    r.name
                )));
            }
            if self.evicted.insert(role, &r.name).map_err(internal)? {
                tracing::info!(
                    %role,
                    name = %r.name,
                    "evicted through the admin API: its work in flight finishes, it gets no more"
                );
            }
        }
        Ok(Response::new(self.evictions().await))
    }

    async fn set(
        &self,
        request: Request<v1::SetRequest>,
    ) -> Result<Response<v1::SetResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        let r = request.into_inner();
        let state = self.status.get();
        if matches!(state.state.as_str(), "finished" | "failed") {
            return Err(Status::failed_precondition(format!(
                "the run has {}",
                state.state
            )));
        }
        let settings = self
            .live
            .set(&r.key, &r.value, state.iteration)
            .map_err(Status::invalid_argument)?;
        self.status
            .update(|s| s.iterations_total = settings.iterations);
        tracing::info!(key = %r.key, value = %r.value, "live setting changed through the admin API");
        let settings_json =
            serde_json::to_string(&settings).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(v1::SetResponse { settings_json }))
    }
}

impl AdminService {
    /// The evicted members, with their addresses where they are still registered.
    async fn evictions(&self) -> v1::EvictResponse {
        let mut evicted = Vec::new();
        for (role, name) in self.evicted.list() {
            let address = self
                .membership
                .members(role)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|m| m.name == name)
                .map(|m| m.address)
                .unwrap_or_default();
            evicted.push(v1::MemberStatus {
                role: role.to_string(),
                name,
                address,
                evicted: true,
            });
        }
        v1::EvictResponse { evicted }
    }

    /// Pauses (`running` becomes `pausing`; the loop holds at its next gate) or unpauses
    /// (`pausing` or `paused` becomes `running`); returns the state after the request. A run
    /// that is not running (starting, stopping, ended) is not paused.
    fn set_paused(&self, on: bool) -> v1::PauseResponse {
        let mut state = String::new();
        self.status.update(|s| {
            match (on, s.state.as_str()) {
                (true, "running") => s.state = "pausing".into(),
                (false, "pausing" | "paused") => s.state = "running".into(),
                _ => {}
            }
            state = s.state.clone();
        });
        let wanted = !on || matches!(state.as_str(), "pausing" | "paused");
        if wanted && *self.pause.borrow() != on {
            tracing::info!(
                "{} requested through the admin API",
                if on {
                    "pause (after the iterations in flight)"
                } else {
                    "unpause"
                }
            );
            self.pause.send_replace(on);
        }
        v1::PauseResponse { state }
    }
}

/// Serves `Coordinator.Register` and `Coordinator.Heartbeat`.
pub struct MembershipService {
    pub membership: Arc<dyn Membership>,
    /// Registering a member takes an operator (or a member's certificate): a member receives
    /// the run's work and weights.
    pub auth: AdminAuth,
}

fn role(r: i32) -> Result<Role, Status> {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Rollout) => Ok(Role::Rollout),
        Ok(v1::Role::Scorer) => Ok(Role::Scorer),
        Ok(v1::Role::Learner) => Ok(Role::Learner),
        _ => Err(Status::invalid_argument(format!("invalid `role` {r}"))),
    }
}

fn internal(e: crate::CoordinatorError) -> Status {
    Status::internal(e.to_string())
}

fn status(e: MembershipError) -> Status {
    match e {
        MembershipError::NotRegistered { .. } => Status::not_found(e.to_string()),
        MembershipError::StaleEpoch { .. } => Status::aborted(e.to_string()),
        MembershipError::Invalid(_) => Status::invalid_argument(e.to_string()),
        MembershipError::Backend(_) => Status::unavailable(e.to_string()),
        MembershipError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
    }
}

#[tonic::async_trait]
impl v1::coordinator_server::Coordinator for MembershipService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        let r = request.into_inner();
        let epoch = self
            .membership
            .register(
                role(r.role)?,
                &r.name,
                &r.address,
                Duration::from_secs(u64::from(MEMBER_TTL_SECONDS)),
            )
            .await
            .map_err(status)?;
        tracing::info!(role = %role(r.role)?, name = %r.name, address = %r.address, epoch, "member registered");
        Ok(Response::new(v1::RegisterResponse {
            epoch,
            ttl_seconds: MEMBER_TTL_SECONDS,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.auth.check(&request, Access::Operator)?;
        let r = request.into_inner();
        self.membership
            .heartbeat(role(r.role)?, &r.name, r.epoch)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }
}
