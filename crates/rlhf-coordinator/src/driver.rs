//! The loop: produce (lease → generate → score) and consume (admit → build units → train →
//! log), synchronously (`max_policy_lag = 0`: exactly on-policy, reproducible) or with
//! generation running up to `max_policy_lag` versions ahead of training.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rlhf_algo::UnitKind;
use rlhf_core::{CancellationToken, PolicyVersion, mix};
use rlhf_data::{
    AuditRecord, AuditWriter, CursorState, DropReason, FinishReason, HistoryWriter, MetricsRecord,
    MetricsWriter, PromptCursor,
};
use rlhf_membership::Role;
use rlhf_proto::v1;
use tokio::sync::{mpsc, watch};

use crate::CoordinatorError;
use crate::cluster::Cluster;
use crate::config::CoordinatorConfig;
use crate::generate::{GenOutcome, GenPlan, PromptCtx, SharedLedger, generate, sample_id};
use crate::learn::{Eligible, build_units, checkpoint, train};
use crate::score::{ScoreOutcome, score};
use crate::status::{Progress, SharedStatus};

/// One iteration's scored samples, on their way to the learner.
pub(crate) struct Produced {
    pub iteration: u64,
    pub prompts: Vec<PromptCtx>,
    pub generation: GenOutcome,
    pub scores: Vec<ScoreOutcome>,
    pub generate_s: f64,
    pub score_s: f64,
    /// The prompt cursor just after this iteration's batch was drawn (for resume points).
    pub cursor: CursorState,
}

/// What generation needs, owned so it can run on its own task.
#[derive(Clone)]
pub(crate) struct Producer {
    pub cfg: CoordinatorConfig,
    pub cluster: Cluster,
    pub ledger: SharedLedger,
    /// The learner's incarnation (its line of versions), read at start and after a resume.
    pub incarnation: Arc<AtomicU64>,
    /// Whether held-out prompts too long for the context were reported (once per run).
    pub heldout_too_long_said: Arc<std::sync::atomic::AtomicBool>,
}

impl Producer {
    /// The learner incarnation the run's versions belong to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::SeqCst)
    }

    /// Records the learner's incarnation (at start, and after it resumed).
    pub fn set_incarnation(&self, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::SeqCst);
    }

    fn sampling(&self) -> v1::SamplingParams {
        let s = &self.cfg.sampling;
        v1::SamplingParams {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            stop_ids: vec![],
        }
    }

    async fn learner_address(&self) -> Result<String, CoordinatorError> {
        Ok(self.cluster.members(Role::Learner).await?[0]
            .address
            .clone())
    }

    /// What one generation round asks of the workers.
    async fn plan(
        &self,
        iteration: u64,
        version: u64,
        n: u32,
        seed: u64,
    ) -> Result<GenPlan, CoordinatorError> {
        Ok(GenPlan {
            iteration,
            version,
            weights_from: self.learner_address().await?,
            incarnation: self.incarnation(),
            n,
            sampling: self.sampling(),
            seed,
            prompts_per_lease: self.cfg.prompts_per_lease,
            lease_timeout: Duration::from_secs_f64(self.cfg.lease_timeout_s),
            attempts: self.cfg.lease_attempts,
        })
    }

    /// Scores `completions` of `prompts` within the configured deadline (`evaluation`: the
    /// held-out reward, which no scorer asks people about).
    async fn score(
        &self,
        prompts: &[PromptCtx],
        completions: &[v1::Completion],
        evaluation: bool,
    ) -> Result<Vec<ScoreOutcome>, CoordinatorError> {
        let by_id: HashMap<&str, &PromptCtx> =
            prompts.iter().map(|p| (p.record.id.as_str(), p)).collect();
        let deadline = Duration::from_secs_f64(self.cfg.score_deadline_s);
        score(&self.cluster, &by_id, completions, deadline, evaluation).await
    }

    /// Generates and scores one iteration's `prompts` with policy `version`; `cursor` is where
    /// the prompt cursor stands after drawing them (kept with the result for resume points).
    #[tracing::instrument(name = "produce", skip_all, fields(iteration = iteration, version = version))]
    pub async fn produce(
        &self,
        iteration: u64,
        prompts: Vec<PromptCtx>,
        cursor: CursorState,
        version: u64,
    ) -> Result<Produced, CoordinatorError> {
        let version = if self.cfg.offline { 0 } else { version };
        let n = self.cfg.samples_per_prompt;
        let plan = self
            .plan(iteration, version, n, mix(self.cfg.seed, iteration))
            .await?;
        let t = Instant::now();
        let generation = generate(&self.cluster, Some(&self.ledger), &prompts, &plan).await?;
        let generate_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let scores = self.score(&prompts, &generation.completions, false).await?;
        let score_s = t.elapsed().as_secs_f64();
        {
            let mut l = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for (c, s) in generation.completions.iter().zip(&scores) {
                let id = sample_id(c);
                let res = if c.logprobs.iter().any(|x| !x.is_finite()) {
                    l.dropped(
                        &id,
                        DropReason::NonFinite {
                            detail: "sampler log-prob".into(),
                        },
                    )
                } else {
                    match &s.reward {
                        Ok(_) => l.scored(&id),
                        Err(m) if m.kind == "non_finite" => l.dropped(
                            &id,
                            DropReason::NonFinite {
                                detail: m.message.clone(),
                            },
                        ),
                        Err(m) => l.dropped(
                            &id,
                            DropReason::ScoreMissing {
                                detail: m.message.clone(),
                            },
                        ),
                    }
                };
                res.map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
            }
        }
        Ok(Produced {
            iteration,
            prompts,
            generation,
            scores,
            generate_s,
            score_s,
            cursor,
        })
    }

    /// Mean reward of `prompts` sampled `eval_samples` times each from `version` with a fixed
    /// seed (not recorded in the ledger); `None` when nothing could be scored.
    #[tracing::instrument(name = "evaluate", skip_all, fields(version = version))]
    pub async fn evaluate(
        &self,
        prompts: &[PromptCtx],
        version: u64,
    ) -> Result<Option<f64>, CoordinatorError> {
        if prompts.is_empty() {
            return Ok(None);
        }
        let n = self.cfg.eval_samples;
        let plan = self
            .plan(0, version, n, mix(self.cfg.seed, u64::MAX))
            .await?;
        let generation = generate(&self.cluster, None, prompts, &plan).await?;
        if !generation.skipped.is_empty()
            && !self.heldout_too_long_said.swap(true, Ordering::SeqCst)
        {
            tracing::warn!(
                skipped = generation.skipped.len(),
                of = prompts.len(),
                "held-out prompts too long for the policy's context are left out of the \
                 held-out reward"
            );
        }
        let scores = self.score(prompts, &generation.completions, true).await?;
        let values: Vec<f64> = scores
            .iter()
            .filter_map(|s| s.reward.as_ref().ok().copied())
            .collect();
        Ok((!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64))
    }
}

/// The consumer side: admission, units, training, logs.
pub(crate) struct Consumer {
    pub producer: Producer,
    pub kind: UnitKind,
    pub audit: AuditWriter,
    pub metrics: MetricsWriter,
    pub timings: MetricsWriter,
    pub history: HistoryWriter,
    pub history_written: usize,
    pub version: u64,
    pub heldout: Vec<PromptCtx>,
    pub status: SharedStatus,
    pub progress: Progress,
    pub start: Instant,
    pub idle_s: f64,
    pub trained: u64,
    pub dropped: BTreeMap<String, u64>,
    pub heldout_rewards: Vec<(u64, f64)>,
    /// The initial policy's held-out reward (kept for resume points).
    pub initial_heldout: Option<f64>,
    /// The prompt cursor after the last consumed iteration's batch.
    pub last_cursor: Option<CursorState>,
    /// Iterations, evaluation and checkpoint intervals, as changed while the run goes on.
    pub live: crate::live::Live,
}

impl Consumer {
    fn cfg(&self) -> &CoordinatorConfig {
        &self.producer.cfg
    }

    fn drop_count(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// Asks the learner for a checkpoint at `dir` and, when it wrote its training state, adds
    /// the coordinator's `resume.json` (last) so that the run can resume from it.
    pub async fn checkpoint(
        &self,
        learner: &str,
        dir: &std::path::Path,
        iterations_done: u64,
    ) -> Result<(), CoordinatorError> {
        let incarnation = self.producer.incarnation();
        let resumable = checkpoint(&self.producer.cluster, learner, incarnation, dir).await?;
        let Some(cursor) = self.last_cursor.filter(|_| resumable) else {
            return Ok(());
        };
        let state = crate::resume::RunState {
            format: crate::resume::FORMAT,
            iterations_done,
            policy_version: self.version,
            cursor,
            samples_trained: self.trained,
            dropped: self.dropped.clone(),
            initial_heldout_reward: self.initial_heldout,
            heldout_rewards: self.heldout_rewards.clone(),
            logs: crate::resume::log_lengths(&self.cfg().output_dir)?,
            seed: self.cfg().seed,
            samples_per_prompt: self.cfg().samples_per_prompt,
        };
        crate::resume::write(dir, &state)
    }

    /// Trains on one produced iteration and writes its logs.
    #[tracing::instrument(name = "consume", skip_all, fields(iteration = p.iteration))]
    pub async fn consume(&mut self, p: Produced) -> Result<(), CoordinatorError> {
        let t_iter = Instant::now();
        self.last_cursor = Some(p.cursor);
        let max_lag = self.cfg().max_policy_lag;
        let current = self.version;
        // Admission and grouping by prompt.
        let mut groups: Vec<Vec<Eligible<'_>>> = p.prompts.iter().map(|_| vec![]).collect();
        let index_of: HashMap<&str, usize> = p
            .prompts
            .iter()
            .enumerate()
            .map(|(i, q)| (q.record.id.as_str(), i))
            .collect();
        let mut stale = vec![];
        let mut lags = vec![];
        for (i, (c, s)) in p.generation.completions.iter().zip(&p.scores).enumerate() {
            let Ok(reward) = s.reward else { continue };
            if c.logprobs.iter().any(|x| !x.is_finite()) {
                continue;
            }
            let lag = PolicyVersion(c.policy_version).lag_behind(PolicyVersion(current));
            if !self.cfg().offline && lag > max_lag {
                stale.push((i, lag));
                continue;
            }
            lags.push(lag as f64);
            let pid =
                c.id.as_ref()
                    .map(|x| x.prompt_id.as_str())
                    .unwrap_or_default();
            if let Some(&g) = index_of.get(pid) {
                groups[g].push(Eligible {
                    index: i,
                    completion: c,
                    reward,
                });
            }
        }
        let built = build_units(
            self.kind,
            &self.cfg().units,
            &groups,
            self.cfg().samples_per_prompt as usize,
        )?;
        let learner = self.producer.cluster.members(Role::Learner).await?[0]
            .address
            .clone();
        let n_units = built.units.len();
        let t_train = Instant::now();
        let trained = if n_units > 0 {
            let incarnation = self.producer.incarnation();
            Some(
                train(
                    &self.producer.cluster,
                    &learner,
                    p.iteration,
                    incarnation,
                    built.units,
                )
                .await?,
            )
        } else {
            tracing::warn!(
                iteration = p.iteration,
                "no training units this iteration (every prompt's samples tied or failed)"
            );
            None
        };
        let train_s = t_train.elapsed().as_secs_f64();
        // Ledger: trained, unselected, stale.
        {
            let mut l = self
                .producer
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (i, lag) in &stale {
                let id = sample_id(&p.generation.completions[*i]);
                l.dropped(&id, DropReason::Stale { lag: *lag, max_lag })
                    .map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
            }
            for (i, (c, s)) in p.generation.completions.iter().zip(&p.scores).enumerate() {
                if s.reward.is_err()
                    || c.logprobs.iter().any(|x| !x.is_finite())
                    || stale.iter().any(|(j, _)| *j == i)
                {
                    continue;
                }
                let id = sample_id(c);
                let res = if trained.is_some() && built.used.contains(&i) {
                    l.trained(&id)
                } else {
                    l.dropped(&id, DropReason::Unselected)
                };
                res.map_err(|e| CoordinatorError::Ledger(e.to_string()))?;
            }
        }
        // Counts.
        for (c, s) in p.generation.completions.iter().zip(&p.scores) {
            match &s.reward {
                _ if c.logprobs.iter().any(|x| !x.is_finite()) => {
                    self.drop_count("non_finite_logprob")
                }
                Err(m) if m.kind == "non_finite" => self.drop_count("non_finite_score"),
                Err(_) => self.drop_count("score_missing"),
                Ok(_) => {}
            }
        }
        for _ in &stale {
            self.drop_count("stale");
        }
        for _ in 0..p.generation.skipped.len() * self.cfg().samples_per_prompt as usize {
            self.drop_count("prompt_too_long");
        }
        let used = if trained.is_some() {
            built.used.len() as u64
        } else {
            0
        };
        self.trained += used;
        // Metrics (deterministic) and timings (not).
        let rewards: Vec<f64> = p
            .scores
            .iter()
            .filter_map(|s| s.reward.as_ref().ok().copied())
            .collect();
        let mut m = MetricsRecord::new(p.iteration);
        if !rewards.is_empty() {
            let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
            m.reward_mean = Some(mean);
            m.reward_std = Some(
                (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rewards.len() as f64)
                    .sqrt(),
            );
        }
        m.staleness = (!lags.is_empty()).then(|| lags.iter().sum::<f64>() / lags.len() as f64);
        m.extra.insert("units".into(), n_units as f64);
        m.extra
            .insert("samples".into(), p.generation.completions.len() as f64);
        m.extra
            .insert("samples_scored".into(), rewards.len() as f64);
        m.extra.insert("samples_trained".into(), used as f64);
        m.extra.insert("samples_stale".into(), stale.len() as f64);
        m.extra
            .insert("prompts_too_long".into(), p.generation.skipped.len() as f64);
        m.extra.insert(
            "prompts_no_signal".into(),
            built.report.skipped_no_signal as f64,
        );
        m.extra
            .insert("completion_tokens".into(), p.generation.tokens as f64);
        if let Some((v, tm)) = &trained {
            self.version = *v;
            m.policy_version = Some(PolicyVersion(*v));
            m.loss = Some(tm.loss);
            m.kl = Some(tm.kl);
            m.margin = Some(tm.chosen_reward - tm.rejected_reward);
            m.extra.insert("chosen_reward".into(), tm.chosen_reward);
            m.extra.insert("rejected_reward".into(), tm.rejected_reward);
            m.extra.insert("accuracy".into(), tm.accuracy);
            m.extra.insert("grad_norm".into(), tm.grad_norm);
            m.extra.insert(
                "rejected_nonfinite".into(),
                f64::from(tm.rejected_nonfinite),
            );
            for (k, v) in &tm.extra {
                m.extra.insert(format!("objective_{k}"), *v);
            }
        }
        // Held-out evaluation after the update.
        let settings = self.live.get();
        let every = settings.eval_every;
        let last = p.iteration + 1 == settings.iterations;
        if ((every > 0 && (p.iteration + 1).is_multiple_of(every)) || last)
            && let Some(r) = self.producer.evaluate(&self.heldout, self.version).await?
        {
            m.extra.insert("heldout_reward".into(), r);
            self.heldout_rewards.push((self.version, r));
        }
        let wall = self.start.elapsed().as_secs_f64();
        let mut t = MetricsRecord::new(p.iteration);
        t.policy_version = m.policy_version;
        t.elapsed_s = Some(wall);
        t.tokens_per_s = Some(p.generation.tokens as f64 / p.generation.sample_s.max(1e-9));
        t.extra.insert("generate_s".into(), p.generate_s);
        t.extra
            .insert("weight_sync_s".into(), p.generation.weight_sync_s);
        t.extra.insert("score_s".into(), p.score_s);
        t.extra.insert("train_s".into(), train_s);
        t.extra
            .insert("iteration_s".into(), t_iter.elapsed().as_secs_f64());
        t.extra
            .insert("lease_retries".into(), f64::from(p.generation.releases));
        if let Some((_, tm)) = &trained {
            t.extra.insert("learner_train_s".into(), tm.seconds);
        }
        t.learner_idle_fraction = Some(self.idle_fraction(wall));
        self.metrics
            .append(&m)
            .map_err(|e| CoordinatorError::Io(e.to_string()))?;
        self.timings
            .append(&t)
            .map_err(|e| CoordinatorError::Io(e.to_string()))?;
        self.write_audit(&p)?;
        self.flush_history()?;
        if settings.checkpoint_every > 0
            && (p.iteration + 1).is_multiple_of(settings.checkpoint_every)
            && !last
        {
            let dir = self
                .cfg()
                .output_dir
                .join("checkpoints")
                .join(format!("iter-{:05}", p.iteration + 1));
            self.checkpoint(&learner, &dir, p.iteration + 1).await?;
        }
        self.progress.set_total(settings.iterations);
        self.progress.iteration(&m, &t);
        self.status.update(|s| {
            s.iteration = p.iteration + 1;
            s.policy_version = self.version;
            s.samples_trained = self.trained;
            s.samples_rejected = self.dropped.values().sum();
            s.last_metrics_json = serde_json::to_string(&m).unwrap_or_default();
            s.last_timings_json = serde_json::to_string(&t).unwrap_or_default();
        });
        Ok(())
    }

    /// Learner idle fraction so far: wall time not spent training.
    fn idle_fraction(&self, wall: f64) -> f64 {
        (self.idle_s / wall.max(1e-9)).clamp(0.0, 1.0)
    }

    fn write_audit(&mut self, p: &Produced) -> Result<(), CoordinatorError> {
        let by_id: HashMap<&str, &PromptCtx> = p
            .prompts
            .iter()
            .map(|q| (q.record.id.as_str(), q))
            .collect();
        let records: Vec<AuditRecord> = p
            .generation
            .completions
            .iter()
            .zip(&p.scores)
            .map(|(c, s)| {
                let id = sample_id(c);
                let mut scores = BTreeMap::new();
                let mut errors = BTreeMap::new();
                match &s.reward {
                    Ok(v) => {
                        scores.insert(s.provenance.clone(), *v);
                        for (k, v) in &s.components {
                            scores.insert(format!("{}.{k}", s.provenance), *v);
                        }
                    }
                    Err(m) => {
                        errors.insert(s.provenance.clone(), format!("{}: {}", m.kind, m.message));
                    }
                }
                AuditRecord {
                    iteration: id.iteration,
                    prompt_id: id.prompt_id.clone(),
                    sample_index: id.sample_index,
                    policy_version: PolicyVersion(c.policy_version),
                    prompt: by_id
                        .get(id.prompt_id.as_str())
                        .map(|q| q.text.clone())
                        .unwrap_or_default(),
                    completion: c.text.clone(),
                    completion_token_ids: c.completion_ids.clone(),
                    logprobs: c.logprobs.clone(),
                    finish_reason: if c.finish_reason == "stop" {
                        FinishReason::Stop
                    } else {
                        FinishReason::Length
                    },
                    scores,
                    score_errors: errors,
                    reward: s.reward.as_ref().ok().copied(),
                }
            })
            .collect();
        self.audit
            .append_batch(records.iter())
            .map_err(|e| CoordinatorError::Io(e.to_string()))
    }

    /// Appends ledger events not yet written.
    pub fn flush_history(&mut self) -> Result<(), CoordinatorError> {
        let events: Vec<_> = {
            let l = self
                .producer
                .ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            l.history()[self.history_written..].to_vec()
        };
        self.history_written += events.len();
        self.history
            .append_batch(events.iter())
            .map_err(|e| CoordinatorError::Io(e.to_string()))
    }
}

/// Waits while the run is paused (`Admin.Pause`), with the state `paused`; false when the run
/// is stopped instead.
pub(crate) async fn unpaused(
    paused: &mut watch::Receiver<bool>,
    stop: &CancellationToken,
    status: &SharedStatus,
) -> bool {
    if !*paused.borrow_and_update() {
        return true;
    }
    status.update(|s| {
        if s.state == "pausing" {
            s.state = "paused".into();
        }
    });
    tracing::info!("paused: no new work until Admin.Unpause (rlhf unpause) or a stop");
    let unpaused = tokio::select! {
        r = paused.wait_for(|p| !*p) => r.is_ok(),
        _ = stop.cancelled() => false,
    };
    if unpaused {
        tracing::info!("unpaused: continuing");
    }
    unpaused
}

/// Runs every iteration, synchronously or pipelined.
/// Starts at iteration `start` (0, or the iterations a resumed run had done) and returns the
/// iterations done in all.
pub(crate) async fn run_loop(
    consumer: &mut Consumer,
    mut cursor: PromptCursor,
    shutdown: &CancellationToken,
    mut paused: watch::Receiver<bool>,
    start: u64,
) -> Result<u64, CoordinatorError> {
    let status = consumer.status.clone();
    let cfg = consumer.cfg().clone();
    let (chat, per_iteration) = (cfg.chat, cfg.prompts_per_iteration);
    let batch = move |c: &mut PromptCursor| -> Vec<PromptCtx> {
        c.next_batch(per_iteration)
            .into_iter()
            .map(|r| PromptCtx::new(r, chat))
            .collect()
    };
    let live = consumer.live.clone();
    if cfg.max_policy_lag == 0 {
        let mut it = start;
        while it < live.get().iterations {
            if shutdown.is_cancelled() || !unpaused(&mut paused, shutdown, &status).await {
                return Ok(it);
            }
            let t = Instant::now();
            let prompts = batch(&mut cursor);
            let produced = consumer
                .producer
                .produce(it, prompts, cursor.state(), consumer.version)
                .await?;
            consumer.idle_s += t.elapsed().as_secs_f64();
            consumer.consume(produced).await?;
            it += 1;
        }
        return Ok(it);
    }
    // Pipelined: the producer runs ahead by up to `max_policy_lag` iterations.
    let (tx, mut rx) =
        mpsc::channel::<Result<Produced, CoordinatorError>>(cfg.max_policy_lag as usize);
    // (iterations consumed, policy version) as the consumer advances.
    let (version_tx, version_rx) = watch::channel((start, consumer.version));
    let lag = cfg.max_policy_lag;
    let producer = consumer.producer.clone();
    let stop = shutdown.child_token();
    let stop_producer = stop.clone();
    let planned = live.clone();
    let handle = tokio::spawn(async move {
        let mut it = start;
        loop {
            if it >= planned.get().iterations {
                // Every planned iteration is produced: wait until the consumer ends the run (it
                // cancels `stop`) or the run is extended (`Admin.Set`) before it has.
                tokio::select! {
                    _ = stop_producer.cancelled() => return cursor,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
            if stop_producer.is_cancelled() || !unpaused(&mut paused, &stop_producer, &status).await
            {
                return cursor;
            }
            // Start iteration `it` only once `it - max_policy_lag` iterations are trained: every
            // update adds at most one version, so no sample lags by more than that.
            let needed = it.saturating_sub(lag);
            let mut progress = version_rx.clone();
            let ready = tokio::select! {
                r = progress.wait_for(|(consumed, _)| *consumed >= needed) => r.is_ok(),
                _ = stop_producer.cancelled() => false,
            };
            if !ready {
                return cursor;
            }
            let version = version_rx.borrow().1;
            let prompts = batch(&mut cursor);
            let out = producer.produce(it, prompts, cursor.state(), version).await;
            let failed = out.is_err();
            if tx.send(out).await.is_err() || failed {
                return cursor;
            }
            it += 1;
        }
    });
    let mut done = start;
    let result = loop {
        if shutdown.is_cancelled() || done >= live.get().iterations {
            break Ok(done);
        }
        let t = Instant::now();
        let Some(next) = rx.recv().await else {
            break Ok(done);
        };
        consumer.idle_s += t.elapsed().as_secs_f64();
        match next {
            Ok(p) => {
                if let Err(e) = consumer.consume(p).await {
                    break Err(e);
                }
                done += 1;
                let _ = version_tx.send((done, consumer.version));
            }
            Err(e) => break Err(e),
        }
    };
    stop.cancel();
    rx.close();
    let _ = handle.await;
    result
}
