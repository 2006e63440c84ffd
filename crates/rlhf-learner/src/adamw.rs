//! AdamW over groups of parameters at once ("multi-tensor" AdamW): the same update as burn's
//! `AdamW` (same constants, same operations in the same order on every element, so the same
//! bits), but each group of parameters is concatenated into one flat tensor first. burn's
//! optimizer runs about 15 element-wise kernels per parameter tensor: 290 tensors of a
//! Qwen2.5-0.5B-shaped model made ~3 500 of the ~9 000 kernel launches of a training step on an
//! H200, where launches, not arithmetic, set the step time (docs/benchmarks.md). Here the
//! update costs two concatenations (on a CubeCL backend one launch per 16 tensors,
//! `rlhf_model::concat_flat`; elsewhere one copy per tensor), ~15 kernels per group and free
//! slices.
//!
//! Gradients are gathered into the same flat groups first ([`FlatGrads`]), and everything the
//! learner does with a step's gradients before the update works on those: the global-norm clip
//! (two kernels per group for the norm, one to rescale, where per tensor it took three per
//! tensor, ~870 launches on that model) and the data-parallel sum (one transfer and one addition
//! per group instead of per tensor).
//!
//! Groups hold at most [`GROUP_ELEMENTS`] elements (a larger tensor is a group of its own), which
//! bounds the extra memory of the flat copies and temporaries to a few of those per step.
//! Parameters are identified by their position in the module's visiting order, which a model's
//! config fixes, so the state can be saved and restored for a freshly loaded model
//! (`resume.rs`).

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use rlhf_model::concat_flat;

use crate::LearnerError;

/// burn's `AdamWConfig` defaults, which the learner has always used.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Most elements in one flat group (64 Mi f32 = 256 MiB).
pub(crate) const GROUP_ELEMENTS: usize = 1 << 26;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// A parameter that has optimizer state: its position in the visiting order and its shape.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Member {
    pub index: usize,
    pub shape: Vec<usize>,
}

impl Member {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The moments of one group of parameters, flat, in member order.
struct Group<B: Backend> {
    members: Vec<Member>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// One parameter's saved state (see [`FlatAdamW::export`] and [`FlatAdamW::import`]).
pub(crate) struct ParamState<B: Backend> {
    pub member: Member,
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
}

/// AdamW with decoupled weight decay over flat groups of parameters.
pub struct FlatAdamW<B: AutodiffBackend> {
    weight_decay: f32,
    group_elements: usize,
    /// Steps taken (burn's `time`): 0 before the first.
    time: usize,
    groups: Vec<Group<Inner<B>>>,
}

impl<B: AutodiffBackend> FlatAdamW<B> {
    pub fn new(weight_decay: f32) -> Self {
        Self::with_group_elements(weight_decay, GROUP_ELEMENTS)
    }

    pub(crate) fn with_group_elements(weight_decay: f32, group_elements: usize) -> Self {
        Self {
            weight_decay,
            group_elements: group_elements.max(1),
            time: 0,
            groups: vec![],
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.time
    }

    /// `module`'s gradients in `grads`, gathered into this optimizer's flat groups (the
    /// gradients leave `grads` as they are gathered).
    pub fn gather<M: AutodiffModule<B>>(&self, module: &M, grads: GradientsParams) -> FlatGrads<B> {
        FlatGrads::gather(module, grads, self.group_elements)
    }

    /// One AdamW step of every parameter of `module` that has a gradient in `grads` (the others
    /// are left as they are, as burn's optimizer leaves them): [`Self::gather`], then
    /// [`Self::step_flat`].
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, LearnerError> {
        let grads = self.gather(&module, grads);
        self.step_flat(lr, module, grads)
    }

    /// One AdamW step with gradients already gathered (and perhaps clipped or summed). Fails
    /// when the parameters with gradients are not those of the previous steps (their moments
    /// would not line up) or not those of `module`.
    pub fn step_flat<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: FlatGrads<B>,
    ) -> Result<M, LearnerError> {
        if grads.members.is_empty() {
            return Ok(module);
        }
        let mut values = Values::<B> {
            members: &grads.members,
            index: 0,
            next: 0,
            flat: Vec::with_capacity(grads.members.len()),
        };
        module.visit(&mut values);
        if values.flat.len() != grads.members.len() {
            return Err(LearnerError::Invalid(format!(
                "optimizer: {} of {} gradients match no parameter of the model (index or shape)",
                grads.members.len() - values.flat.len(),
                grads.members.len()
            )));
        }
        let params_flat = values.flat;
        let first = self.groups.is_empty();
        // The first step sets the groups; later steps keep them (and need the same members).
        let layout: Vec<Vec<Member>> = if first {
            grads.layout.clone()
        } else {
            let before: Vec<&Member> = self.groups.iter().flat_map(|g| &g.members).collect();
            let now: Vec<&Member> = grads.members.iter().collect();
            if before != now {
                return Err(LearnerError::Invalid(format!(
                    "optimizer: the parameters with gradients changed between steps ({} with \
                     state, {} with gradients now)",
                    before.len(),
                    now.len()
                )));
            }
            self.groups.iter().map(|g| g.members.clone()).collect()
        };
        if layout != grads.layout {
            return Err(LearnerError::Invalid(format!(
                "optimizer: gradients gathered in {} groups, the moments are in {}",
                grads.layout.len(),
                layout.len()
            )));
        }
        self.time += 1;
        let time = self.time as i32;
        let decay_rate = lr * self.weight_decay as f64;
        let (factor_1, factor_2) = (1.0 - BETA_1, 1.0 - BETA_2);
        let mut params_flat = params_flat.into_iter();
        let mut updated = Vec::with_capacity(grads.members.len());
        let mut groups = Vec::with_capacity(layout.len());
        for (g_index, (members, g)) in layout.into_iter().zip(grads.flat).enumerate() {
            let p = concat_flat(params_flat.by_ref().take(members.len()).collect());
            let (m, v) = if first {
                (
                    g.clone().mul_scalar(factor_1),
                    g.square().mul_scalar(factor_2),
                )
            } else {
                let old = &self.groups[g_index];
                (
                    old.m
                        .clone()
                        .mul_scalar(BETA_1)
                        .add(g.clone().mul_scalar(factor_1)),
                    old.v
                        .clone()
                        .mul_scalar(BETA_2)
                        .add(g.square().mul_scalar(factor_2)),
                )
            };
            let m_hat = m.clone().div_scalar(1f32 - BETA_1.powi(time));
            let v_hat = v.clone().div_scalar(1f32 - BETA_2.powi(time));
            let delta = m_hat.div(v_hat.sqrt().add_scalar(EPSILON));
            let decayed = if decay_rate == 0.0 {
                p
            } else {
                p.mul_scalar(1.0 - decay_rate)
            };
            let new = decayed - delta.mul_scalar(lr);
            let mut offset = 0;
            for member in &members {
                let n = member.len();
                updated.push(Some(new.clone().narrow(0, offset, n)));
                offset += n;
            }
            groups.push(Group { members, m, v });
        }
        self.groups = groups;
        let mut apply = Apply::<B> {
            index: 0,
            next: 0,
            members: &grads.members,
            updated,
        };
        Ok(module.map(&mut apply))
    }

    /// Each parameter's moments (flat), in visiting order; empty before the first step.
    pub(crate) fn export(&self) -> Vec<ParamState<Inner<B>>> {
        let mut out = vec![];
        for group in &self.groups {
            let mut offset = 0;
            for member in &group.members {
                let n = member.len();
                out.push(ParamState {
                    member: member.clone(),
                    m: group.m.clone().narrow(0, offset, n),
                    v: group.v.clone().narrow(0, offset, n),
                });
                offset += n;
            }
        }
        out
    }

    /// An optimizer that continues from `time` steps with these moments (as [`Self::export`]
    /// gave them, in visiting order).
    pub(crate) fn import(
        weight_decay: f32,
        time: usize,
        params: Vec<ParamState<Inner<B>>>,
    ) -> Result<Self, String> {
        let mut optim = Self::new(weight_decay);
        if params.is_empty() {
            return Ok(optim);
        }
        if time == 0 {
            return Err("moments saved with a step count of 0".into());
        }
        for p in &params {
            if p.m.dims()[0] != p.member.len() || p.v.dims()[0] != p.member.len() {
                return Err(format!(
                    "parameter {}: moments of {} / {} values for shape {:?}",
                    p.member.index,
                    p.m.dims()[0],
                    p.v.dims()[0],
                    p.member.shape
                ));
            }
        }
        let members: Vec<Member> = params.iter().map(|p| p.member.clone()).collect();
        let layout = group_layout(&members, optim.group_elements);
        let mut params = params.into_iter();
        for members in layout {
            let (ms, vs): (Vec<_>, Vec<_>) = params
                .by_ref()
                .take(members.len())
                .map(|p| (p.m, p.v))
                .unzip();
            optim.groups.push(Group {
                members,
                m: concat_flat(ms),
                v: concat_flat(vs),
            });
        }
        optim.time = time;
        Ok(optim)
    }
}

/// Splits `members` (in order) into groups of at most `limit` elements; a member larger than
/// the limit is a group of its own.
fn group_layout(members: &[Member], limit: usize) -> Vec<Vec<Member>> {
    let mut groups: Vec<Vec<Member>> = vec![];
    let mut size = 0;
    for member in members {
        let n = member.len();
        match groups.last_mut() {
            Some(group) if size + n <= limit => group.push(member.clone()),
            _ => {
                groups.push(vec![member.clone()]);
                size = 0;
            }
        }
        size += n;
    }
    groups
}

/// A module's gradients, flat, in the groups [`FlatAdamW`] updates: what the learner clips,
/// sums over data-parallel replicas and hands to [`FlatAdamW::step_flat`].
pub struct FlatGrads<B: AutodiffBackend> {
    /// The parameters with gradients, in visiting order.
    members: Vec<Member>,
    /// `members` split into groups.
    layout: Vec<Vec<Member>>,
    /// One flat gradient per group.
    flat: Vec<Tensor<Inner<B>, 1>>,
}

impl<B: AutodiffBackend> FlatGrads<B> {
    /// Gathers `module`'s gradients from `grads` into groups of at most `group_elements`
    /// elements (each group's gradients are freed once concatenated).
    fn gather<M: AutodiffModule<B>>(
        module: &M,
        mut grads: GradientsParams,
        group_elements: usize,
    ) -> Self {
        let mut gather = Gather::<B> {
            grads: &mut grads,
            index: 0,
            members: vec![],
            flat: vec![],
        };
        module.visit(&mut gather);
        let (members, parts) = (gather.members, gather.flat);
        let layout = group_layout(&members, group_elements.max(1));
        let mut parts = parts.into_iter();
        let flat = layout
            .iter()
            .map(|group| concat_flat(parts.by_ref().take(group.len()).collect()))
            .collect();
        Self {
            members,
            layout,
            flat,
        }
    }

    /// The global L2 norm of all the gradients (one read-back from the device); NaN when the
    /// sum cannot be read.
    pub fn norm(&self) -> f64 {
        let total = self
            .flat
            .iter()
            .map(|g| g.clone().square().sum())
            .reduce(|a, b| a + b);
        let Some(total) = total else {
            return 0.0;
        };
        let sum = rlhf_model::load::host_vec(total.into_data())
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(f32::NAN);
        f64::from(sum).sqrt()
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f64) {
        self.flat = std::mem::take(&mut self.flat)
            .into_iter()
            .map(|g| g.mul_scalar(factor))
            .collect();
    }

    /// Global-norm clipping: returns the norm of all the gradients and, when it is finite and
    /// above `max_norm` (> 0), rescales them to `max_norm`. A non-finite norm leaves them
    /// untouched: the caller must skip the step (NaN and infinity never reach the optimizer).
    pub fn clip(&mut self, max_norm: f64) -> f64 {
        let norm = self.norm();
        if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
            self.scale(max_norm / norm);
        }
        norm
    }

    /// The same gradients on `device` (one transfer per group).
    pub fn to_device(self, device: &B::Device) -> Self {
        Self {
            flat: self.flat.into_iter().map(|g| g.to_device(device)).collect(),
            ..self
        }
    }

    /// The element-wise sum with `other`, gathered from the same parameters (a replica's) on
    /// the same device.
    pub fn sum_with(self, other: Self) -> Result<Self, LearnerError> {
        if self.members != other.members || self.layout.len() != other.layout.len() {
            return Err(LearnerError::Invalid(format!(
                "gradient sum: {} gradients in {} groups against {} in {}",
                self.members.len(),
                self.layout.len(),
                other.members.len(),
                other.layout.len()
            )));
        }
        Ok(Self {
            flat: self
                .flat
                .into_iter()
                .zip(other.flat)
                .map(|(a, b)| a + b)
                .collect(),
            ..self
        })
    }
}

/// Collects, in visiting order, the parameters that have gradients: members and flat gradients.
struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    index: usize,
    members: Vec<Member>,
    flat: Vec<Tensor<Inner<B>, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let index = self.index;
        self.index += 1;
        if let Some(grad) = self.grads.remove::<Inner<B>, D>(param.id) {
            let member = Member {
                index,
                shape: param.shape().dims::<D>().to_vec(),
            };
            self.flat.push(grad.reshape([member.len()]));
            self.members.push(member);
        }
    }
}

/// Collects, flat, the values of the parameters `members` names (position and shape).
struct Values<'a, B: AutodiffBackend> {
    members: &'a [Member],
    index: usize,
    next: usize,
    flat: Vec<Tensor<Inner<B>, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Values<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let index = self.index;
        self.index += 1;
        let Some(member) = self.members.get(self.next).filter(|m| m.index == index) else {
            return;
        };
        if param.shape().dims::<D>() != member.shape.as_slice() {
            return;
        }
        self.next += 1;
        self.flat.push(param.val().inner().reshape([member.len()]));
    }
}

/// Puts the updated values back into the parameters, keeping their ids.
struct Apply<'a, B: AutodiffBackend> {
    index: usize,
    next: usize,
    members: &'a [Member],
    updated: Vec<Option<Tensor<Inner<B>, 1>>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Apply<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let index = self.index;
        self.index += 1;
        let Some(member) = self.members.get(self.next).filter(|m| m.index == index) else {
            return param;
        };
        let Some(flat) = self.updated.get_mut(self.next).and_then(Option::take) else {
            return param;
        };
        self.next += 1;
        let dims: [usize; D] = std::array::from_fn(|d| member.shape[d]);
        let (id, tensor, mapper) = param.consume();
        let mut value = Tensor::from_inner(flat.reshape(dims));
        if tensor.is_require_grad() {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::optim::{AdamWConfig, Optimizer};
    use rlhf_model::{ModelConfig, Transformer};

    type B = burn::backend::Autodiff<rlhf_model::Cpu>;

    fn model() -> Transformer<B> {
        let config = ModelConfig::synthetic(
            rlhf_model::Architecture::Qwen2ForCausalLM,
            96,
            16,
            2,
            4,
            2,
            40,
        );
        Transformer::<B>::random(config, 3, &Default::default())
    }

    /// A loss that gives every parameter a gradient of its own.
    fn grads(model: &Transformer<B>, salt: usize) -> GradientsParams {
        let ids: Vec<u32> = (0..12).map(|i| ((i * 7 + salt * 5) % 96) as u32).collect();
        let batch = rlhf_model::TokenBatch::unpadded(ids, 2, 6).expect("batch");
        let lp = model.token_logprobs(&batch).expect("logprobs");
        let loss = lp.powi_scalar(2).mean();
        GradientsParams::from_grads(loss.backward(), model)
    }

    fn weights(model: &Transformer<B>) -> Vec<f32> {
        struct All(Vec<f32>);
        impl ModuleVisitor<B> for All {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.0
                    .extend(p.val().into_data().to_vec::<f32>().expect("f32"));
            }
        }
        let mut all = All(vec![]);
        model.visit(&mut all);
        all.0
    }

    #[test]
    fn same_bits_as_burns_adamw_in_any_grouping() {
        let start = model();
        let mut reference = start.clone();
        let mut burn_optim = AdamWConfig::new()
            .with_weight_decay(0.05)
            .init::<B, Transformer<B>>();
        // Whole model in one group, several groups, one tensor per group.
        let mut flats: Vec<(FlatAdamW<B>, Transformer<B>)> = [GROUP_ELEMENTS, 700, 1]
            .into_iter()
            .map(|limit| (FlatAdamW::with_group_elements(0.05, limit), start.clone()))
            .collect();
        for step in 0..4 {
            let lr = [1e-2, 5e-3, 1e-2, 2e-3][step];
            let g = grads(&reference, step);
            reference = burn_optim.step(lr, reference, g);
            let expected = weights(&reference);
            for (optim, model) in &mut flats {
                let g = grads(model, step);
                *model = optim.step(lr, model.clone(), g).expect("step");
                assert_eq!(weights(model), expected, "step {step}");
            }
        }
        assert_ne!(
            weights(&start),
            weights(&reference),
            "the steps moved the weights"
        );
        // Still trainable: the updated parameters require gradients.
        let (_, model) = &flats[1];
        assert!(model.embed_tokens.weight.val().is_require_grad());
    }

    /// Every gradient in `grads`, on the host, in visiting order.
    fn host_grads(model: &Transformer<B>, grads: &GradientsParams) -> Vec<f32> {
        struct All<'a>(&'a GradientsParams, Vec<f32>);
        impl ModuleVisitor<B> for All<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                if let Some(g) = self.0.get::<rlhf_model::Cpu, D>(p.id) {
                    self.1.extend(g.into_data().to_vec::<f32>().expect("f32"));
                }
            }
        }
        let mut all = All(grads, vec![]);
        model.visit(&mut all);
        all.1
    }

    fn flat_host(grads: &FlatGrads<B>) -> Vec<f32> {
        grads
            .flat
            .iter()
            .flat_map(|g| g.clone().into_data().to_vec::<f32>().expect("f32"))
            .collect()
    }

    #[test]
    fn clip_takes_the_norm_of_all_gradients_and_rescales_to_the_limit() {
        let model = model();
        for limit in [GROUP_ELEMENTS, 700, 1] {
            let optim = FlatAdamW::<B>::with_group_elements(0.0, limit);
            let g = grads(&model, 3);
            let host = host_grads(&model, &g);
            let norm = host
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt();
            assert!(norm > 0.0);
            let mut flat = optim.gather(&model, g);
            assert_eq!(flat_host(&flat), host, "gathered in visiting order");
            // Above the norm: nothing changes.
            let got = flat.clip(norm * 2.0);
            assert!((got - norm).abs() <= 1e-5 * norm, "{got} vs {norm}");
            assert_eq!(flat_host(&flat), host);
            // No limit (0): nothing changes either.
            flat.clip(0.0);
            assert_eq!(flat_host(&flat), host);
            // Below: every gradient scaled by limit / norm, the new norm is the limit.
            let got = flat.clip(norm / 4.0);
            let factor = norm / 4.0 / got;
            for (a, b) in flat_host(&flat).iter().zip(&host) {
                assert_eq!(*a, *b * factor as f32);
            }
            let after = flat.norm();
            assert!((after - norm / 4.0).abs() <= 1e-5 * norm, "{after}");
        }
    }

    #[test]
    fn a_non_finite_gradient_gives_a_non_finite_norm_and_is_left_alone() {
        let model = model();
        let optim = FlatAdamW::<B>::with_group_elements(0.0, 700);
        let mut g = grads(&model, 1);
        let id = model.norm.weight.id;
        let bad = g.remove::<rlhf_model::Cpu, 1>(id).expect("norm gradient");
        let mut values = bad.into_data().to_vec::<f32>().expect("f32");
        values[3] = f32::NAN;
        let n = values.len();
        g.register::<rlhf_model::Cpu, 1>(
            id,
            Tensor::from_data(
                burn::tensor::TensorData::new(values, [n]),
                &Default::default(),
            ),
        );
        let host = host_grads(&model, &g);
        let mut flat = optim.gather(&model, g);
        assert!(flat.clip(1e-6).is_nan());
        let after = flat_host(&flat);
        assert_eq!(after.len(), host.len());
        assert!(
            after
                .iter()
                .zip(&host)
                .all(|(a, b)| a == b || (a.is_nan() && b.is_nan())),
            "a non-finite norm rescales nothing"
        );
    }

    #[test]
    fn sums_of_flat_gradients_are_the_sums_of_the_tensors() {
        let model = model();
        let optim = FlatAdamW::<B>::with_group_elements(0.0, 700);
        let (a, b) = (grads(&model, 1), grads(&model, 2));
        let expected: Vec<f32> = host_grads(&model, &a)
            .iter()
            .zip(host_grads(&model, &b))
            .map(|(x, y)| x + y)
            .collect();
        let sum = optim
            .gather(&model, a)
            .sum_with(optim.gather(&model, b).to_device(&Default::default()))
            .expect("same parameters");
        assert_eq!(flat_host(&sum), expected);
        // Gradients of another parameter set do not add up.
        let mut only = GradientsParams::new();
        let mut c = grads(&model, 3);
        let id = model.embed_tokens.weight.id;
        only.register::<rlhf_model::Cpu, 2>(id, c.remove(id).expect("embedding gradient"));
        let Err(err) = sum.sum_with(optim.gather(&model, only)) else {
            panic!("gradients of other parameters were added");
        };
        assert!(err.to_string().contains("gradient sum"), "{err}");
    }

    #[test]
    fn export_then_import_continues_with_the_same_bits() {
        let mut a = model();
        let mut optim = FlatAdamW::<B>::with_group_elements(0.0, 500);
        for step in 0..2 {
            let g = grads(&a, step);
            a = optim.step(1e-2, a, g).expect("step");
        }
        let mut resumed =
            FlatAdamW::<B>::import(0.0, optim.steps(), optim.export()).expect("import");
        let mut b = a.clone();
        let g = grads(&a, 7);
        a = optim.step(1e-2, a, g).expect("step");
        let g = grads(&b, 7);
        b = resumed.step(1e-2, b, g).expect("step");
        assert_eq!(weights(&a), weights(&b));
    }

    #[test]
    fn a_changed_parameter_set_is_an_error() {
        let a = model();
        let mut optim = FlatAdamW::<B>::new(0.0);
        let g = grads(&a, 0);
        let a = optim.step(1e-2, a, g).expect("step");
        // Gradients of one parameter only.
        let mut g = grads(&a, 1);
        let mut only = GradientsParams::new();
        let id = a.embed_tokens.weight.id;
        only.register::<rlhf_model::Cpu, 2>(id, g.remove(id).expect("embedding gradient"));
        let Err(err) = optim.step(1e-2, a, only) else {
            panic!("a step with another parameter set was taken");
        };
        let err = err.to_string();
        assert!(err.contains("changed between steps"), "{err}");
    }
}
