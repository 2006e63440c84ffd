//! One policy update: sequence log-probs of the units' completions under the policy (with
//! gradients) and the reference (without), the configured objective, global-norm clipping and
//! AdamW. Non-finite losses or gradients skip the step and are counted, never applied.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rlhf_algo::binary::BinaryBatch;
use rlhf_algo::listwise::ListBatch;
use rlhf_algo::pairwise::PairBatch;
use rlhf_algo::{
    LossOutput, Objective, ObjectiveInput, ObjectiveState, Stats, UnitKind, compute_loss,
};
use rlhf_model::load::host_vec;
use rlhf_model::{Checkpoints, PaddingSide, TokenBatch, Transformer, masked_sum};

use crate::LearnerError;
use crate::adamw::{FlatAdamW, FlatGrads};
use crate::groups::{completion_logprobs, samples};

/// One completion to train on.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    pub reward: f64,
}

/// A completion with what its sampler recorded, for policy-gradient objectives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub seq: Seq,
    /// Log-prob of each completion token under the policy that sampled it (one per token).
    pub behaviour_logprobs: Vec<f32>,
    /// The policy version that sampled it.
    pub policy_version: u64,
}

/// A training unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// Chosen, rejected, preference strength.
    Pair(Seq, Seq, f64),
    /// Best first.
    List(Vec<Seq>),
    /// A sample and whether it is desirable.
    Binary(Seq, bool),
    /// All scored samples of one prompt (GRPO, Dr. GRPO, RLOO, REINFORCE++).
    Group(Vec<Sampled>),
    /// One scored sample (PPO with a critic).
    Rollout(Sampled),
}

impl Unit {
    fn kind(&self) -> UnitKind {
        match self {
            Unit::Pair(..) => UnitKind::Pairs,
            Unit::List(_) => UnitKind::Lists,
            Unit::Binary(..) => UnitKind::Binary,
            Unit::Group(_) => UnitKind::Groups,
            Unit::Rollout(_) => UnitKind::Rollouts,
        }
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimSettings {
    pub lr: f64,
    pub weight_decay: f32,
    /// Global gradient-norm limit; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Units per optimizer step.
    pub batch_units: usize,
    /// Passes over the units of one update.
    pub epochs: usize,
}

/// Aggregated metrics of one update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateMetrics {
    pub loss: f64,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
    pub accuracy: f64,
    pub kl: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub rejected_nonfinite: u32,
    pub grad_norm: f64,
    pub steps: u32,
    pub extra: Vec<(String, f64)>,
}

/// The learner's training state.
pub struct TrainState<B: AutodiffBackend> {
    pub policy: Transformer<B>,
    pub reference: Transformer<B::InnerBackend>,
    pub(crate) optim: FlatAdamW<B>,
    pub objective: Objective,
    pub(crate) objective_state: ObjectiveState,
    pub settings: OptimSettings,
    pub(crate) pad: u32,
    /// The policy version: 0 for the initial policy, +1 per [`TrainState::update`].
    pub version: u64,
    /// PPO's critic and KL controller (see [`TrainState::with_critic`]).
    pub ppo: Option<crate::ppo::PpoState<B>>,
    /// Data-parallel replicas of the policy on further devices (see
    /// [`TrainState::with_data_parallel`]); empty on one device.
    pub(crate) replicas: Vec<crate::parallel::Replica<B>>,
    /// Gradient checkpointing of the trained models' forward passes (see
    /// [`TrainState::with_gradient_checkpointing`]).
    pub(crate) checkpointing: bool,
    /// Whether the reference was replaced by a policy snapshot (saved with the training state).
    pub(crate) reference_refreshed: bool,
}

/// What one optimizer step (or data-parallel shard) feeds its objective, and what its backward
/// pass needs besides the loss.
pub(crate) struct StepInput<B: AutodiffBackend> {
    pub(crate) input: ObjectiveInput<B>,
    /// Sequence-level KL estimate to the reference.
    pub(crate) kl: f64,
    /// Completion tokens trained on.
    pub(crate) tokens: u64,
    /// The policy forward's checkpoints, under gradient checkpointing.
    pub(crate) checkpoints: Option<Checkpoints<B>>,
}

impl<B: AutodiffBackend> TrainState<B> {
    pub fn new(
        policy: Transformer<B>,
        reference: Transformer<B::InnerBackend>,
        objective: Objective,
        settings: OptimSettings,
    ) -> Self {
        let optim = FlatAdamW::new(settings.weight_decay);
        let pad = policy.config.pad_token_id.unwrap_or(0);
        Self {
            policy,
            reference,
            optim,
            objective,
            objective_state: ObjectiveState::default(),
            settings,
            pad,
            version: 0,
            ppo: None,
            replicas: vec![],
            checkpointing: false,
            reference_refreshed: false,
        }
    }

    /// Gradient checkpointing (`learner.gradient_checkpointing`): the policy's (and PPO's
    /// critic's) training forward keeps only each decoder layer's input (and, for log-probs, no
    /// logits); the backward pass recomputes the head and the layers segment by segment. The
    /// same gradients up to rounding for one more forward pass (`rlhf_model::checkpoint`).
    pub fn with_gradient_checkpointing(mut self, on: bool) -> Self {
        self.checkpointing = on;
        self
    }

    /// Replaces the reference by the current policy (stored in the policy's compute precision).
    pub fn refresh_reference(&mut self) -> Result<(), LearnerError> {
        self.reference = self.policy.valid().cast_weights(self.policy.precision)?;
        self.reference_refreshed = true;
        Ok(())
    }

    /// Trains on `units` (`epochs` passes of `batch_units`-sized steps).
    pub fn update(&mut self, units: &[Unit]) -> Result<UpdateMetrics, LearnerError> {
        let want = self.objective.kind();
        if let Some(bad) = units.iter().find(|u| u.kind() != want) {
            return Err(LearnerError::Invalid(format!(
                "objective `{}` trains on {want:?}, got a {:?} unit",
                self.objective.name(),
                bad.kind()
            )));
        }
        let start = Instant::now();
        let mut m = UpdateMetrics::default();
        let mut total = StepStats::default();
        // Policy-gradient ratios need log π_old of the policy as it was before this update:
        // the samplers' log-probs when they sampled with this very version, else one forward.
        let old = if matches!(want, UnitKind::Groups | UnitKind::Rollouts) {
            self.old_logprobs(units)?
        } else {
            None
        };
        let per_step = self.settings.batch_units.max(1);
        // Each step's units, split into one shard per device (one shard on one device).
        let shards: Vec<Vec<std::ops::Range<usize>>> = units
            .chunks(per_step)
            .enumerate()
            .map(|(i, chunk)| self.shard_ranges(i * per_step, chunk.len()))
            .collect();
        // The reference does not change during an update: its log-probs of each shard's
        // sequences are computed once, not once per epoch.
        let reference = shards
            .iter()
            .map(|step| {
                step.iter()
                    .map(|r| self.reference_logps(&units[r.clone()], want))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (prepared, sampled_kl) = if want == UnitKind::Rollouts {
            let (p, kl) = self.ppo_prepare(units, old.as_deref(), &reference)?;
            (p, Some(kl))
        } else {
            (vec![], None)
        };
        for _ in 0..self.settings.epochs.max(1) {
            for (i, chunk) in units.chunks(per_step).enumerate() {
                let range = i * per_step..i * per_step + chunk.len();
                let step = match want {
                    // One sample per rollout unit: unit and sample indices coincide.
                    UnitKind::Rollouts => {
                        self.ppo_step(chunk, &prepared[range], old.is_some(), &reference[i][0])?
                    }
                    _ if shards[i].len() > 1 => {
                        self.parallel_step(units, &shards[i], &reference[i], old.as_deref())?
                    }
                    _ => {
                        let old = old.as_ref().map(|o| &o[range]);
                        let policy = &self.policy;
                        match self.step_input(policy, chunk, &reference[i][0], old)? {
                            Some(input) => self.optimise(input)?,
                            None => None,
                        }
                    }
                };
                match step {
                    Some(s) => {
                        m.steps += 1;
                        total.add(1.0, s);
                    }
                    None => m.rejected_nonfinite += chunk.len() as u32,
                }
            }
        }
        let n = f64::from(m.steps.max(1));
        m.tokens = total.tokens;
        m.loss = total.loss / n;
        m.chosen_reward = total.chosen / n;
        m.rejected_reward = total.rejected / n;
        m.accuracy = total.accuracy / n;
        m.kl = total.kl / n;
        m.grad_norm = total.grad_norm / n;
        m.extra = total.extra.into_iter().map(|(k, v)| (k, v / n)).collect();
        if let Some(kl) = sampled_kl {
            self.ppo_observe_kl(kl, units.len() as u64);
            m.extra.push(("sampled_kl".into(), kl));
        }
        m.seconds = start.elapsed().as_secs_f64();
        self.version += 1;
        Ok(m)
    }

    /// The reference's log-probs of the sequences of one step: one sum per sequence for pairs,
    /// lists and binary labels; per completion token (`[rows, width]`, see `groups.rs`) for
    /// groups and rollouts.
    fn reference_logps(&self, units: &[Unit], kind: UnitKind) -> Result<Vec<f32>, LearnerError> {
        match kind {
            UnitKind::Groups | UnitKind::Rollouts => {
                let seqs: Vec<&Seq> = samples(units).iter().map(|s| &s.seq).collect();
                completion_logprobs(&self.reference, &seqs, self.pad)
            }
            _ => {
                let (seqs, _) = flatten(units);
                let (lp, _) = seq_logps(&self.reference, &seqs, self.pad)?;
                Ok(host_vec(lp.into_data())?)
            }
        }
    }

    /// The objective's input for one step (or shard) of pair, list, binary or group units under
    /// `model` (the policy or one of its replicas), with the reference's log-probs `ref_host`
    /// and, for groups, log π_old. `None` when some log-prob was not finite (step skipped).
    pub(crate) fn step_input(
        &self,
        model: &Transformer<B>,
        units: &[Unit],
        ref_host: &[f32],
        old: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<Option<StepInput<B>>, LearnerError> {
        if self.objective.kind() == UnitKind::Groups {
            return self.group_input(model, units, old, ref_host);
        }
        let device = model.device();
        let (seqs, layout) = flatten(units);
        let (policy_lp, counts, checkpoints) =
            trained_seq_logps(model, &seqs, self.pad, self.checkpointing)?;
        let policy_host = host_vec(policy_lp.clone().detach().into_data())?;
        if policy_host.iter().chain(ref_host).any(|x| !x.is_finite()) {
            tracing::warn!(units = units.len(), "non-finite log-probs: step skipped");
            return Ok(None);
        }
        let reference =
            Tensor::<B, 1>::from_data(TensorData::new(ref_host.to_vec(), [seqs.len()]), &device);
        let counts_t =
            Tensor::<B, 1>::from_data(TensorData::new(counts.clone(), [seqs.len()]), &device);
        let input = build_input(&layout, units, policy_lp, reference, counts_t, &device);
        // KL and tokens over real sequences only (not the padding entries of short lists).
        let real = layout.real_rows(seqs.len());
        let rows = real.iter().filter(|&&r| r).count();
        let kl = policy_host
            .iter()
            .zip(ref_host)
            .zip(&real)
            .filter(|(_, r)| **r)
            .map(|((p, r), _)| f64::from(p - r))
            .sum::<f64>()
            / rows.max(1) as f64;
        let tokens = counts
            .iter()
            .zip(&real)
            .filter(|(_, r)| **r)
            .map(|(&c, _)| c as u64)
            .sum();
        Ok(Some(StepInput {
            input,
            kl,
            tokens,
            checkpoints,
        }))
    }

    /// The objective's loss on `input`; `None` (logged) when an input or the loss is not finite.
    pub(crate) fn checked_loss(
        &mut self,
        input: &ObjectiveInput<B>,
    ) -> Result<Option<LossOutput<B, Stats>>, LearnerError> {
        checked_loss(&self.objective, &mut self.objective_state, input)
    }

    /// Loss, backward, clipping and the AdamW step; `None` when the loss or gradient was not
    /// finite (step skipped). The step's KL estimate and token count are reported.
    pub(crate) fn optimise(
        &mut self,
        step: StepInput<B>,
    ) -> Result<Option<StepStats>, LearnerError> {
        let Some(out) = self.checked_loss(&step.input)? else {
            return Ok(None);
        };
        let mut grads = out.loss.backward();
        let grads = self.policy.param_gradients(step.checkpoints, &mut grads)?;
        let grads = self.optim.gather(&self.policy, grads);
        self.apply(grads, StepStats::new(out.stats, step.kl, step.tokens))
    }

    /// Clipping and the AdamW step with `grads` (of the policy's parameters, on its device);
    /// `None` when their norm is not finite (step skipped). Returns `report` with the norm.
    pub(crate) fn apply(
        &mut self,
        mut grads: FlatGrads<B>,
        mut report: StepStats,
    ) -> Result<Option<StepStats>, LearnerError> {
        let norm = grads.clip(self.settings.max_grad_norm);
        if !norm.is_finite() {
            tracing::warn!("non-finite gradient norm: step skipped");
            return Ok(None);
        }
        // The optimizer takes the module by value; module clones share parameter storage.
        self.policy = self
            .optim
            .step_flat(self.settings.lr, self.policy.clone(), grads)?;
        self.sync_replicas();
        report.grad_norm = norm;
        Ok(Some(report))
    }
}

/// The objective's loss on `input` (updating `state`); `None` (logged) when an input or the loss
/// is not finite.
pub(crate) fn checked_loss<B: AutodiffBackend>(
    objective: &Objective,
    state: &mut ObjectiveState,
    input: &ObjectiveInput<B>,
) -> Result<Option<LossOutput<B, Stats>>, LearnerError> {
    let out = match compute_loss(objective, input, state) {
        Ok(out) => out,
        Err(e) if e.to_string().contains("finite") => {
            tracing::warn!(error = %e, "objective rejected the batch");
            return Ok(None);
        }
        Err(e) => return Err(LearnerError::Objective(e.to_string())),
    };
    if !out.stats.loss().is_finite() {
        tracing::warn!("non-finite loss: step skipped");
        return Ok(None);
    }
    Ok(Some(out))
}

#[derive(Default)]
pub(crate) struct StepStats {
    pub(crate) loss: f64,
    pub(crate) chosen: f64,
    pub(crate) rejected: f64,
    pub(crate) accuracy: f64,
    pub(crate) kl: f64,
    pub(crate) tokens: u64,
    pub(crate) grad_norm: f64,
    pub(crate) extra: Vec<(String, f64)>,
}

impl StepStats {
    /// What a step reports of the objective's statistics (the gradient norm comes later).
    pub(crate) fn new(stats: Stats, kl: f64, tokens: u64) -> Self {
        let loss = f64::from(stats.loss());
        let (chosen, rejected, accuracy, extra) = match stats {
            Stats::Pair(s) => (
                f64::from(s.reward_chosen),
                f64::from(s.reward_rejected),
                f64::from(s.accuracy),
                vec![("margin".to_string(), f64::from(s.margin))],
            ),
            Stats::Binary(s) => (
                f64::from(s.reward_desirable),
                f64::from(s.reward_undesirable),
                0.0,
                vec![("reference_point".to_string(), f64::from(s.reference_point))],
            ),
            Stats::List(s) => (
                0.0,
                0.0,
                f64::from(s.top1_accuracy),
                vec![("ranking".to_string(), f64::from(s.ranking))],
            ),
            other => (
                0.0,
                0.0,
                0.0,
                other
                    .metrics()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), f64::from(v)))
                    .collect(),
            ),
        };
        Self {
            loss,
            chosen,
            rejected,
            accuracy,
            kl,
            tokens,
            grad_norm: 0.0,
            extra,
        }
    }

    /// Adds `other`, weighted by `w` (tokens add up unweighted); extras are matched by name.
    pub(crate) fn add(&mut self, w: f64, other: StepStats) {
        self.loss += w * other.loss;
        self.chosen += w * other.chosen;
        self.rejected += w * other.rejected;
        self.accuracy += w * other.accuracy;
        self.kl += w * other.kl;
        self.tokens += other.tokens;
        self.grad_norm += w * other.grad_norm;
        for (k, v) in other.extra {
            match self.extra.iter_mut().find(|(n, _)| *n == k) {
                Some(e) => e.1 += w * v,
                None => self.extra.push((k, w * v)),
            }
        }
    }

    /// The average of shards' reports weighted by their weights (summing to 1).
    pub(crate) fn weighted(parts: Vec<(f64, StepStats)>) -> Self {
        let mut out = StepStats::default();
        for (w, p) in parts {
            out.add(w, p);
        }
        out
    }
}

/// How flattened sequences map back to units.
enum Layout {
    /// `k` pairs: rows `0..k` chosen, `k..2k` rejected.
    Pairs(usize),
    /// `k` lists padded to `n` entries: row `i * n + j`; `valid[i]` entries are real.
    Lists {
        k: usize,
        n: usize,
        valid: Vec<usize>,
    },
    /// One row per sample.
    Binary,
}

impl Layout {
    /// Which of the `rows` flattened sequences are real (padding entries of lists are not).
    fn real_rows(&self, rows: usize) -> Vec<bool> {
        match self {
            Layout::Lists { n, valid, .. } => (0..rows).map(|i| i % n < valid[i / n]).collect(),
            _ => vec![true; rows],
        }
    }
}

fn flatten(units: &[Unit]) -> (Vec<&Seq>, Layout) {
    match units.first() {
        Some(Unit::Pair(..)) => {
            let mut seqs: Vec<&Seq> = units
                .iter()
                .filter_map(|u| {
                    if let Unit::Pair(c, _, _) = u {
                        Some(c)
                    } else {
                        None
                    }
                })
                .collect();
            seqs.extend(units.iter().filter_map(|u| {
                if let Unit::Pair(_, r, _) = u {
                    Some(r)
                } else {
                    None
                }
            }));
            (seqs, Layout::Pairs(units.len()))
        }
        Some(Unit::List(_)) => {
            let lists: Vec<&Vec<Seq>> = units
                .iter()
                .filter_map(|u| if let Unit::List(l) = u { Some(l) } else { None })
                .collect();
            let n = lists.iter().map(|l| l.len()).max().unwrap_or(1).max(1);
            let mut seqs = vec![];
            let mut valid = vec![];
            for l in &lists {
                valid.push(l.len());
                for j in 0..n {
                    // Padding entries repeat the first sequence: finite, masked out.
                    seqs.push(l.get(j).unwrap_or(&l[0]));
                }
            }
            (
                seqs,
                Layout::Lists {
                    k: lists.len(),
                    n,
                    valid,
                },
            )
        }
        Some(Unit::Binary(..) | Unit::Group(_) | Unit::Rollout(_)) | None => {
            let seqs: Vec<&Seq> = units
                .iter()
                .filter_map(|u| {
                    if let Unit::Binary(s, _) = u {
                        Some(s)
                    } else {
                        None
                    }
                })
                .collect();
            (seqs, Layout::Binary)
        }
    }
}

fn build_input<B: AutodiffBackend>(
    layout: &Layout,
    units: &[Unit],
    policy: Tensor<B, 1>,
    reference: Tensor<B, 1>,
    counts: Tensor<B, 1>,
    device: &B::Device,
) -> ObjectiveInput<B> {
    match layout {
        Layout::Pairs(k) => {
            let k = *k;
            let strength: Vec<f32> = units
                .iter()
                .map(|u| {
                    if let Unit::Pair(_, _, s) = u {
                        *s as f32
                    } else {
                        1.0
                    }
                })
                .collect();
            let mut b = PairBatch::new(policy.clone().slice(0..k), policy.slice(k..2 * k))
                .with_reference(reference.clone().slice(0..k), reference.slice(k..2 * k));
            b.chosen_tokens = Some(counts.clone().slice(0..k));
            b.rejected_tokens = Some(counts.slice(k..2 * k));
            b.preference = Some(Tensor::from_data(TensorData::new(strength, [k]), device));
            ObjectiveInput::Pairs(b)
        }
        Layout::Lists { k, n, valid } => {
            let (k, n) = (*k, *n);
            let mask: Vec<f32> = valid
                .iter()
                .flat_map(|&v| (0..n).map(move |j| if j < v { 1.0 } else { 0.0 }))
                .collect();
            let scores: Vec<f32> = units
                .iter()
                .flat_map(|u| {
                    let l = if let Unit::List(l) = u {
                        l.as_slice()
                    } else {
                        &[]
                    };
                    (0..n).map(move |j| l.get(j).map(|s| s.reward as f32).unwrap_or(0.0))
                })
                .collect();
            let mut b =
                ListBatch::new(policy.reshape([k, n])).with_reference(reference.reshape([k, n]));
            b.token_counts = Some(counts.reshape([k, n]));
            b.scores = Some(Tensor::from_data(TensorData::new(scores, [k, n]), device));
            b.mask = Some(Tensor::from_data(TensorData::new(mask, [k, n]), device));
            ObjectiveInput::Lists(b)
        }
        Layout::Binary => {
            let desirable = units
                .iter()
                .map(|u| matches!(u, Unit::Binary(_, true)))
                .collect();
            ObjectiveInput::Binary(BinaryBatch::new(policy, reference, desirable))
        }
    }
}

/// Summed completion log-probs `[n]` of sequences (prompt tokens excluded) and their
/// completion token counts.
pub fn seq_logps<B: Backend>(
    model: &Transformer<B>,
    seqs: &[&Seq],
    pad: u32,
) -> Result<(Tensor<B, 1>, Vec<f32>), LearnerError> {
    let batch = full_batch(seqs, pad)?;
    Ok(completion_sums(model.token_logprobs(&batch)?, seqs, &batch))
}

/// Sums of the completion tokens' entries of token log-probs `lp` (`[n, len - 1]`, of the
/// `batch` that [`full_batch`] made of `seqs`), and the completion token counts.
fn completion_sums<B: Backend>(
    lp: Tensor<B, 2>,
    seqs: &[&Seq],
    batch: &TokenBatch,
) -> (Tensor<B, 1>, Vec<f32>) {
    let l = batch.len;
    let mut mask = vec![0f32; seqs.len() * (l - 1)];
    for (r, s) in seqs.iter().enumerate() {
        let (p, f) = (s.prompt.len(), s.prompt.len() + s.completion.len());
        // Target position t predicts token t + 1: completion tokens are targets p..f.
        for t in p - 1..f - 1 {
            mask[r * (l - 1) + t] = 1.0;
        }
    }
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [seqs.len(), l - 1]), &lp.device());
    let counts = seqs.iter().map(|s| s.completion.len() as f32).collect();
    (masked_sum(lp, mask), counts)
}

/// [`seq_logps`] for a training step (see [`Transformer::token_logprobs_for_training`]).
#[allow(clippy::type_complexity)]
pub(crate) fn trained_seq_logps<B: AutodiffBackend>(
    model: &Transformer<B>,
    seqs: &[&Seq],
    pad: u32,
    checkpointing: bool,
) -> Result<(Tensor<B, 1>, Vec<f32>, Option<Checkpoints<B>>), LearnerError> {
    let batch = full_batch(seqs, pad)?;
    let (lp, checkpoints) = model.token_logprobs_for_training(&batch, checkpointing)?;
    let (sums, counts) = completion_sums(lp, seqs, &batch);
    Ok((sums, counts, checkpoints))
}

/// Prompt + completion of each sequence, right-padded; errors on an empty prompt or completion.
pub(crate) fn full_batch(seqs: &[&Seq], pad: u32) -> Result<TokenBatch, LearnerError> {
    if let Some(i) = seqs
        .iter()
        .position(|s| s.prompt.is_empty() || s.completion.is_empty())
    {
        return Err(LearnerError::Invalid(format!(
            "sequence {i} has an empty prompt or completion"
        )));
    }
    let full: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| s.prompt.iter().chain(&s.completion).copied().collect())
        .collect();
    Ok(TokenBatch::pad(&full, pad, PaddingSide::Right)?)
}
