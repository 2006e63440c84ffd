//! The learner's training state on disk, so that a run can resume where a checkpoint left it.
//!
//! A Hugging Face checkpoint folder (the policy's f32 master weights, `model.safetensors`)
//! gets a `learner-state/` folder beside its files:
//! - `state.json`: policy version, updates done, the objective's name, the objective's running
//!   statistics (BCO's reward mean) and, per policy parameter in the module's visiting order,
//!   AdamW's step count (or none for a parameter that never had a gradient);
//! - `optimizer.safetensors`: AdamW's first and second moments, `m1.{i}` and `m2.{i}`, f32 in
//!   each parameter's shape (the same file as burn's own AdamW wrote before `adamw.rs`);
//! - `reference/`: the reference policy, when `reference_refresh_every` replaces it during a run;
//! - PPO: `critic-optimizer.safetensors` (the critic's AdamW; its weights are the checkpoint's
//!   `critic/`) and the KL controller in `state.json`.
//!
//! The optimizer (`adamw.rs`) knows parameters by their position in the model's visiting
//! order, which a model's config fixes, so a freshly loaded model takes the saved state.
//! Loading checks that the count and every shape agree. Restored exactly: resuming continues with the same bits as not stopping.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rlhf_algo::binary::RunningMean;
use rlhf_algo::policy::KlController;
use rlhf_model::Transformer;
use rlhf_model::weights::{HostTensor, WeightStore, write_atomic, write_safetensors};
use serde::{Deserialize, Serialize};

use crate::LearnerError;
use crate::adamw::{FlatAdamW, Member, ParamState};
use crate::trainer::{OptimSettings, TrainState};

/// The folder, inside a checkpoint, that holds the training state.
pub const STATE_DIR: &str = "learner-state";

/// 2: the moments of the merged projections (`qkv_proj`, `gate_up_proj`, 2026-12-01); 1 had
/// Hugging Face's separate ones, in another parameter order.
const FORMAT: u32 = 2;

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

fn invalid(dir: &Path, what: impl std::fmt::Display) -> LearnerError {
    LearnerError::Config(format!("{}: {what}", dir.display()))
}

/// A model's float parameters in visiting order: their shapes, and the device they live on.
struct Shapes<B: AutodiffBackend> {
    shapes: Vec<Vec<usize>>,
    device: Option<burn::tensor::ops::Device<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Shapes<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.shapes.push(param.shape().dims::<D>().to_vec());
        if self.device.is_none() {
            self.device = Some(param.val().inner().device());
        }
    }
}

fn shapes<B: AutodiffBackend>(model: &Transformer<B>) -> Shapes<B> {
    let mut v = Shapes::<B> {
        shapes: vec![],
        device: None,
    };
    model.visit(&mut v);
    v
}

/// Writes `model`'s AdamW moments to `file` (`m1.{i}`, `m2.{i}` in the parameter's shape) and
/// returns its steps and shapes.
fn save_optimizer<B: AutodiffBackend>(
    model: &Transformer<B>,
    optim: &FlatAdamW<B>,
    file: &Path,
) -> Result<OptimState, LearnerError> {
    let shapes = shapes(model).shapes;
    let mut steps = vec![None; shapes.len()];
    let mut tensors = BTreeMap::new();
    for p in optim.export() {
        let i = p.member.index;
        if i >= steps.len() {
            return Err(invalid(
                file,
                format!(
                    "optimizer state for parameter {i} of a model of {}",
                    steps.len()
                ),
            ));
        }
        steps[i] = Some(optim.steps());
        for (name, t) in [(format!("m1.{i}"), p.m), (format!("m2.{i}"), p.v)] {
            let data = t
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| invalid(file, format!("reading the optimizer state: {e:?}")))?;
            let shape = p.member.shape.clone();
            tensors.insert(name, HostTensor { shape, data });
        }
    }
    write_safetensors(file, &tensors)?;
    Ok(OptimState {
        adam_steps: steps,
        shapes,
    })
}

/// A fresh AdamW for `model` holding the moments saved in `file`.
fn load_optimizer<B: AutodiffBackend>(
    model: &Transformer<B>,
    state: &OptimState,
    file: &Path,
    settings: &OptimSettings,
) -> Result<FlatAdamW<B>, LearnerError> {
    let bytes = std::fs::read(file).map_err(|e| invalid(file, e))?;
    let mut store = WeightStore::from_bytes(&bytes, file)?;
    let here = shapes(model);
    if here.shapes.len() != state.shapes.len() {
        return Err(invalid(
            file,
            format!(
                "{} parameters saved, the model has {} (another model?)",
                state.shapes.len(),
                here.shapes.len()
            ),
        ));
    }
    for (i, (shape, saved)) in here.shapes.iter().zip(&state.shapes).enumerate() {
        if shape != saved {
            return Err(invalid(
                file,
                format!(
                    "parameter {i} has shape {shape:?} here and {saved:?} in the saved state \
                     (another model?)"
                ),
            ));
        }
    }
    let mut time = None;
    let mut params = vec![];
    for (i, step) in state.adam_steps.iter().enumerate() {
        let Some(step) = *step else { continue };
        match time {
            Some(t) if t != step => {
                return Err(invalid(
                    file,
                    format!("parameters saved at different step counts ({t} and {step})"),
                ));
            }
            _ => time = Some(step),
        }
        let (Some(shape), Some(device)) = (state.shapes.get(i), here.device.as_ref()) else {
            return Err(invalid(file, format!("no parameter {i} in the model")));
        };
        let mut moment = |name: String| -> Result<Tensor<B::InnerBackend, 1>, LearnerError> {
            let h = store.take(&name, shape)?;
            let n = h.data.len();
            Ok(Tensor::from_data(TensorData::new(h.data, [n]), device))
        };
        let (m, v) = (moment(format!("m1.{i}"))?, moment(format!("m2.{i}"))?);
        let member = Member {
            index: i,
            shape: shape.to_vec(),
        };
        params.push(ParamState { member, m, v });
    }
    FlatAdamW::import(settings.weight_decay, time.unwrap_or(0), params)
        .map_err(|e| invalid(file, e))
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
        if file.format == 1 {
            return Err(invalid(
                &dir,
                "state format 1, written by an rlhf build that kept the q/k/v and gate/up \
                 projections apart; this build joins them and cannot continue that optimizer \
                 state: start a new run from the checkpoint's weights (model.safetensors) instead",
            ));
        }
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
