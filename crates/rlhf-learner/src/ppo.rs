//! PPO with a critic, in the RLHF form of Ouyang et al. 2022 (InstructGPT): each sample's
//! score is its reward on the last token, every token pays `β (log π_old − log π_ref)` (fixed
//! or adaptive β, Ziegler et al. 2019), the critic — a copy of the policy's architecture with a
//! one-output value head — gives `V(s_t)`, and GAE turns both into per-token advantages and
//! returns. Then `epochs` passes of clipped-surrogate + clipped-value-loss steps update the
//! policy and the critic together (one backward pass, one AdamW per model, clipped separately).
//!
//! Preparation (no gradients) happens once per update, before any step: π_old (the samplers'
//! log-probs when they sampled with the current version, else a forward pass — see
//! `groups.rs`), the reference's log-probs, the critic's values, then GAE and optional
//! whitening over all of the update's tokens.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rlhf_algo::policy::{KlController, RolloutBatch, TokenBatch as PgTokens, ValueBatch, gae};
use rlhf_algo::{Objective, ObjectiveInput};
use rlhf_model::Transformer;
use rlhf_model::load::host_vec;

use crate::LearnerError;
use crate::adamw::FlatAdamW;
use crate::groups::{completion_columns, masked_kl, padded, samples};
use crate::trainer::{Seq, StepStats, TrainState, Unit, full_batch};

/// The critic, its optimizer and the KL-in-reward controller.
pub struct PpoState<B: AutodiffBackend> {
    /// The value model (one-output score head).
    pub critic: Transformer<B>,
    pub(crate) optim: FlatAdamW<B>,
    /// Learning rate of the critic.
    pub lr: f64,
    /// β of the KL penalty in the reward.
    pub kl: KlController,
}

/// What preparation computed for one sample (one value per completion token).
pub(crate) struct Prepared {
    old_logp: Vec<f32>,
    advantages: Vec<f32>,
    returns: Vec<f32>,
    old_values: Vec<f32>,
}

/// Masked mean and (population) standard deviation of the valid entries.
fn masked_moments(rows: &[Vec<f32>]) -> (f64, f64) {
    let n = rows.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let mean = rows.iter().flatten().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = rows
        .iter()
        .flatten()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

impl<B: AutodiffBackend> TrainState<B> {
    /// Adds the critic PPO trains next to the policy. `critic` must have a one-output score
    /// head (see `Transformer::with_score_head`) and its own parameters (load it separately:
    /// clones of the policy share parameter ids).
    pub fn with_critic(mut self, critic: Transformer<B>, lr: f64) -> Result<Self, LearnerError> {
        let Objective::Ppo(cfg) = self.objective else {
            return Err(LearnerError::Config(format!(
                "learner.critic: only `ppo` trains a critic, the objective is `{}`",
                self.objective.name()
            )));
        };
        if critic.score.is_none() || critic.config.num_labels != 1 {
            return Err(LearnerError::Config(format!(
                "learner.critic: a critic needs a score head with one output, this model has {}",
                if critic.score.is_some() {
                    format!("{} outputs", critic.config.num_labels)
                } else {
                    "none".to_string()
                }
            )));
        }
        if critic.config.vocab_size != self.policy.config.vocab_size {
            return Err(LearnerError::Config(format!(
                "learner.critic has vocabulary size {}, the policy {}",
                critic.config.vocab_size, self.policy.config.vocab_size
            )));
        }
        let kl = cfg
            .kl_reward
            .build()
            .map_err(|e| LearnerError::Objective(e.to_string()))?;
        let optim = FlatAdamW::new(self.settings.weight_decay);
        self.ppo = Some(PpoState {
            critic,
            optim,
            lr,
            kl,
        });
        Ok(self)
    }

    /// Advantages, returns and π_old of every sample of the update, and the mean sequence KL
    /// `Σ_t (log π_old − log π_ref)` they were computed with. `reference` holds the
    /// reference's completion log-probs of each step's samples (`[rows, width]` per step, in
    /// the step's only shard: PPO trains on one device).
    pub(crate) fn ppo_prepare(
        &self,
        units: &[Unit],
        old: Option<&[Vec<Vec<f32>>]>,
        reference: &[Vec<Vec<f32>>],
    ) -> Result<(Vec<Prepared>, f64), LearnerError> {
        let Objective::Ppo(cfg) = self.objective else {
            return Err(LearnerError::Config("not a PPO objective".into()));
        };
        let ppo = self.ppo.as_ref().ok_or_else(|| {
            LearnerError::Config("PPO needs a critic (TrainState::with_critic)".into())
        })?;
        let critic = ppo.critic.valid();
        let beta = ppo.kl.coef() as f32;
        let items = samples(units);
        let old_rows: Vec<Vec<f32>> = match old {
            Some(o) => o.iter().flatten().cloned().collect(),
            None => items.iter().map(|s| s.behaviour_logprobs.clone()).collect(),
        };
        let mut ref_rows = Vec::with_capacity(items.len());
        let mut values = Vec::with_capacity(items.len());
        // One sample per rollout unit: steps over units and over samples coincide.
        for (chunk, flat_ref) in items
            .chunks(self.settings.batch_units.max(1))
            .zip(reference.iter().map(|shards| &shards[0]))
        {
            let seqs: Vec<&Seq> = chunk.iter().map(|s| &s.seq).collect();
            let batch = full_batch(&seqs, self.pad)?;
            let (idx, _, width) = completion_columns(&seqs, &batch);
            let idx = Tensor::<B::InnerBackend, 2, Int>::from_data(
                TensorData::new(idx, [seqs.len(), width]),
                &critic.device(),
            );
            let flat_v = host_vec(critic.values(&batch)?.gather(1, idx).into_data())?;
            for (r, s) in seqs.iter().enumerate() {
                let n = s.completion.len();
                ref_rows.push(flat_ref[r * width..r * width + n].to_vec());
                values.push(flat_v[r * width..r * width + n].to_vec());
            }
        }
        let non_finite = |rows: &[Vec<f32>]| rows.iter().flatten().any(|x| !x.is_finite());
        if non_finite(&old_rows) || non_finite(&ref_rows) || non_finite(&values) {
            return Err(LearnerError::Invalid(
                "non-finite log-probs or values while preparing PPO rollouts".into(),
            ));
        }
        let width = items
            .iter()
            .map(|s| s.seq.completion.len())
            .max()
            .unwrap_or(1);
        let mut rewards = Vec::with_capacity(items.len());
        let mut kl_sum = 0f64;
        for (i, s) in items.iter().enumerate() {
            let mut r: Vec<f32> = old_rows[i]
                .iter()
                .zip(&ref_rows[i])
                .map(|(o, q)| -beta * (o - q))
                .collect();
            kl_sum += old_rows[i]
                .iter()
                .zip(&ref_rows[i])
                .map(|(o, q)| f64::from(o - q))
                .sum::<f64>();
            if let Some(last) = r.last_mut() {
                *last += s.seq.reward as f32;
            }
            rewards.push(r);
        }
        let refs = |rows: &[Vec<f32>]| -> Vec<f32> {
            let rows: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            padded(&rows, width)
        };
        let mask: Vec<Vec<f32>> = items
            .iter()
            .map(|s| vec![1.0; s.seq.completion.len()])
            .collect();
        let out = gae(
            &refs(&rewards),
            &refs(&values),
            &refs(&mask),
            width,
            &cfg.gae(),
        )
        .map_err(|e| LearnerError::Objective(e.to_string()))?;
        let unpad = |flat: &[f32]| -> Vec<Vec<f32>> {
            items
                .iter()
                .enumerate()
                .map(|(r, s)| flat[r * width..r * width + s.seq.completion.len()].to_vec())
                .collect()
        };
        let mut advantages = unpad(&out.advantages);
        let returns = unpad(&out.returns);
        if cfg.whiten_advantages {
            let (mean, std) = masked_moments(&advantages);
            let scale = 1.0 / (std + 1e-8);
            for x in advantages.iter_mut().flatten() {
                *x = ((f64::from(*x) - mean) * scale) as f32;
            }
        }
        let prepared = old_rows
            .into_iter()
            .zip(advantages)
            .zip(returns)
            .zip(values)
            .map(|(((old_logp, advantages), returns), old_values)| Prepared {
                old_logp,
                advantages,
                returns,
                old_values,
            })
            .collect();
        Ok((prepared, kl_sum / items.len().max(1) as f64))
    }

    /// One PPO step on `units` (rollouts) with their prepared values; `None` when the loss or
    /// a gradient was not finite (step skipped).
    pub(crate) fn ppo_step(
        &mut self,
        units: &[Unit],
        prepared: &[Prepared],
        stale: bool,
        reference: &[f32],
    ) -> Result<Option<StepStats>, LearnerError> {
        let items = samples(units);
        let seqs: Vec<&Seq> = items.iter().map(|s| &s.seq).collect();
        let rows = seqs.len();
        let device = self.policy.device();
        let batch = full_batch(&seqs, self.pad)?;
        let (idx, mask, width) = completion_columns(&seqs, &batch);
        let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [rows, width]), &device);
        let (logp, entropy, policy_checkpoints) =
            self.policy_completion_logp(&self.policy, &batch, idx.clone())?;
        let Some(ppo) = self.ppo.as_ref() else {
            return Err(LearnerError::Config("PPO needs a critic".into()));
        };
        let (critic_hidden, critic_checkpoints) =
            ppo.critic.hidden_for_training(&batch, self.checkpointing)?;
        let values = ppo.critic.values_of(critic_hidden)?.gather(1, idx);
        let tensor =
            |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [rows, width]), &device);
        let field = |f: fn(&Prepared) -> &Vec<f32>| -> Vec<f32> {
            let rows: Vec<&[f32]> = prepared.iter().map(|p| f(p).as_slice()).collect();
            padded(&rows, width)
        };
        let behaviour: Vec<&[f32]> = items
            .iter()
            .map(|s| s.behaviour_logprobs.as_slice())
            .collect();
        let policy_host = host_vec(logp.clone().detach().into_data())?;
        if policy_host
            .iter()
            .zip(&mask)
            .any(|(x, m)| *m != 0.0 && !x.is_finite())
        {
            tracing::warn!(units = units.len(), "non-finite log-probs: step skipped");
            return Ok(None);
        }
        let kl = masked_kl(&policy_host, reference, &mask, rows);
        let input = ObjectiveInput::Rollouts(RolloutBatch {
            tokens: PgTokens {
                logp,
                old_logp: Some(tensor(field(|p| &p.old_logp))),
                reference_logp: Some(tensor(reference.to_vec())),
                behaviour_logp: stale.then(|| tensor(padded(&behaviour, width))),
                entropy,
                mask: tensor(mask),
            },
            advantages: tensor(field(|p| &p.advantages)),
            values: Some(ValueBatch {
                values,
                old_values: tensor(field(|p| &p.old_values)),
                returns: tensor(field(|p| &p.returns)),
            }),
        });
        let Some(out) = self.checked_loss(&input)? else {
            return Ok(None);
        };
        let loss_value = out.stats.loss();
        let mut grads = out.loss.backward();
        let Some(ppo) = self.ppo.as_mut() else {
            return Err(LearnerError::Config("PPO needs a critic".into()));
        };
        let policy_grads = self
            .policy
            .param_gradients(policy_checkpoints, &mut grads)?;
        let mut policy_grads = self.optim.gather(&self.policy, policy_grads);
        let critic_grads = ppo.critic.param_gradients(critic_checkpoints, &mut grads)?;
        let mut critic_grads = ppo.optim.gather(&ppo.critic, critic_grads);
        let limit = self.settings.max_grad_norm;
        let policy_norm = policy_grads.clip(limit);
        let critic_norm = critic_grads.clip(limit);
        if !(policy_norm.is_finite() && critic_norm.is_finite()) {
            tracing::warn!("non-finite gradient norm: step skipped");
            return Ok(None);
        }
        self.policy = self
            .optim
            .step_flat(self.settings.lr, self.policy.clone(), policy_grads)?;
        ppo.critic = ppo
            .optim
            .step_flat(ppo.lr, ppo.critic.clone(), critic_grads)?;
        let mut extra: Vec<(String, f64)> = out
            .stats
            .metrics()
            .into_iter()
            .map(|(k, v)| (k.to_string(), f64::from(v)))
            .collect();
        extra.push(("critic_grad_norm".into(), critic_norm));
        extra.push(("kl_coef".into(), ppo.kl.coef()));
        Ok(Some(StepStats {
            loss: f64::from(loss_value),
            chosen: 0.0,
            rejected: 0.0,
            accuracy: 0.0,
            kl,
            tokens: seqs.iter().map(|s| s.completion.len() as u64).sum(),
            grad_norm: policy_norm,
            extra,
        }))
    }

    /// Feeds the KL the update's samples were drawn with to an adaptive β.
    pub(crate) fn ppo_observe_kl(&mut self, kl: f64, samples: u64) {
        if let Some(ppo) = self.ppo.as_mut()
            && let Err(e) = ppo.kl.update(kl, samples)
        {
            tracing::warn!(error = %e, "KL controller: observation ignored");
        }
    }
}
