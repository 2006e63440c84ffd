//! The learner's training state on disk, so that a run can resume where a checkpoint left it.
//!
//! A Hugging Face checkpoint folder (the policy's f32 master weights, `model.safetensors`)
//! gets a `learner-state/` folder beside its files:
//! - `state.json`: policy version, updates done, the objective's name, the objective's running
//!   statistics (BCO's reward mean) and, per policy parameter in the module's visiting order,
//!   AdamW's step count (or none for a parameter that never had a gradient);
//! - `optimizer.safetensors`: AdamW's first and second moments, `m1.{i}` and `m2.{i}`, f32 in
//!   burn's layout;
//! - `reference/`: the reference policy, when `reference_refresh_every` replaces it during a run;
//! - PPO: `critic-optimizer.safetensors` (the critic's AdamW; its weights are the checkpoint's
//!   `critic/`) and the KL controller in `state.json`.
//!
//! burn keys optimizer state by parameter id, which a freshly loaded model does not share with
//! the one that was saved; the visiting order of a model's parameters is fixed by its config,
//! so state is stored by position and re-keyed on load. Loading checks that the count and every
//! shape agree. Restored exactly: resuming continues with the same bits as not stopping.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, Optimizer};
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rlhf_algo::binary::RunningMean;
use rlhf_algo::policy::KlController;
use rlhf_model::Transformer;
use rlhf_model::weights::{HostTensor, WeightStore, write_atomic, write_safetensors};
use serde::{Deserialize, Serialize};

use crate::LearnerError;
use crate::trainer::{OptimSettings, TrainState};

/// The folder, inside a checkpoint, that holds the training state.
pub const STATE_DIR: &str = "learner-state";

const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    version: u64,
    updates: u64,
    objective: String,
    bco_running_mean: RunningMean,
    /// The policy's AdamW (moments in `optimizer.safetensors`).
    policy: OptimState,
    /// Whether `reference/` holds a refreshed reference.
    reference: bool,
    /// PPO: the critic's AdamW (moments in `critic-optimizer.safetensors`; its weights are the
    /// checkpoint's `critic/`) and the KL controller.
    critic: Option<CriticState>,
}

/// AdamW's state of one model, by parameter position.
#[derive(Debug, Serialize, Deserialize)]
struct OptimState {
    /// Step count per parameter (visiting order); `None`: no state yet.
    adam_steps: Vec<Option<usize>>,
    /// Shape per parameter, checked on load.
    shapes: Vec<Vec<usize>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CriticState {
    optimizer: OptimState,
    kl: KlController,
}

/// AdamW's state of every parameter, keyed by parameter id.
type Records<B> =
    <OptimizerAdaptor<AdamW, Transformer<B>, B> as Optimizer<Transformer<B>, B>>::Record;

fn invalid(dir: &Path, what: impl std::fmt::Display) -> LearnerError {
    LearnerError::Config(format!("{}: {what}", dir.display()))
}

/// Collects each parameter's AdamW state in visiting order.
struct Collect<'a, B: AutodiffBackend> {
    records: &'a Records<B>,
    steps: Vec<Option<usize>>,
    shapes: Vec<Vec<usize>>,
    tensors: BTreeMap<String, HostTensor>,
    error: Option<String>,
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<HostTensor, String> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    Ok(HostTensor { shape, data })
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let i = self.steps.len();
        self.shapes.push(param.shape().dims::<D>().to_vec());
        let Some(record) = self.records.get(&param.id) else {
            self.steps.push(None);
            return;
        };
        let state = record.clone().into_state::<D>();
        self.steps.push(Some(state.momentum.time));
        for (name, t) in [
            (format!("m1.{i}"), state.momentum.moment_1),
            (format!("m2.{i}"), state.momentum.moment_2),
        ] {
            match host(t) {
                Ok(h) => {
                    self.tensors.insert(name, h);
                }
                Err(e) => self.error = Some(e),
            }
        }
    }
}

/// Rebuilds the AdamW records for a model's (new) parameter ids.
struct Restore<'a, B: AutodiffBackend> {
    state: &'a OptimState,
    store: &'a mut WeightStore,
    index: usize,
    records: Records<B>,
    error: Option<String>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Restore<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let i = self.index;
        self.index += 1;
        if self.error.is_some() {
            return;
        }
        let shape = param.shape().dims::<D>().to_vec();
        if self.state.shapes.get(i) != Some(&shape) {
            self.error = Some(format!(
                "parameter {i} has shape {shape:?} here and {:?} in the saved state (another \
                 model?)",
                self.state.shapes.get(i)
            ));
            return;
        }
        let Some(Some(time)) = self.state.adam_steps.get(i).copied() else {
            return;
        };
        let device = param.val().device();
        let mut moment = |name: String| -> Result<Tensor<B::InnerBackend, D>, String> {
            let h = self.store.take(&name, &shape).map_err(|e| e.to_string())?;
            Ok(Tensor::from_data(TensorData::new(h.data, h.shape), &device))
        };
        let (m1, m2) = match (moment(format!("m1.{i}")), moment(format!("m2.{i}"))) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                self.error = Some(e);
                return;
            }
        };
        let state =
            burn::optim::AdamWState::new(burn::optim::AdaptiveMomentumState::new(time, m1, m2));
        self.records.insert(
            param.id,
            burn::optim::record::AdaptorRecord::from_state::<D>(state),
        );
    }
}

/// Writes `model`'s AdamW moments to `file` and returns its steps and shapes.
fn save_optimizer<B: AutodiffBackend>(
    model: &Transformer<B>,
    optim: &OptimizerAdaptor<AdamW, Transformer<B>, B>,
    file: &Path,
) -> Result<OptimState, LearnerError> {
    let records = optim.to_record();
    let mut c = Collect::<B> {
        records: &records,
        steps: vec![],
        shapes: vec![],
        tensors: BTreeMap::new(),
        error: None,
    };
    model.visit(&mut c);
    if let Some(e) = c.error {
        return Err(invalid(file, format!("reading the optimizer state: {e}")));
    }
    write_safetensors(file, &c.tensors)?;
    Ok(OptimState {
        adam_steps: c.steps,
        shapes: c.shapes,
    })
}

/// A fresh AdamW for `model` holding the moments saved in `file`.
fn load_optimizer<B: AutodiffBackend>(
    model: &Transformer<B>,
    state: &OptimState,
    file: &Path,
    settings: &OptimSettings,
) -> Result<OptimizerAdaptor<AdamW, Transformer<B>, B>, LearnerError> {
    let bytes = std::fs::read(file).map_err(|e| invalid(file, e))?;
    let mut store = WeightStore::from_bytes(&bytes, file)?;
    let mut r = Restore::<B> {
        state,
        store: &mut store,
        index: 0,
        records: Records::<B>::default(),
        error: None,
    };
    model.visit(&mut r);
    if let Some(e) = r.error {
        return Err(invalid(file, e));
    }
    if r.index != state.shapes.len() {
        return Err(invalid(
            file,
            format!(
                "{} parameters saved, the model has {} (another model?)",
                state.shapes.len(),
                r.index
            ),
        ));
    }
    Ok(crate::trainer::adamw(settings.weight_decay).load_record(r.records))
}

impl<B: AutodiffBackend> TrainState<B> {
    /// Writes the training state under `checkpoint/learner-state/` (the policy's weights are the
    /// checkpoint's own `model.safetensors`, PPO's critic its `critic/`). `updates` is the
    /// number of Train calls so far.
    pub fn save_training_state(&self, checkpoint: &Path, updates: u64) -> Result<(), LearnerError> {
        let dir = checkpoint.join(STATE_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| invalid(&dir, e))?;
        let policy = save_optimizer(
            &self.policy,
            &self.optim,
            &dir.join("optimizer.safetensors"),
        )?;
        let reference = self.reference_refreshed;
        if reference {
            self.reference
                .save_pretrained(&dir.join("reference"), None)?;
        }
        let critic = match &self.ppo {
            Some(ppo) => Some(CriticState {
                optimizer: save_optimizer(
                    &ppo.critic,
                    &ppo.optim,
                    &dir.join("critic-optimizer.safetensors"),
                )?,
                kl: ppo.kl,
            }),
            None => None,
        };
        let file = StateFile {
            format: FORMAT,
            version: self.version,
            updates,
            objective: self.objective.name().to_string(),
            bco_running_mean: self.objective_state.bco_running_mean,
            policy,
            reference,
            critic,
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| invalid(&dir, format!("state.json: {e}")))?;
        // Written last: a folder without it is incomplete.
        write_atomic(&dir.join("state.json"), text.as_bytes())?;
        Ok(())
    }

    /// Continues from a checkpoint written with [`TrainState::save_training_state`]: the
    /// policy's weights, AdamW's moments and steps, the version, the objective's statistics,
    /// a refreshed reference and PPO's critic, its AdamW and KL controller. Returns the number
    /// of updates done.
    pub fn load_training_state(&mut self, checkpoint: &Path) -> Result<u64, LearnerError> {
        let dir = checkpoint.join(STATE_DIR);
        let text = std::fs::read_to_string(dir.join("state.json")).map_err(|e| {
            invalid(
                &dir,
                format!("state.json: {e} (not a resumable checkpoint)"),
            )
        })?;
        let file: StateFile =
            serde_json::from_str(&text).map_err(|e| invalid(&dir, format!("state.json: {e}")))?;
        if file.format != FORMAT {
            return Err(invalid(
                &dir,
                format!("state format {} (this build reads {FORMAT})", file.format),
            ));
        }
        if file.objective != self.objective.name() {
            return Err(invalid(
                &dir,
                format!(
                    "saved while training `{}`, this learner trains `{}`",
                    file.objective,
                    self.objective.name()
                ),
            ));
        }
        let device = self
            .policy
            .devices()
            .into_iter()
            .next()
            .ok_or_else(|| LearnerError::Config("the policy has no parameters".into()))?;
        let precision = self.policy.precision;
        // Everything is read before anything is replaced: a bad file leaves the state as it was.
        let policy = Transformer::<B>::load(checkpoint, &device)?.with_precision(precision)?;
        let optim = load_optimizer(
            &policy,
            &file.policy,
            &dir.join("optimizer.safetensors"),
            &self.settings,
        )?;
        let reference = if file.reference {
            Some(
                Transformer::<B::InnerBackend>::load(&dir.join("reference"), &device)?
                    .cast_weights(precision)?,
            )
        } else {
            None
        };
        let critic = match (&self.ppo, &file.critic) {
            (Some(_), Some(c)) => {
                let critic = Transformer::<B>::load(&checkpoint.join("critic"), &device)?
                    .with_precision(precision)?;
                let optim = load_optimizer(
                    &critic,
                    &c.optimizer,
                    &dir.join("critic-optimizer.safetensors"),
                    &self.settings,
                )?;
                Some((critic, optim, c.kl))
            }
            (None, None) => None,
            _ => {
                return Err(invalid(
                    &dir,
                    "the saved state and this learner disagree on a critic",
                ));
            }
        };
        self.policy = policy;
        self.optim = optim;
        if let Some(r) = reference {
            self.reference = r;
            self.reference_refreshed = true;
        }
        if let (Some(ppo), Some((critic, optim, kl))) = (&mut self.ppo, critic) {
            ppo.critic = critic;
            ppo.optim = optim;
            ppo.kl = kl;
        }
        self.version = file.version;
        self.objective_state.bco_running_mean = file.bco_running_mean;
        self.sync_replicas();
        Ok(file.updates)
    }
}
