//! Generation phase: prompts are split into leases, leases are handed to live rollout workers,
//! a failed or timed-out lease is expired in the ledger and re-leased (to another worker when
//! there is one), and every returned completion is checked against its lease.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rlhf_core::{PolicyVersion, SampleId};
use rlhf_data::{DropReason, LeaseId, Ledger, PromptRecord};
use rlhf_membership::Role;
use rlhf_proto::v1;

use crate::CoordinatorError;
use crate::cluster::Cluster;

/// A prompt as the loop handles it.
#[derive(Debug, Clone)]
pub struct PromptCtx {
    pub record: PromptRecord,
    /// What rollout workers receive.
    pub wire: v1::Prompt,
    /// The prompt as text, for scorers and the audit log.
    pub text: String,
}

impl PromptCtx {
    pub fn new(record: PromptRecord, chat: bool) -> Self {
        let wire = match (&record.prompt, chat) {
            (rlhf_data::Prompt::Text(t), false) => v1::Prompt {
                prompt_id: record.id.clone(),
                text: t.clone(),
                messages: vec![],
            },
            (p, _) => v1::Prompt {
                prompt_id: record.id.clone(),
                text: String::new(),
                messages: p.to_messages().iter().map(Into::into).collect(),
            },
        };
        let text = record.prompt.display_text();
        Self { record, wire, text }
    }
}

/// The ledger, shared by concurrent leases.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// What one generation round asks for.
#[derive(Debug, Clone)]
pub struct GenPlan {
    pub iteration: u64,
    pub version: u64,
    pub weights_from: String,
    /// The learner incarnation `version` belongs to (0: any).
    pub incarnation: u64,
    pub n: u32,
    pub sampling: v1::SamplingParams,
    pub seed: u64,
    pub prompts_per_lease: usize,
    pub lease_timeout: Duration,
    pub attempts: u32,
}

/// What a generation round produced.
#[derive(Debug, Default)]
pub struct GenOutcome {
    /// In prompt order, then sample index.
    pub completions: Vec<v1::Completion>,
    /// Seconds workers spent fetching new weights.
    pub weight_sync_s: f64,
    /// Seconds workers spent sampling (summed over batches).
    pub sample_s: f64,
    /// Completion tokens generated.
    pub tokens: u64,
    /// Leases that failed and were re-leased.
    pub releases: u32,
    /// Prompts the workers skipped (too long for the context): no completions, their samples
    /// dropped in the ledger.
    pub skipped: Vec<v1::SkippedPrompt>,
}

fn lock(l: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one generation round over the live rollout workers.
#[tracing::instrument(name = "generate", skip_all, fields(iteration = plan.iteration, prompts = prompts.len()))]
pub async fn generate(
    cluster: &Cluster,
    ledger: Option<&SharedLedger>,
    prompts: &[PromptCtx],
    plan: &GenPlan,
) -> Result<GenOutcome, CoordinatorError> {
    let workers = cluster.healthy(cluster.members(Role::Rollout).await?);
    // Workers still taking leases this round; one that fails leaves the round unless it is the
    // last one (then it retries with backoff, up to the attempt limit).
    let active = Mutex::new(workers.len());
    let in_flight = Mutex::new(0usize);
    let chunks: Vec<&[PromptCtx]> = prompts.chunks(plan.prompts_per_lease).collect();
    let queue: Mutex<VecDeque<(usize, u32)>> =
        Mutex::new((0..chunks.len()).map(|i| (i, 0)).collect());
    let results: Mutex<BTreeMap<usize, v1::GenerateResponse>> = Mutex::new(BTreeMap::new());
    let fatal: Mutex<Option<CoordinatorError>> = Mutex::new(None);
    let releases = Mutex::new(0u32);
    let lease_counter = Mutex::new(0u64);

    let work = workers.iter().map(|w| async {
        loop {
            if fatal.lock().map(|f| f.is_some()).unwrap_or(true) {
                return;
            }
            // Pop a lease; with none queued, wait while others are in flight (a failed one
            // comes back to the queue), and stop once everything is done.
            let next = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                let mut f = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                match q.pop_front() {
                    Some(item) => {
                        *f += 1;
                        Some(item)
                    }
                    None if *f == 0 => return,
                    None => None,
                }
            };
            let Some((ci, attempt)) = next else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _done = InFlight(&in_flight);
            let chunk = chunks[ci];
            // Lease the prompts in the ledger.
            let mut leases: Vec<LeaseId> = vec![];
            if let Some(l) = ledger {
                let mut l = lock(l);
                for p in chunk {
                    match l.lease(plan.iteration, &p.record.id, &w.name) {
                        Ok(id) => leases.push(id),
                        Err(e) => {
                            *fatal.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(CoordinatorError::Ledger(e.to_string()));
                            return;
                        }
                    }
                }
            }
            let lease_id = {
                let mut c = lease_counter.lock().unwrap_or_else(|p| p.into_inner());
                *c += 1;
                format!("{}-{}-{}", plan.iteration, ci, *c)
            };
            let outcome = tokio::time::timeout(plan.lease_timeout, run_lease(cluster, &w.address, chunk, plan, &lease_id)).await;
            let outcome = match outcome {
                Ok(r) => r,
                Err(_) => Err(format!("lease timed out after {:.0}s", plan.lease_timeout.as_secs_f64())),
            };
            match outcome {
                Ok(resp) => {
                    for s in &resp.skipped {
                        if ledger.is_some() {
                            tracing::warn!(prompt = %s.prompt_id, "prompt skipped: {}", s.reason);
                        } else {
                            tracing::debug!(prompt = %s.prompt_id, "prompt skipped: {}", s.reason);
                        }
                    }
                    if let Some(l) = ledger {
                        let mut l = lock(l);
                        for s in &resp.skipped {
                            for sample_index in 0..plan.n {
                                let id = SampleId {
                                    iteration: plan.iteration,
                                    prompt_id: s.prompt_id.clone(),
                                    sample_index,
                                };
                                let reason = DropReason::PromptTooLong { detail: s.reason.clone() };
                                if let Err(e) = l.dropped(&id, reason) {
                                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) =
                                        Some(CoordinatorError::Ledger(e.to_string()));
                                    return;
                                }
                            }
                        }
                        for c in &resp.completions {
                            let id = sample_id(c);
                            let pos = chunk.iter().position(|p| p.record.id == id.prompt_id).unwrap_or(0);
                            let lease = leases.get(pos).copied().unwrap_or(LeaseId(0));
                            if let Err(e) = l.generated(lease, &id, PolicyVersion(c.policy_version)) {
                                *fatal.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(CoordinatorError::Ledger(e.to_string()));
                                return;
                            }
                        }
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).insert(ci, resp);
                }
                Err(msg) => {
                    tracing::warn!(worker = %w.name, lease = %lease_id, attempt, error = %msg, "lease failed; re-leasing");
                    if let Some(l) = ledger {
                        let mut l = lock(l);
                        for lease in &leases {
                            let _ = l.expire(*lease);
                        }
                    }
                    *releases.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    cluster.suspect(&w.address);
                    let last_one = {
                        let mut a = active.lock().unwrap_or_else(|p| p.into_inner());
                        if *a > 1 {
                            *a -= 1;
                            false
                        } else {
                            true
                        }
                    };
                    if attempt + 1 >= plan.attempts {
                        *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(CoordinatorError::Rollout(format!(
                            "lease of {} prompts failed {} times, last on worker `{}` ({}): {msg}",
                            chunk.len(),
                            attempt + 1,
                            w.name,
                            w.address
                        )));
                        return;
                    }
                    queue.lock().unwrap_or_else(|p| p.into_inner()).push_back((ci, attempt + 1));
                    if !last_one {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
    });
    futures::future::join_all(work).await;
    if let Some(e) = fatal.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    if results.len() != chunks.len() {
        return Err(CoordinatorError::Rollout(format!(
            "{} of {} leases never completed",
            chunks.len() - results.len(),
            chunks.len()
        )));
    }
    let mut out = GenOutcome {
        releases: releases.into_inner().unwrap_or(0),
        ..Default::default()
    };
    for (_, resp) in results {
        out.weight_sync_s += resp.weight_sync_seconds;
        out.sample_s += resp.generate_seconds;
        out.tokens += resp
            .completions
            .iter()
            .map(|c| c.completion_ids.len() as u64)
            .sum::<u64>();
        out.completions.extend(resp.completions);
        out.skipped.extend(resp.skipped);
    }
    Ok(out)
}

/// Decrements the in-flight lease count when a lease attempt ends, however it ends.
struct InFlight<'a>(&'a Mutex<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *f = f.saturating_sub(1);
    }
}

/// The sample id of a completion (checked present by [`run_lease`]).
pub fn sample_id(c: &v1::Completion) -> SampleId {
    c.id.as_ref().map(SampleId::from).unwrap_or(SampleId {
        iteration: 0,
        prompt_id: String::new(),
        sample_index: 0,
    })
}

/// One Generate call; the response is checked against the lease (ids, counts, version).
async fn run_lease(
    cluster: &Cluster,
    address: &str,
    chunk: &[PromptCtx],
    plan: &GenPlan,
    lease_id: &str,
) -> Result<v1::GenerateResponse, String> {
    let start = Instant::now();
    let mut client = cluster.rollout(address).map_err(|e| e.to_string())?;
    let req = v1::GenerateRequest {
        iteration: plan.iteration,
        lease_id: lease_id.to_string(),
        policy_version: plan.version,
        weights_from: plan.weights_from.clone(),
        weights_incarnation: plan.incarnation,
        prompts: chunk.iter().map(|p| p.wire.clone()).collect(),
        n: plan.n,
        sampling: Some(plan.sampling.clone()),
        seed: plan.seed,
    };
    let mut stream = client
        .generate(req)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut merged = v1::GenerateResponse {
        lease_id: lease_id.to_string(),
        ..Default::default()
    };
    while let Some(resp) = stream.next().await {
        let resp = resp.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        if resp.lease_id != lease_id {
            return Err(format!(
                "response for lease `{}` on lease `{lease_id}` (fenced)",
                resp.lease_id
            ));
        }
        merged.weight_sync_seconds += resp.weight_sync_seconds;
        merged.generate_seconds += resp.generate_seconds;
        merged.completions.extend(resp.completions);
        merged.skipped.extend(resp.skipped);
    }
    // Skipped prompts are prompts of the lease, each once; the others get every index exactly
    // once, from the requested version.
    let mut skipped = HashSet::new();
    for s in &merged.skipped {
        if !chunk.iter().any(|p| p.record.id == s.prompt_id) || !skipped.insert(&s.prompt_id) {
            return Err(format!("unexpected skipped prompt `{}`", s.prompt_id));
        }
    }
    let mut seen = HashSet::new();
    for c in &merged.completions {
        let id = c.id.as_ref().ok_or("a completion without an id")?;
        if id.iteration != plan.iteration
            || id.sample_index >= plan.n
            || !chunk.iter().any(|p| p.record.id == id.prompt_id)
            || skipped.contains(&id.prompt_id)
        {
            return Err(format!("unexpected completion {}", SampleId::from(id)));
        }
        if c.policy_version != plan.version {
            return Err(format!(
                "completion from version {} on a lease for version {}",
                c.policy_version, plan.version
            ));
        }
        if !seen.insert((id.prompt_id.clone(), id.sample_index)) {
            return Err(format!("duplicate completion {}", SampleId::from(id)));
        }
    }
    let want = (chunk.len() - skipped.len()) * plan.n as usize;
    if seen.len() != want {
        return Err(format!("{} completions for a lease of {want}", seen.len()));
    }
    // Stable order: prompt order, then sample index.
    merged.completions.sort_by_key(|c| {
        let id = sample_id(c);
        (
            chunk
                .iter()
                .position(|p| p.record.id == id.prompt_id)
                .unwrap_or(usize::MAX),
            id.sample_index,
        )
    });
    tracing::debug!(lease = %lease_id, seconds = start.elapsed().as_secs_f64(), "lease done");
    Ok(merged)
}
