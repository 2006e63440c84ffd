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
//! PyTorch DDP. Shards run one after another, so the devices do not overlap yet: what this
//! buys today is memory (a step larger than one device holds), not speed. PPO (the critic is
//! not replicated) trains on one device.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use rlhf_algo::UnitKind;
use rlhf_model::Transformer;

use crate::LearnerError;
use crate::trainer::{StepStats, TrainState, Unit};

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
    /// units, one per device, as even as possible; one range without replicas or for PPO.
    pub(crate) fn shard_ranges(
        &self,
        start: usize,
        len: usize,
        kind: UnitKind,
    ) -> Vec<std::ops::Range<usize>> {
        let n = if kind == UnitKind::Rollouts {
            1
        } else {
            self.devices().min(len).max(1)
        };
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
    /// one device). `None` when a shard's log-probs, loss or the summed gradient were not finite:
    /// the whole step is skipped, as on one device.
    pub(crate) fn parallel_step(
        &mut self,
        units: &[Unit],
        shards: &[std::ops::Range<usize>],
        reference: &[Vec<f32>],
        old: Option<&[Vec<Vec<f32>>]>,
    ) -> Result<Option<StepStats>, LearnerError> {
        let total: usize = shards.iter().map(|r| r.len()).sum();
        let device = self.policy.device();
        let mut sum = GradientsAccumulator::<Transformer<B>>::new();
        let mut reports = Vec::with_capacity(shards.len());
        for (r, range) in shards.iter().enumerate() {
            let model = match r {
                0 => self.policy.clone(),
                _ => self.replicas[r - 1].model.clone(),
            };
            let old = old.map(|o| &o[range.clone()]);
            let Some((input, kl, tokens)) =
                self.step_input(&model, &units[range.clone()], &reference[r], old)?
            else {
                return Ok(None);
            };
            let Some(out) = self.checked_loss(&input)? else {
                return Ok(None);
            };
            let weight = range.len() as f64 / total as f64;
            let grads = out.loss.mul_scalar(weight).backward();
            let grads = GradientsParams::from_grads(grads, &model);
            let grads = match r {
                0 => grads,
                _ => grads.to_device(&device, &self.policy),
            };
            sum.accumulate(&self.policy, grads);
            reports.push((weight, StepStats::new(out.stats, kl, tokens)));
        }
        self.apply(sum.grads(), StepStats::weighted(reports))
    }

    /// Copies the policy's weights to every replica (after an optimizer step).
    pub(crate) fn sync_replicas(&mut self) {
        for replica in &mut self.replicas {
            replica.model = self.policy.clone().fork(&replica.device);
        }
    }
}
