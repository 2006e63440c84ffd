//! Data parallelism in one process: replicas of the policy on further devices, each optimizer
//! step's units split into one shard per device.
//!
//! Each shard's loss is computed by its device's replica and scaled by the shard's share of the
//! step's units; the gradients are moved to the first device and summed there, clipped once,
//! and AdamW (on the first device) updates the policy, whose new weights are then copied to
//! every replica. For objectives whose loss is a mean over units (the DPO family, lists,
//! groups of one size) this is the full step's gradient, exactly (tested against one device).
//! Objectives with batch-level statistics (KTO's and BCO's reference point, REINFORCE++'s
//! batch-normalised advantages, DAPO's token-level mean) compute them per shard, as under
//! PyTorch DDP (BCO's running mean follows the first shard). Each shard's forward and backward
//! pass runs in its own thread, so devices work at the same time; the sum, the clip and the
//! optimizer step wait for all of them. PPO (the critic is not replicated) trains on one device.

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use rlhf_algo::{ObjectiveState, UnitKind};
use rlhf_model::Transformer;

use crate::LearnerError;
use crate::adamw::FlatGrads;
use crate::trainer::{StepStats, TrainState, Unit, checked_loss};

/// What one shard's thread hands back.
struct ShardOutcome<B: AutodiffBackend> {
    weight: f64,
    report: StepStats,
    /// Gathered into the optimizer's flat groups on the shard's device.
    grads: FlatGrads<B>,
    state: ObjectiveState,
}

/// A copy of the policy on another device.
pub(crate) struct Replica<B: AutodiffBackend> {
    device: B::Device,
    model: Transformer<B>,
}

impl<B: AutodiffBackend> TrainState<B> {
    /// Trains data-parallel over the policy's device and `devices` (one replica each; the same
    /// device may repeat, which is how the CPU tests run it).
    pub fn with_data_parallel(mut self, devices: Vec<B::Device>) -> Result<Self, LearnerError> {
        if self.objective.kind() == UnitKind::Rollouts {
            return Err(LearnerError::Config(
                "learner.devices: `ppo` trains on one device (its critic is not replicated); \
                 data parallelism covers pair, list, binary and group objectives"
                    .into(),
            ));
        }
        self.replicas = devices
            .into_iter()
            .map(|device| Replica {
                model: self.policy.clone().fork(&device),
                device,
            })
            .collect();
        Ok(self)
    }

    /// Devices the steps are split over (1 without data parallelism).
    pub fn devices(&self) -> usize {
        1 + self.replicas.len()
    }

    /// The unit ranges (of the update's units) of one step starting at `start` with `len`
    /// units, one per device, as even as possible; one range without replicas (always for PPO,
    /// which [`TrainState::with_data_parallel`] refuses).
    pub(crate) fn shard_ranges(&self, start: usize, len: usize) -> Vec<std::ops::Range<usize>> {
        let n = self.devices().min(len).max(1);
        let mut out = Vec::with_capacity(n);
        let mut at = start;
        for r in 0..n {
            let size = len / n + usize::from(r < len % n);
            out.push(at..at + size);
            at += size;
        }
        out
    }

    /// One optimizer step over `shards` (ranges of `units`; `reference[r]` and `old` as for
    /// one device), each shard's forward and backward pass in its own thread so that devices
    /// work at the same time. `None` when a shard's log-probs, loss or the summed gradient were
    /// not finite: the whole step is skipped, as on one device.
    pub(crate) fn parallel_step(
        &mut self,
        units: &[Unit],
        shards: &[std::ops::Range<usize>],
        reference: &[Vec<f32>],
        old: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<Option<StepStats>, LearnerError> {
        let total: usize = shards.iter().map(|r| r.len()).sum();
        let models: Vec<Transformer<B>> = std::iter::once(self.policy.clone())
            .chain(self.replicas.iter().map(|r| r.model.clone()))
            .collect();
        let this = &*self;
        let outcomes: Vec<Result<Option<ShardOutcome<B>>, LearnerError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = shards
                    .iter()
                    .zip(models)
                    .enumerate()
                    .map(|(r, (range, model))| {
                        let weight = range.len() as f64 / total as f64;
                        let units = &units[range.clone()];
                        let old = old.map(|o| &o[range.clone()]);
                        let reference = &reference[r];
                        scope.spawn(move || this.shard(model, units, reference, old, weight))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(LearnerError::Objective(
                                "a data-parallel shard panicked".into(),
                            ))
                        })
                    })
                    .collect()
            });
        let device = self.policy.device();
        let mut sum: Option<FlatGrads<B>> = None;
        let mut reports = Vec::with_capacity(shards.len());
        for (r, outcome) in outcomes.into_iter().enumerate() {
            let Some(outcome) = outcome? else {
                return Ok(None);
            };
            if r == 0 {
                // Objectives with state across steps (BCO's running mean) follow the first shard.
                self.objective_state = outcome.state;
            }
            // One transfer and one addition per flat group (not per parameter tensor).
            let grads = match r {
                0 => outcome.grads,
                _ => outcome.grads.to_device(&device),
            };
            sum = Some(match sum {
                None => grads,
                Some(sum) => sum.sum_with(grads)?,
            });
            reports.push((outcome.weight, outcome.report));
        }
        let Some(sum) = sum else {
            return Ok(None);
        };
        self.apply(sum, StepStats::weighted(reports))
    }

    /// One shard's forward and backward pass under `model`, its loss scaled by `weight`.
    fn shard(
        &self,
        model: Transformer<B>,
        units: &[Unit],
        reference: &[f32],
        old: Option<&[Vec<Vec<f32>>]>,
        weight: f64,
    ) -> Result<Option<ShardOutcome<B>>, LearnerError> {
        let Some(step) = self.step_input(&model, units, reference, old)? else {
            return Ok(None);
        };
        let mut state = self.objective_state;
        let Some(out) = checked_loss(&self.objective, &mut state, &step.input)? else {
            return Ok(None);
        };
        let mut grads = out.loss.mul_scalar(weight).backward();
        let grads = model.param_gradients(step.checkpoints, &mut grads)?;
        let grads = self.optim.gather(&model, grads);
        Ok(Some(ShardOutcome {
            weight,
            report: StepStats::new(out.stats, step.kl, step.tokens),
            grads,
            state,
        }))
    }

    /// Copies the policy's weights to every replica (after an optimizer step).
    pub(crate) fn sync_replicas(&mut self) {
        for replica in &mut self.replicas {
            replica.model = self.policy.clone().fork(&replica.device);
        }
    }
}
