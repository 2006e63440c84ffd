//! From scored samples to an update: training units for the objective's kind (rlhf-algo's
//! builders), the Train call, and checkpoints.

use std::collections::BTreeSet;

use futures::StreamExt;
use rlhf_algo::UnitKind;
use rlhf_algo::units::{
    BinaryThresholds, Scored, UnitReport, best_vs_worst, binary_labels, groups as full_groups,
    pairs_above_margin, rankings,
};
use rlhf_proto::v1;
use rlhf_proto::v1::training_unit::Unit;

use crate::CoordinatorError;
use crate::cluster::Cluster;
use crate::config::{PairStrategy, UnitsConfig};

/// Units per TrainRequest message.
const TRAIN_BATCH: usize = 256;

/// Training units and which samples they use.
#[derive(Debug, Default)]
pub struct BuiltUnits {
    pub units: Vec<v1::TrainingUnit>,
    /// Indices (into the iteration's sample list) of samples some unit uses.
    pub used: BTreeSet<usize>,
    pub report: UnitReport,
}

/// One sample eligible for training: its completion and finite reward.
pub struct Eligible<'a> {
    pub index: usize,
    pub completion: &'a v1::Completion,
    pub reward: f64,
}

fn sequence(c: &v1::Completion, reward: f64) -> v1::Sequence {
    v1::Sequence {
        id: c.id.clone(),
        policy_version: c.policy_version,
        prompt_ids: c.prompt_ids.clone(),
        completion_ids: c.completion_ids.clone(),
        behaviour_logprobs: c.logprobs.clone(),
        reward,
    }
}

/// Builds units from samples grouped by prompt (`groups[p]` = that prompt's samples; group
/// units need all `group_size` of them).
pub fn build_units(
    kind: UnitKind,
    cfg: &UnitsConfig,
    groups: &[Vec<Eligible<'_>>],
    group_size: usize,
) -> Result<BuiltUnits, CoordinatorError> {
    let scored: Vec<Vec<Scored<usize>>> = groups
        .iter()
        .map(|g| {
            g.iter()
                .enumerate()
                .map(|(j, e)| Scored::new(j, e.reward as f32))
                .collect()
        })
        .collect();
    let mut out = BuiltUnits::default();
    // Marks prompt `p`'s sample `j` used and returns it on the wire.
    let take = |used: &mut BTreeSet<usize>, p: usize, j: usize| -> v1::Sequence {
        let e = &groups[p][j];
        used.insert(e.index);
        sequence(e.completion, e.reward)
    };
    // Units keep their prompt: build per prompt so indices resolve.
    match kind {
        UnitKind::Pairs => {
            for (p, s) in scored.iter().enumerate() {
                let built = match cfg.pairs {
                    PairStrategy::BestVsWorst => best_vs_worst(std::slice::from_ref(s)),
                    PairStrategy::AllPairs => {
                        pairs_above_margin(std::slice::from_ref(s), cfg.margin).map_err(|e| {
                            CoordinatorError::Config(format!("coordinator.units.margin: {e}"))
                        })?
                    }
                };
                merge(&mut out.report, &built.report);
                for u in built.units {
                    let pair = v1::Pair {
                        chosen: Some(take(&mut out.used, p, u.chosen)),
                        rejected: Some(take(&mut out.used, p, u.rejected)),
                        strength: 1.0,
                    };
                    out.units.push(v1::TrainingUnit {
                        unit: Some(Unit::Pair(pair)),
                    });
                }
            }
        }
        UnitKind::Lists => {
            for (p, s) in scored.iter().enumerate() {
                let built = rankings(std::slice::from_ref(s), 2)
                    .map_err(|e| CoordinatorError::Config(e.to_string()))?;
                merge(&mut out.report, &built.report);
                for u in built.units {
                    let items = u.items.iter().map(|&j| take(&mut out.used, p, j));
                    let list = v1::RankedList {
                        items: items.collect(),
                    };
                    out.units.push(v1::TrainingUnit {
                        unit: Some(Unit::List(list)),
                    });
                }
            }
        }
        UnitKind::Binary => {
            let thresholds = BinaryThresholds {
                desirable_at_least: cfg.desirable_at_least,
                undesirable_below: cfg.undesirable_below,
            };
            for (p, s) in scored.iter().enumerate() {
                let built = binary_labels(std::slice::from_ref(s), thresholds)
                    .map_err(|e| CoordinatorError::Config(format!("coordinator.units: {e}")))?;
                merge(&mut out.report, &built.report);
                for u in built.units {
                    let label = v1::BinaryLabel {
                        sample: Some(take(&mut out.used, p, u.item)),
                        desirable: u.desirable,
                    };
                    out.units.push(v1::TrainingUnit {
                        unit: Some(Unit::Binary(label)),
                    });
                }
            }
        }
        UnitKind::Groups => {
            for (p, s) in scored.iter().enumerate() {
                let built =
                    full_groups(std::slice::from_ref(s), group_size, cfg.drop_uniform_groups)
                        .map_err(|e| CoordinatorError::Config(format!("coordinator.units: {e}")))?;
                merge(&mut out.report, &built.report);
                for u in built.units {
                    let items = u.items.iter().map(|&j| take(&mut out.used, p, j));
                    let group = v1::Group {
                        items: items.collect(),
                    };
                    out.units.push(v1::TrainingUnit {
                        unit: Some(Unit::Group(group)),
                    });
                }
            }
        }
        UnitKind::Rollouts => {
            // PPO: every sample with a finite score is a unit of its own.
            for (p, g) in groups.iter().enumerate() {
                out.report.prompts += 1;
                out.report.samples += g.len();
                for (j, e) in g.iter().enumerate() {
                    if !e.reward.is_finite() {
                        out.report.non_finite += 1;
                        continue;
                    }
                    out.report.units += 1;
                    let rollout = take(&mut out.used, p, j);
                    out.units.push(v1::TrainingUnit {
                        unit: Some(Unit::Rollout(rollout)),
                    });
                }
            }
        }
        other => {
            return Err(CoordinatorError::Config(format!(
                "learner.objective: {other:?} units are not built by the online loop yet"
            )));
        }
    }
    Ok(out)
}

fn merge(into: &mut UnitReport, r: &UnitReport) {
    into.prompts += r.prompts;
    into.samples += r.samples;
    into.non_finite += r.non_finite;
    into.skipped_too_few += r.skipped_too_few;
    into.skipped_no_signal += r.skipped_no_signal;
    into.dropped_between_thresholds += r.dropped_between_thresholds;
    into.units += r.units;
}

/// Sends units to the learner (with the live learning rate `lr`, when one was set); returns
/// the new version and its metrics.
#[tracing::instrument(name = "train", skip_all, fields(iteration = iteration))]
pub async fn train(
    cluster: &Cluster,
    learner: &str,
    iteration: u64,
    incarnation: u64,
    units: Vec<v1::TrainingUnit>,
    lr: Option<f64>,
) -> Result<(u64, v1::TrainMetrics), CoordinatorError> {
    let mut client = cluster.learner(learner)?;
    let mut requests = vec![];
    let mut units = units.into_iter().peekable();
    while units.peek().is_some() {
        requests.push(v1::TrainRequest {
            iteration,
            units: units.by_ref().take(TRAIN_BATCH).collect(),
            incarnation,
            lr,
        });
    }
    let mut events = client
        .train(futures::stream::iter(requests))
        .await
        .map_err(|s| CoordinatorError::Learner(format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    while let Some(ev) = events.next().await {
        let ev =
            ev.map_err(|s| CoordinatorError::Learner(format!("{}: {}", s.code(), s.message())))?;
        if let Some(v1::train_event::Event::Done(d)) = ev.event {
            return Ok((d.policy_version, d.metrics.unwrap_or_default()));
        }
    }
    Err(CoordinatorError::Learner(
        "the Train stream ended without a result".into(),
    ))
}

/// Asks the learner to write a Hugging Face checkpoint with its training state; returns
/// whether the training state was written (the checkpoint is resumable).
#[tracing::instrument(name = "checkpoint", skip_all)]
pub async fn checkpoint(
    cluster: &Cluster,
    learner: &str,
    incarnation: u64,
    path: &std::path::Path,
) -> Result<bool, CoordinatorError> {
    let mut client = cluster.learner(learner)?;
    let resp = client
        .save_checkpoint(v1::SaveCheckpointRequest {
            path: path.display().to_string(),
            training_state: true,
            incarnation,
        })
        .await
        .map_err(|s| {
            CoordinatorError::Learner(format!("checkpoint {}: {}", path.display(), s.message()))
        })?;
    Ok(resp.into_inner().training_state)
}

/// The learner's incarnation (its line of versions).
pub async fn incarnation(cluster: &Cluster, learner: &str) -> Result<u64, CoordinatorError> {
    let mut client = cluster.learner(learner)?;
    let resp = client
        .status(v1::LearnerStatusRequest {})
        .await
        .map_err(|s| CoordinatorError::Learner(format!("status: {}", s.message())))?;
    Ok(resp.into_inner().incarnation)
}

/// Asks the learner to continue from a resumable checkpoint; returns its policy version and
/// its new incarnation.
pub async fn resume(
    cluster: &Cluster,
    learner: &str,
    path: &std::path::Path,
) -> Result<(u64, u64), CoordinatorError> {
    let mut client = cluster.learner(learner)?;
    let resp = client
        .resume(v1::ResumeRequest {
            path: path.display().to_string(),
        })
        .await
        .map_err(|s| CoordinatorError::Learner(s.message().to_string()))?;
    let r = resp.into_inner();
    Ok((r.policy_version, r.incarnation))
}
