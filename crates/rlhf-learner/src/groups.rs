//! Critic-free policy-gradient updates (GRPO, Dr. GRPO, RLOO, REINFORCE++) and SPPO on groups:
//! all scored samples of one prompt, with the log-probs their sampler recorded.
//!
//! Token layout: row `r` holds sample `r`'s completion tokens from column 0, right-padded to the
//! longest completion of the step (`mask` marks real tokens). Log-probs of three policies enter
//! the loss:
//! - `logp`: the policy being trained (differentiable);
//! - `old_logp`: the policy at the start of this update (the PPO ratio's denominator). When every
//!   sample was drawn by that very version (synchronous mode), the samplers' log-probs are used —
//!   they agree with teacher forcing to ~1e-5 (tested in rlhf-model) — otherwise one forward pass
//!   at the start of the update computes them;
//! - `behaviour_logp`: the stale sampler's log-probs, only when it differs from `old_logp`
//!   (asynchronous mode), for truncated importance weights;
//!
//! plus the reference's log-probs (for the KL term and the KL metric).

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_algo::policy::{GroupBatch, TokenBatch as PgTokens};
use rlhf_algo::{Objective, ObjectiveInput};
use rlhf_model::load::host_vec;
use rlhf_model::{Checkpoints, TokenBatch, Transformer};

use crate::LearnerError;
use crate::trainer::{Sampled, Seq, StepInput, TrainState, Unit, full_batch};

/// The entropy-bonus coefficient of a group objective (0 for the others).
fn entropy_coef(objective: &Objective) -> f64 {
    match objective {
        Objective::Grpo(c) => c.entropy_coef,
        Objective::DrGrpo(c) => c.entropy_coef,
        Objective::Rloo(c) => c.entropy_coef,
        Objective::ReinforcePp(c) => c.entropy_coef,
        Objective::Ppo(c) => c.entropy_coef,
        _ => 0.0,
    }
}

/// The samples of group and rollout units, in order.
pub(crate) fn samples(units: &[Unit]) -> Vec<&Sampled> {
    units
        .iter()
        .flat_map(|u| match u {
            Unit::Group(g) => g.as_slice(),
            Unit::Rollout(s) => std::slice::from_ref(s),
            _ => &[],
        })
        .collect()
}

fn samples_in(u: &Unit) -> usize {
    match u {
        Unit::Group(g) => g.len(),
        Unit::Rollout(_) => 1,
        _ => 0,
    }
}

/// Indices `[rows, width]` that pick each completion's log-probs out of the full-sequence
/// log-probs `[rows, len - 1]` (position `t` predicts token `t + 1`), and the token mask.
pub(crate) fn completion_columns(seqs: &[&Seq], batch: &TokenBatch) -> (Vec<i64>, Vec<f32>, usize) {
    let width = seqs.iter().map(|s| s.completion.len()).max().unwrap_or(1);
    let last = batch.len as i64 - 2;
    let mut idx = Vec::with_capacity(seqs.len() * width);
    let mut mask = Vec::with_capacity(seqs.len() * width);
    for s in seqs {
        let start = s.prompt.len() as i64 - 1;
        for j in 0..width {
            idx.push((start + j as i64).min(last));
            mask.push(if j < s.completion.len() { 1.0 } else { 0.0 });
        }
    }
    (idx, mask, width)
}

/// Completion log-probs `[rows, width]` of `seqs` under `model`.
pub(crate) fn completion_logprobs<B: burn::tensor::backend::Backend>(
    model: &Transformer<B>,
    seqs: &[&Seq],
    pad: u32,
) -> Result<Vec<f32>, LearnerError> {
    let batch = full_batch(seqs, pad)?;
    let (idx, _, width) = completion_columns(seqs, &batch);
    let idx =
        Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [seqs.len(), width]), &model.device());
    Ok(host_vec(
        model.token_logprobs(&batch)?.gather(1, idx).into_data(),
    )?)
}

/// Host rows of width `width` (one per sample) from per-token values of varying length.
pub(crate) fn padded(rows: &[&[f32]], width: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        out[r * width..r * width + row.len()].copy_from_slice(row);
    }
    out
}

/// Sequence-level KL estimate `Σ_t (log π − log π_ref)` over the real tokens of `[rows, width]`
/// host log-probs, averaged over rows.
pub(crate) fn masked_kl(policy: &[f32], reference: &[f32], mask: &[f32], rows: usize) -> f64 {
    policy
        .iter()
        .zip(reference)
        .zip(mask)
        .map(|((p, r), m)| f64::from((p - r) * m))
        .sum::<f64>()
        / rows.max(1) as f64
}

impl<B: AutodiffBackend> TrainState<B> {
    /// `model`'s (differentiable) completion log-probs `[rows, width]` picked by `idx`, their
    /// per-token entropies when the objective has an entropy bonus, and the forward's
    /// checkpoints under gradient checkpointing.
    #[allow(clippy::type_complexity)]
    pub(crate) fn policy_completion_logp(
        &self,
        model: &Transformer<B>,
        batch: &TokenBatch,
        idx: Tensor<B, 2, Int>,
    ) -> Result<(Tensor<B, 2>, Option<Tensor<B, 2>>, Option<Checkpoints<B>>), LearnerError> {
        if entropy_coef(&self.objective) <= 0.0 {
            let (lp, checkpoints) = model.token_logprobs_for_training(batch, self.checkpointing)?;
            return Ok((lp.gather(1, idx), None, checkpoints));
        }
        // Under checkpointing the entropies are computed a head slice at a time too.
        let (logp, entropy, checkpoints) =
            model.token_logprobs_entropy_for_training(batch, self.checkpointing)?;
        Ok((
            logp.gather(1, idx.clone()),
            Some(entropy.gather(1, idx)),
            checkpoints,
        ))
    }

    /// log π_old per sample (`[unit][item][token]`; rollouts have one item) when some sample of
    /// `units` was drawn by another version than the current one; `None` when the samplers'
    /// log-probs serve.
    pub(crate) fn old_logprobs(
        &self,
        units: &[Unit],
    ) -> Result<Option<Vec<Vec<Vec<f32>>>>, LearnerError> {
        let all = samples(units);
        for (i, s) in all.iter().enumerate() {
            if s.behaviour_logprobs.len() != s.seq.completion.len() {
                return Err(LearnerError::Invalid(format!(
                    "sample {i}: {} behaviour log-probs for {} completion tokens (group objectives need the sampler's log-prob of every token)",
                    s.behaviour_logprobs.len(),
                    s.seq.completion.len()
                )));
            }
        }
        if all.iter().all(|s| s.policy_version == self.version) {
            return Ok(None);
        }
        let current = self.policy.valid();
        let per_step = self.settings.batch_units.max(1);
        let mut out = Vec::with_capacity(units.len());
        for chunk in units.chunks(per_step) {
            let items = samples(chunk);
            let seqs: Vec<&Seq> = items.iter().map(|s| &s.seq).collect();
            let flat = completion_logprobs(&current, &seqs, self.pad)?;
            let width = flat.len() / seqs.len().max(1);
            let mut rows = seqs
                .iter()
                .enumerate()
                .map(|(r, s)| flat[r * width..r * width + s.completion.len()].to_vec());
            for u in chunk {
                out.push(rows.by_ref().take(samples_in(u)).collect());
            }
        }
        Ok(Some(out))
    }

    /// The objective's input for one step over group units (`reference`: the reference's
    /// completion log-probs of their samples, computed once per update), the mean sequence KL
    /// to the reference and the token count; `None` when some log-prob was not finite (step
    /// skipped).
    pub(crate) fn group_input(
        &self,
        model: &Transformer<B>,
        units: &[Unit],
        old: Option<&[Vec<Vec<f32>>]>,
        reference: &[f32],
    ) -> Result<Option<StepInput<B>>, LearnerError> {
        let sizes: Vec<usize> = units
            .iter()
            .map(|u| if let Unit::Group(g) = u { g.len() } else { 0 })
            .collect();
        let group_size = sizes.first().copied().unwrap_or(0);
        if group_size == 0 || sizes.iter().any(|&n| n != group_size) {
            return Err(LearnerError::Invalid(format!(
                "the groups of one step must be non-empty and of one size, got sizes {sizes:?}"
            )));
        }
        let items = samples(units);
        let seqs: Vec<&Seq> = items.iter().map(|s| &s.seq).collect();
        let rows = seqs.len();
        let device = model.device();
        let batch = full_batch(&seqs, self.pad)?;
        let (idx, mask, width) = completion_columns(&seqs, &batch);
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [rows, width]), &device);
        let (logp, entropy, checkpoints) = self.policy_completion_logp(model, &batch, idx)?;
        let behaviour: Vec<&[f32]> = items
            .iter()
            .map(|s| s.behaviour_logprobs.as_slice())
            .collect();
        let behaviour = padded(&behaviour, width);
        let old = old.map(|o| {
            let rows: Vec<&[f32]> = o.iter().flatten().map(Vec::as_slice).collect();
            padded(&rows, width)
        });
        let policy_host = host_vec(logp.clone().detach().into_data())?;
        let host_finite = |v: &[f32]| v.iter().zip(&mask).all(|(x, m)| *m == 0.0 || x.is_finite());
        if !(host_finite(&policy_host)
            && host_finite(reference)
            && host_finite(&behaviour)
            && old.as_deref().is_none_or(host_finite))
        {
            tracing::warn!(units = units.len(), "non-finite log-probs: step skipped");
            return Ok(None);
        }
        let kl = masked_kl(&policy_host, reference, &mask, rows);
        let tensor =
            |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [rows, width]), &device);
        let (old_logp, behaviour_logp) = match old {
            Some(old) => (tensor(old), Some(tensor(behaviour))),
            None => (tensor(behaviour), None),
        };
        let tokens = PgTokens {
            logp,
            old_logp: Some(old_logp),
            reference_logp: Some(tensor(reference.to_vec())),
            behaviour_logp,
            entropy,
            mask: tensor(mask),
        };
        let rewards = items.iter().map(|s| s.seq.reward as f32).collect();
        let tokens_trained = seqs.iter().map(|s| s.completion.len() as u64).sum();
        Ok(Some(StepInput {
            input: ObjectiveInput::Groups(GroupBatch {
                tokens,
                rewards,
                group_size,
            }),
            kl,
            tokens: tokens_trained,
            checkpoints,
        }))
    }
}
