//! The decoder (Llama / Qwen2 / Mistral layout) as a burn [`Module`], generic over the backend.
//!
//! One forward serves training, teacher-forced log-probs and cached decoding: attention masks and
//! position ids come from [`SlotState`], which tracks padding on the host, so the generator and the
//! trainer run the same arithmetic (the reason sampler and teacher-forced log-probs agree).

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};

use crate::backend::DeviceSpec;
use crate::batch::{SlotState, TokenBatch};
use crate::config::{HeadKind, ModelConfig};
use crate::error::{ModelError, Result};

/// The floating-point format the decoder computes in.
///
/// `Bf16` computes as PyTorch's autocast and Hugging Face's bf16 models do: matmuls, the
/// residual stream and the KV cache in bf16; RMSNorm's statistics, attention's softmax and the
/// logits in f32. The weights stay in whatever format they are stored in (f32 master weights for
/// training, cast at each use, so gradients reach them in f32; see [`Transformer::cast_weights`]
/// for bf16 copies that only infer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// Parses a `precision` setting (empty means `f32`).
    pub fn from_setting(setting: &str) -> std::result::Result<Self, String> {
        if setting.trim().is_empty() {
            return Ok(Precision::F32);
        }
        setting.parse()
    }

    /// Parses a `precision` setting for a role on `device`, and checks the device's backend has
    /// it ([`Precision::check_device`]): what each config's `precision()` reports under its field.
    pub fn for_device(setting: &str, device: DeviceSpec) -> std::result::Result<Self, String> {
        let precision = Self::from_setting(setting)?;
        precision.check_device(device)?;
        Ok(precision)
    }

    /// The tensor format of activations.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// Bytes per activation or cached key/value.
    pub fn bytes(self) -> usize {
        DType::from(self.dtype()).size()
    }

    /// `t` in the compute format (no operation at all for f32 tensors in f32).
    pub(crate) fn compute<B: Backend, const D: usize>(self, t: Tensor<B, D>) -> Tensor<B, D> {
        cast_to(t, self.dtype())
    }

    /// Checks, before loading anything, that the backend a `device` setting selects has this
    /// format (the CPU backend, ndarray, computes in f32 only).
    pub fn check_device(self, device: DeviceSpec) -> std::result::Result<(), String> {
        match (self, device) {
            (Precision::Bf16, DeviceSpec::Cpu) => Err(format!(
                "precision `{self}` needs a GPU: the CPU backend computes in f32 only (device `cpu`)"
            )),
            _ => Ok(()),
        }
    }

    /// Checks that the backend has general support for this format on `device`.
    pub fn check_supported<B: Backend>(self, device: &B::Device) -> Result<()> {
        if self == Precision::F32 || B::supports_dtype(device, DType::from(self.dtype())) {
            return Ok(());
        }
        Err(ModelError::Input(format!(
            "precision `{self}`: the backend of device {device:?} has no {self} tensors \
             (the CPU backend computes in f32 only; bf16 needs a GPU)"
        )))
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!(
                "invalid precision `{other}`: expected `f32` or `bf16`"
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// `t` cast to `dtype`, untouched (no graph node, no copy) when it already has it.
fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: FloatDType) -> Tensor<B, D> {
    if t.dtype() == DType::from(dtype) {
        t
    } else {
        t.cast(dtype)
    }
}

/// `crate::cube`'s fused kernel for one operation (its arguments by reference), or `None` where
/// the build has no CubeCL backend or the tensors are not on one (then the composite operations
/// run: CPU backends, burn's fusion); `fused!(untracked(&t))` asks whether `t` is on a backend
/// the kernels serve and no gradient flows to it (it is not in a training graph).
macro_rules! fused {
    (untracked($t:expr)) => {{
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        let yes = crate::cube::untracked($t);
        #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
        let yes = false;
        yes
    }};
    ($op:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        let out = crate::cube::$op($($arg),*);
        #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
        let out = None;
        out
    }};
}

/// Whether `t` is in `p`'s compute format (fused kernels return their inputs' format).
fn in_format<B: Backend, const D: usize>(t: &Tensor<B, D>, p: Precision) -> bool {
    t.dtype() == DType::from(p.dtype())
}

/// `parts` (1-D, one format) one after another: the optimizer's flat groups of parameters and
/// gradients. On a CubeCL backend a fused kernel copies many parts per launch (`crate::cube`),
/// elsewhere burn's `cat`; a single part is returned as it is.
pub fn concat_flat<B: Backend>(mut parts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    if let Some(flat) = fused!(concat(&parts)) {
        return flat;
    }
    Tensor::cat(parts, 0)
}

/// `t` in f32 (logits, scores and statistics leave the model in f32 whatever it computes in).
fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    cast_to(t, FloatDType::F32)
}

/// `x · W (+ b)` with the weights cast to the compute format (no operation when they already
/// are), by [`rows_linear`].
fn linear<B: Backend, const D: usize>(
    l: &Linear<B>,
    x: Tensor<B, D>,
    p: Precision,
) -> Tensor<B, D> {
    rows_linear(
        x,
        p.compute(l.weight.val()),
        l.bias.as_ref().map(|b| p.compute(b.val())),
    )
}

/// `x · W (+ b)` with `x`'s leading dimensions folded into rows first (a view of a contiguous
/// `x`), as PyTorch's `F.linear` does: one matrix product, and in the backward pass one product
/// for the weight's gradient and one reduction for the bias's. burn's `linear` on a 3-D input
/// multiplies batch by batch and sums the weight's gradients over the batch afterwards (a
/// product with `K` = one row's positions instead of all rows', plus a reduction launch).
fn rows_linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    if D <= 2 {
        return burn::tensor::module::linear(x, weight, bias);
    }
    let mut dims = x.dims();
    let inner = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let out = burn::tensor::module::linear(x.reshape([rows, inner]), weight, bias);
    dims[D - 1] = out.dims()[1];
    out.reshape(dims)
}

/// Root-mean-square layer norm, computed as Hugging Face does:
/// `weight * x / sqrt(mean(x²) + eps)`, the statistics in f32.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `(x + delta, forward(x + delta))`: a residual connection and the norm of its result (one
    /// launch where a fused kernel can).
    pub fn forward_residual(
        &self,
        x: Tensor<B, 3>,
        delta: Tensor<B, 3>,
        p: Precision,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        if in_format(&x, p)
            && let Some(both) = fused!(add_rms_norm(&x, &delta, &self.weight.val(), self.eps))
        {
            return both;
        }
        let x = x + delta;
        (x.clone(), self.forward(x, p))
    }

    pub fn forward(&self, x: Tensor<B, 3>, p: Precision) -> Tensor<B, 3> {
        if in_format(&x, p)
            && let Some(out) = fused!(rms_norm(&x, &self.weight.val(), self.eps))
        {
            return out;
        }
        let x = to_f32(x);
        let var = x.clone().powi_scalar(2).mean_dim(2);
        // Division, not `recip()`: burn-ndarray vectorises `recip` with an approximation on the
        // aligned part of a buffer only, which makes results depend on allocation addresses.
        let normed = x / var.add_scalar(self.eps).sqrt();
        // As transformers: normalise in f32, then scale in the compute format.
        p.compute(normed) * p.compute(self.weight.val()).unsqueeze::<3>()
    }
}

/// Self-attention with grouped-query heads, rotate-half RoPE and an optional sliding window.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Hugging Face's `q_proj`, `k_proj` and `v_proj` side by side (`[hidden, (heads + 2 ·
    /// kv_heads) · head_dim]`, biases likewise): one product where three were (on a GPU, one
    /// launch forward and two backward instead of three each, and no gradient sums for the
    /// input they share). Loading and saving split and join the Hugging Face tensors.
    pub qkv_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding-window size; 0 means full attention.
    pub window: usize,
}

/// `x · sigmoid(x)` as `h · (1 + tanh(h))` with `h = x / 2` (`sigmoid(x) = (1 + tanh(x / 2)) / 2`;
/// halving is exact). burn 0.21's `silu` computes the sigmoid as `exp(-log(1 + exp(-x)))`, six
/// kernels (eight in bf16, which it computes in f32), and its backward pass recomputes them; this
/// form takes four forward and 7 fewer launches per layer and training step in all
/// (`scripts/count_launches.sh`), which is what a GPU step's time follows. `1 / (1 + exp(-x))`
/// would take fewer, but its gradient is NaN below x ≈ -88 (0 · ∞ in the backward pass of `exp`);
/// `tanh` saturates instead. Computed in f32 and returned in the compute format `p`: in bf16,
/// `1 + tanh(h)` would lose most of its digits where `tanh(h)` nears -1.
fn silu<B: Backend, const D: usize>(x: Tensor<B, D>, p: Precision) -> Tensor<B, D> {
    let h = to_f32(x).mul_scalar(0.5);
    p.compute(h.clone() * h.tanh().add_scalar(1.0))
}

/// The gated SiLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Hugging Face's `gate_proj` and `up_proj` side by side (`[hidden, 2 · intermediate]`): one
    /// product for both, as [`Attention::qkv_proj`].
    pub gate_up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

/// A decoder with its head: `lm_head` for causal LMs (absent when tied to the embeddings),
/// `score` for sequence-classification reward models and value (critic) models.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: Option<Linear<B>>,
    pub score: Option<Linear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
    /// The format activations are computed in (not saved with the weights).
    #[module(skip)]
    pub precision: Precision,
}

/// Up to this many rows, tied-embedding logits are computed as `W · hᵀ` (see `logits`).
const FEW_ROWS: usize = 64;

/// The cached keys and values of one layer.
type LayerKv<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// One layer's cache in a forward call: the tensors, where the new tokens start and the width
/// (slots) the layer's mask covers.
pub(crate) type LayerCache<'a, B> = (&'a mut LayerKv<B>, usize, usize);

/// `t` (`[batch, heads, slots, dim]`) widened with zeros to `width` slots (itself when it is).
fn grow<B: Backend>(t: Tensor<B, 4>, width: usize) -> Tensor<B, 4> {
    let [b, h, w, d] = t.dims();
    debug_assert!(w <= width, "KV cache wider ({w}) than its mask ({width})");
    if w >= width {
        return t;
    }
    let zeros = Tensor::zeros([b, h, width - w, d], (&t.device(), t.dtype()));
    Tensor::cat(vec![t, zeros], 2)
}

/// Slots the KV cache grows by: attention reads the cache's whole allocated width (slots not
/// written yet are masked), so it never slices the cache — a copy on the CPU backend (burn-ndarray
/// materialises every slice), which at every decoding step and layer was a fifth of a batch-64
/// generation's time — and reads at most this many slots more than written.
pub const KV_BLOCK: usize = 64;

/// The allocated width of a KV cache holding `len` of at most `capacity` slots.
pub(crate) fn kv_width(len: usize, capacity: usize) -> usize {
    len.div_ceil(KV_BLOCK)
        .saturating_mul(KV_BLOCK)
        .min(capacity)
        .max(len)
}

/// Per-layer key/value tensors `[batch, kv_heads, width, head_dim]`, grown by [`KV_BLOCK`] slots
/// up to the capacity.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    pub slots: SlotState,
    layers: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    /// A cache for `batch` rows of up to `capacity` tokens, in the compute format.
    pub fn new(
        config: &ModelConfig,
        batch: usize,
        capacity: usize,
        precision: Precision,
        device: &B::Device,
    ) -> Self {
        let width = kv_width(1, capacity);
        let shape = [batch, config.num_key_value_heads, width, config.head_dim];
        let dtype = DType::from(precision.dtype());
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                (
                    Tensor::zeros(shape, (device, dtype)),
                    Tensor::zeros(shape, (device, dtype)),
                )
            })
            .collect();
        Self {
            slots: SlotState::new(batch, capacity),
            layers,
        }
    }
}

/// Cos/sin tables `[batch, seq, 1, head_dim]` for the given positions (applied to queries and
/// keys in the `[batch, seq, heads, head_dim]` layout the projections produce); `sin` with its
/// first half negated (see [`RopeTables::apply`]).
pub(crate) struct RopeTables<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
}

impl<B: Backend> RopeTables<B> {
    fn new(
        inv_freq: &[f32],
        positions: &[i64],
        batch: usize,
        seq: usize,
        precision: Precision,
        device: &B::Device,
    ) -> Self {
        let half = inv_freq.len();
        let dim = 2 * half;
        let mut cos = vec![0f32; batch * seq * dim];
        let mut sin = vec![0f32; batch * seq * dim];
        for (i, &p) in positions.iter().enumerate() {
            for (k, &f) in inv_freq.iter().enumerate() {
                // Same float32 arithmetic as transformers: angle = position * inv_freq.
                let angle = p as f32 * f;
                let (s, c) = angle.sin_cos();
                cos[i * dim + k] = c;
                cos[i * dim + half + k] = c;
                // Negated here rather than negating half of every query and key.
                sin[i * dim + k] = -s;
                sin[i * dim + half + k] = s;
            }
        }
        let shape = [batch, seq, 1, dim];
        // Computed in f32, applied in the compute format (as transformers does).
        Self {
            cos: precision.compute(Tensor::from_data(TensorData::new(cos, shape), device)),
            sin: precision.compute(Tensor::from_data(TensorData::new(sin, shape), device)),
        }
    }

    /// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x₂, x₁]`, computed as
    /// `x * cos + [x₂, x₁] * [-sin, sin]`: the same products bit for bit (`(-a)·b = a·(-b)`),
    /// with the halves swapped by one `flip` instead of two slices, a negation and a
    /// concatenation (fewer kernels forward and backward). `x` is `[batch, seq, heads,
    /// head_dim]` as the projection wrote it, so the reshapes around the flip copy nothing.
    fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let swapped = x
            .clone()
            .reshape([b, s, h, 2, d / 2])
            .flip([3])
            .reshape([b, s, h, d]);
        x * self.cos.clone() + swapped * self.sin.clone()
    }
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4>,
        cache: Option<LayerCache<'_, B>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let qkv = Projected::new(&self.qkv_proj, x, p);
        // RoPE in the projection's layout, then heads before positions: one launch for the
        // three where a fused kernel can (`crate::cube`), else piece by piece.
        let (q, k, v) = match cache {
            Some((slot, start, width)) => {
                let device = qkv.y.device();
                let kc = std::mem::replace(&mut slot.0, Tensor::empty([0, 0, 0, 0], &device));
                let vc = std::mem::replace(&mut slot.1, Tensor::empty([0, 0, 0, 0], &device));
                // Grown (by whole blocks) to the width the mask was built for; then attention
                // reads the whole tensor, masked past `start + s`, instead of a slice of it.
                // Keys and values written into the caches in place (GPU builds only: elsewhere
                // nothing mutates them).
                #[allow(unused_mut)]
                let (mut kc, mut vc) = (grow(kc, width), grow(vc, width));
                let fused: Option<Tensor<B, 4>> = fused!(qkv_into(
                    &qkv.y,
                    (h, kvh, d),
                    qkv.bias.as_ref(),
                    (&rope.cos, &rope.sin),
                    (&mut kc, &mut vc),
                    start
                ));
                let (q, kc, vc) = match fused {
                    Some(q) => (q, kc, vc),
                    None => qkv.split([b, s, h, kvh, d], rope, Some((kc, vc, start))),
                };
                slot.0 = kc.clone();
                slot.1 = vc.clone();
                (q, kc, vc)
            }
            None => fused!(qkv(
                &qkv.y,
                (h, kvh, d),
                qkv.bias.as_ref(),
                (&rope.cos, &rope.sin)
            ))
            .unwrap_or_else(|| qkv.split([b, s, h, kvh, d], rope, None)),
        };
        // Grouped-query attention without copying K/V: fold the query heads of a group into
        // the sequence axis, so each KV head serves `groups * s` query rows (the mask comes
        // repeated for them, see `layer_inputs`).
        let groups = h / kvh;
        let q = q.reshape([b, kvh, groups * s, d]);
        let scale = (d as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3));
        // The mask and the softmax in f32, the probabilities back in the compute format.
        let fused = in_format(&scores, p)
            .then(|| fused!(masked_softmax(&scores, &mask, scale)))
            .flatten();
        let probs = match fused {
            Some(probs) => probs,
            None => p.compute(softmax(to_f32(scores.mul_scalar(scale)) + mask, 3)),
        };
        let out = probs.matmul(v); // [b, kvh, groups*s, d]
        let out = if s == 1 {
            out.reshape([b, s, h * d]) // see `heads_first`
        } else {
            out.reshape([b, h, s, d])
                .swap_dims(1, 2)
                .reshape([b, s, h * d])
        };
        linear(&self.o_proj, out, p)
    }
}

/// The output of a merged projection (queries, keys and values side by side), `[batch, seq,
/// width]`, cut into heads by [`Projected::heads`].
struct Projected<B: Backend> {
    y: Tensor<B, 3>,
    /// The projection's bias when it is still to be added (by the queries/keys/values kernel,
    /// on the inference path of a CubeCL backend); `None` when `y` has it (or there is none).
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Projected<B> {
    /// `x · W (+ b)` in the compute format. Where the queries/keys/values kernel serves the
    /// inference path, the bias is left for it to add; in training (autodiff) the product adds
    /// it, so that its gradient is one reduction of the whole output's gradient.
    fn new(proj: &Linear<B>, x: Tensor<B, 3>, p: Precision) -> Self {
        if fused!(untracked(&x)) {
            Self {
                y: rows_linear(x, p.compute(proj.weight.val()), None),
                bias: proj.bias.as_ref().map(|b| p.compute(b.val())),
            }
        } else {
            Self {
                y: linear(proj, x, p),
                bias: None,
            }
        }
    }

    /// Queries, keys and values (`dims`: `[batch, seq, heads, kv_heads, head_dim]`) by
    /// [`Self::heads`], RoPE on the first two; with `caches` (keys', values', a position) the
    /// caches with the keys and values written into them instead.
    fn split(
        &self,
        [b, s, h, kvh, d]: [usize; 5],
        rope: &RopeTables<B>,
        caches: Option<(Tensor<B, 4>, Tensor<B, 4>, usize)>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let (k_into, v_into) = match caches {
            Some((k, v, at)) => (Some((k, at)), Some((v, at))),
            None => (None, None),
        };
        (
            self.heads(0, [b, s, h, d], Some(rope), None),
            self.heads(h * d, [b, s, kvh, d], Some(rope), k_into),
            self.heads((h + kvh) * d, [b, s, kvh, d], None, v_into),
        )
    }

    /// The `shape[2] · shape[3]` columns of the output from `start`, plus their bias, as
    /// `shape` (`[batch, seq, heads, head_dim]`) with RoPE when `rope` is given, returned
    /// heads-first (`[batch, heads, seq, head_dim]`, see [`heads_first`]); with `into` (a KV
    /// cache `[batch, heads, width, head_dim]` and a position), the cache with the result
    /// written at that position instead. The composite form of `crate::cube::qkv`, which does
    /// the three pieces in one launch, reading them where the product wrote them.
    fn heads(
        &self,
        start: usize,
        shape: [usize; 4],
        rope: Option<&RopeTables<B>>,
        into: Option<(Tensor<B, 4>, usize)>,
    ) -> Tensor<B, 4> {
        let [b, s, h, d] = shape;
        let width = h * d;
        let mut t = self.y.clone().slice([0..b, 0..s, start..start + width]);
        if let Some(bias) = &self.bias {
            t = t + bias.clone().narrow(0, start, width).reshape([1, 1, width]);
        }
        let t = t.reshape(shape);
        let t = heads_first(match rope {
            Some(r) => r.apply(t),
            None => t,
        });
        match into {
            Some((cache, at)) => {
                let [b, heads, _, d] = cache.dims();
                cache.slice_assign([0..b, 0..heads, at..at + s, 0..d], t)
            }
            None => t,
        }
    }
}

/// `[batch, seq, heads, dim]` as `[batch, heads, seq, dim]`. With one position (decoding) the two
/// layouts are the same memory, and a reshape says so: a swapped view would be copied by the
/// next reshape or kernel that needs it contiguous (one copy per layer and step on the GPU).
fn heads_first<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, s, n, d] = t.dims();
    if s == 1 {
        t.reshape([b, n, s, d])
    } else {
        t.swap_dims(1, 2)
    }
}

/// What the layers of one forward call share: RoPE tables of the new tokens' positions, each
/// layer's additive attention mask `[batch, 1, groups * new, kv]` (repeated for the query heads
/// of a KV group; layers with one sliding-window size share one tensor) and where the new
/// tokens start in the KV cache.
pub(crate) struct LayerInputs<B: Backend> {
    pub(crate) rope: RopeTables<B>,
    pub(crate) masks: Vec<Tensor<B, 4>>,
    pub(crate) start: usize,
    /// Slots the masks cover: the KV cache's width (`kv_width`), or the sequence without one.
    pub(crate) width: usize,
}

impl<B: Backend> DecoderLayer<B> {
    /// `x + attn(norm(x))`, then `x + mlp(norm(x))`; with a cache, appends the new keys and
    /// values to it.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4>,
        cache: Option<LayerCache<'_, B>>,
        p: Precision,
    ) -> Tensor<B, 3> {
        let (x, mlp) = self.forward_parts(x, None, rope, mask, cache, p);
        x + mlp
    }

    /// [`Self::forward`] of `x + pending` (the previous layer's MLP output, not yet added: the
    /// input norm adds it, one launch with a fused kernel), returning the residual stream after
    /// attention and this layer's MLP output, whose sum is the layer's output.
    pub(crate) fn forward_parts(
        &self,
        x: Tensor<B, 3>,
        pending: Option<Tensor<B, 3>>,
        rope: &RopeTables<B>,
        mask: Tensor<B, 4>,
        cache: Option<LayerCache<'_, B>>,
        p: Precision,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (x, h) = match pending {
            Some(delta) => self.input_layernorm.forward_residual(x, delta, p),
            None => {
                let h = self.input_layernorm.forward(x.clone(), p);
                (x, h)
            }
        };
        let h = self.self_attn.forward(h, rope, mask, cache, p);
        let (x, h) = self.post_attention_layernorm.forward_residual(x, h, p);
        (x, self.mlp.forward(h, p))
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, p: Precision) -> Tensor<B, 3> {
        // `[batch, seq, 2 · intermediate]`: the gate's columns, then the up projection's.
        let gate_up = linear(&self.gate_up_proj, x, p);
        let fused = in_format(&gate_up, p)
            .then(|| fused!(silu_mul(&gate_up)))
            .flatten();
        let h = fused.unwrap_or_else(|| {
            let [b, s, w] = gate_up.dims();
            let half = w / 2;
            let gate = gate_up.clone().slice([0..b, 0..s, 0..half]);
            let up = gate_up.slice([0..b, 0..s, half..w]);
            silu(gate, p) * up
        });
        linear(&self.down_proj, h, p)
    }
}

impl<B: Backend> Transformer<B> {
    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.val().device()
    }

    /// Sets the format activations are computed in. The weights keep theirs: f32 master weights
    /// stay f32 and are cast at each use, so a training step's gradients are f32. Fails where
    /// the backend lacks the format (the CPU backend has no bf16).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        precision.check_supported::<B>(&self.device())?;
        self.precision = precision;
        Ok(self)
    }

    /// The format of every weight, in module order (f32 master weights, or a bf16 copy).
    pub fn weight_dtypes(&self) -> Vec<DType> {
        struct Dtypes(Vec<DType>);
        impl<B: Backend> ModuleVisitor<B> for Dtypes {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.push(param.val().dtype());
            }
        }
        let mut v = Dtypes(vec![]);
        self.visit(&mut v);
        v.0
    }

    /// Stores every weight in `precision`'s format and computes in it: a copy that only infers
    /// (the frozen reference, generators, scorers) in half the memory and bandwidth for bf16.
    /// The learner never trains such a copy: an AdamW update is often below bf16's resolution.
    pub fn cast_weights(self, precision: Precision) -> Result<Self> {
        struct Caster(FloatDType);
        impl<B: Backend> ModuleMapper<B> for Caster {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let dtype = self.0;
                param.map(|t| cast_to(t, dtype))
            }
        }
        let model = self.with_precision(precision)?;
        Ok(model.map(&mut Caster(precision.dtype())))
    }

    /// Final hidden states `[batch, len, hidden]` of a padded batch (no cache).
    pub fn hidden(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        let mut slots = SlotState::new(batch.batch, batch.len);
        self.hidden_with(batch, None, &mut slots, None)
    }

    /// Runs new tokens through the decoder; with a cache, appends their keys and values.
    /// `device_ids`, when given, replaces `batch.ids` (tokens that never left the device);
    /// `batch` then supplies only the shape and the mask.
    fn hidden_with(
        &self,
        batch: &TokenBatch,
        device_ids: Option<Tensor<B, 2, Int>>,
        slots: &mut SlotState,
        mut cache: Option<&mut Vec<LayerKv<B>>>,
    ) -> Result<Tensor<B, 3>> {
        if device_ids.is_none() {
            batch.check_vocab(self.config.vocab_size)?;
        }
        let inputs = self.layer_inputs(batch, slots)?;
        let mut x = self.embed(batch, device_ids);
        // Each layer's MLP output is added to the residual stream by the next norm.
        let mut pending = None;
        for (i, (layer, mask)) in self.layers.iter().zip(&inputs.masks).enumerate() {
            let layer_cache = cache
                .as_mut()
                .map(|c| (&mut c[i], inputs.start, inputs.width));
            let (mid, mlp) = layer.forward_parts(
                x,
                pending.take(),
                &inputs.rope,
                mask.clone(),
                layer_cache,
                self.precision,
            );
            x = mid;
            pending = Some(mlp);
        }
        Ok(match pending {
            Some(delta) => self.norm.forward_residual(x, delta, self.precision).1,
            None => self.norm.forward(x, self.precision),
        })
    }

    /// The token embeddings of `batch` (or of `device_ids`, see [`Self::hidden_with`]) in the
    /// compute format.
    pub(crate) fn embed(
        &self,
        batch: &TokenBatch,
        device_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let ids = match device_ids {
            Some(ids) => ids,
            None => Tensor::from_data(
                TensorData::new(batch.ids_i64(), [batch.batch, batch.len]),
                &self.device(),
            ),
        };
        self.precision.compute(self.embed_tokens.forward(ids))
    }

    /// What every layer of a forward call over `batch` shares; appends the batch to `slots`.
    pub(crate) fn layer_inputs(
        &self,
        batch: &TokenBatch,
        slots: &mut SlotState,
    ) -> Result<LayerInputs<B>> {
        let device = self.device();
        let start = slots.len;
        let positions = slots.append(batch)?;
        let (b, s) = (batch.batch, batch.len);
        let inv_freq = self.config.rope.inv_freq(self.config.head_dim);
        let rope = RopeTables::new(&inv_freq, &positions, b, s, self.precision, &device);
        // Without a cache the capacity is the sequence: the width is its length.
        let width = kv_width(slots.len, slots.capacity);
        // One mask per sliding-window size, shared by the layers that use it.
        let mut by_window: Vec<(usize, Tensor<B, 4>)> = Vec::new();
        let mut masks = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let window = layer.self_attn.window;
            let mask = match by_window.iter().find(|(w, _)| *w == window) {
                Some((_, m)) => m.clone(),
                None => {
                    let w = (window > 0).then_some(window);
                    let m = Tensor::from_data(
                        TensorData::new(slots.additive_mask(s, w, width), [b, 1, s, width]),
                        &device,
                    );
                    // Once here rather than in every layer.
                    let groups = self.config.num_attention_heads / self.config.num_key_value_heads;
                    let m = if groups > 1 {
                        m.repeat_dim(2, groups)
                    } else {
                        m
                    };
                    by_window.push((window, m.clone()));
                    m
                }
            };
            masks.push(mask);
        }
        Ok(LayerInputs {
            rope,
            masks,
            start,
            width,
        })
    }

    /// Cached forward of new tokens: returns the hidden state of the last new column `[batch, hidden]`.
    pub fn step(&self, batch: &TokenBatch, cache: &mut KvCache<B>) -> Result<Tensor<B, 2>> {
        let hidden = self.hidden_with(batch, None, &mut cache.slots, Some(&mut cache.layers))?;
        Ok(last_column(hidden))
    }

    /// Cached forward of one new token per row whose ids are already on the device (`[batch, 1]`,
    /// every row real): decoding without reading the sampled tokens back to the host.
    /// Ids must be below the vocabulary size (they are, when they come from the model's logits).
    pub fn step_device(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>> {
        let [b, s] = ids.dims();
        let shape = TokenBatch {
            batch: b,
            len: s,
            ids: vec![0; b * s],
            mask: vec![1; b * s],
        };
        let hidden =
            self.hidden_with(&shape, Some(ids), &mut cache.slots, Some(&mut cache.layers))?;
        Ok(last_column(hidden))
    }

    /// Next-token logits from hidden states (`lm_head`, or the tied embedding matrix), in f32.
    pub fn logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Result<Tensor<B, D>> {
        let p = self.precision;
        match (&self.lm_head, self.config.architecture.head()) {
            (Some(head), _) => Ok(to_f32(linear(head, hidden, p))),
            (None, HeadKind::CausalLm) => {
                let w = p.compute(self.embed_tokens.weight.val()); // [vocab, hidden]
                let dims = hidden.dims();
                let hd = dims[D - 1];
                let rows = hidden.shape().num_elements() / hd;
                let h = hidden.reshape([rows, hd]);
                // Few rows (decoding): `W · hᵀ`, then transpose the small result — multiplying by
                // `Wᵀ` makes the ndarray backend copy the whole [vocab, hidden] matrix per call.
                // Many rows (training): `h · Wᵀ`, whose copy of `W` is amortised and whose
                // backward pass is cheaper.
                let flat = if rows <= FEW_ROWS {
                    w.matmul(h.transpose()).transpose()
                } else {
                    h.matmul(w.transpose())
                };
                let mut out = dims;
                out[D - 1] = self.config.vocab_size;
                Ok(to_f32(flat.reshape(out)))
            }
            (None, HeadKind::SequenceClassification) => Err(ModelError::Input(
                "this is a sequence-classification model: it has no language-model head".into(),
            )),
        }
    }

    /// Logits `[batch, len, vocab]` of a padded batch.
    pub fn forward_logits(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        self.logits(self.hidden(batch)?)
    }

    /// Log-prob of each token given its prefix, `[batch, len - 1]`: position `t` holds
    /// `log p(ids[t+1] | ids[..=t])`. Padding positions hold meaningless values; weight them
    /// with [`TokenBatch::mask`] shifted by one (see [`target_mask`]).
    pub fn token_logprobs(&self, batch: &TokenBatch) -> Result<Tensor<B, 2>> {
        if batch.len < 2 {
            return Err(ModelError::Input(
                "log-probs need sequences of at least two tokens".into(),
            ));
        }
        let logits = self.forward_logits(batch)?;
        Ok(gather_logprobs(logits, batch))
    }

    /// Per-position outputs of the `score` head `[batch, len, num_labels]`, in f32 (for a critic
    /// with one label, the value of every token).
    pub fn score_all(&self, batch: &TokenBatch) -> Result<Tensor<B, 3>> {
        self.score_of(self.hidden(batch)?)
    }

    /// The `score` head on final hidden states (of [`Self::hidden`] or
    /// [`Self::hidden_checkpointed`]), in f32.
    pub fn score_of(&self, hidden: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        let head = self.score.as_ref().ok_or_else(|| {
            ModelError::Input(
                "this model has no score head (it is not a reward or value model)".into(),
            )
        })?;
        Ok(to_f32(linear(head, hidden, self.precision)))
    }

    /// Per-token values `[batch, len]` of a one-label score head (PPO critic).
    pub fn values(&self, batch: &TokenBatch) -> Result<Tensor<B, 2>> {
        self.values_of(self.hidden(batch)?)
    }

    /// [`Self::values`] from final hidden states.
    pub fn values_of(&self, hidden: Tensor<B, 3>) -> Result<Tensor<B, 2>> {
        let all = self.score_of(hidden)?;
        let [b, s, labels] = all.dims();
        if labels != 1 {
            return Err(ModelError::Input(format!(
                "a value head has one output, this score head has {labels}"
            )));
        }
        Ok(all.reshape([b, s]))
    }

    /// Reward-model scores `[batch, num_labels]`, read at the last real token of each row.
    pub fn scores(&self, batch: &TokenBatch) -> Result<Tensor<B, 2>> {
        let all = self.score_all(batch)?;
        let [b, _, labels] = all.dims();
        let last: Vec<i64> = batch.last_index().into_iter().map(|i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), &self.device())
            .reshape([b, 1, 1])
            .repeat_dim(2, labels);
        Ok(all.gather(1, idx).reshape([b, labels]))
    }
}

/// `log_softmax(logits)[:, t, ids[t+1]]` for `t < len - 1`.
pub fn gather_logprobs<B: Backend>(logits: Tensor<B, 3>, batch: &TokenBatch) -> Tensor<B, 2> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    let lp = log_softmax(logits.slice([0..b, 0..s - 1, 0..v]), 2);
    let targets: Vec<i64> = (0..b)
        .flat_map(|r| {
            batch.ids[r * s + 1..(r + 1) * s]
                .iter()
                .map(|&x| i64::from(x))
        })
        .collect();
    let idx = Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [b, s - 1, 1]), &device);
    lp.gather(2, idx).reshape([b, s - 1])
}

/// The hidden state of the last column: `[batch, len, hidden]` → `[batch, hidden]`.
fn last_column<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, s, hd] = hidden.dims();
    hidden.slice([0..b, s - 1..s, 0..hd]).reshape([b, hd])
}

/// The mask of valid targets for [`Transformer::token_logprobs`]: `mask[t] * mask[t+1]`, as f32.
pub fn target_mask(batch: &TokenBatch) -> Vec<f32> {
    let s = batch.len;
    (0..batch.batch)
        .flat_map(|r| {
            let m = &batch.mask[r * s..(r + 1) * s];
            (0..s - 1).map(move |t| f32::from(m[t] * m[t + 1]))
        })
        .collect()
}

/// Masked sum over the last axis: `Σ_t x[t] m[t]` → `[batch]`.
pub fn masked_sum<B: Backend>(x: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, _] = x.dims();
    (x * mask).sum_dim(1).reshape([b])
}

/// Masked mean over the last axis: `Σ_t x[t] m[t] / max(Σ_t m[t], 1)` → `[batch]`.
pub fn masked_mean<B: Backend>(x: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, _] = x.dims();
    let count = mask.clone().sum_dim(1).clamp_min(1.0).reshape([b]);
    masked_sum(x, mask) / count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuAutodiff;
    use crate::load::host_vec;

    /// SiLU and its derivative in f64: `x σ(x)` and `σ(x) (1 + x (1 − σ(x)))`.
    fn reference(x: f64) -> (f64, f64) {
        let s = 1.0 / (1.0 + (-x).exp());
        (x * s, s * (1.0 + x * (1.0 - s)))
    }

    #[test]
    fn the_kv_cache_grows_by_blocks_up_to_its_capacity() {
        assert_eq!(kv_width(1, 1000), KV_BLOCK);
        assert_eq!(kv_width(KV_BLOCK, 1000), KV_BLOCK);
        assert_eq!(kv_width(KV_BLOCK + 1, 1000), 2 * KV_BLOCK);
        assert_eq!(kv_width(KV_BLOCK + 1, 100), 100);
        assert_eq!(kv_width(7, 7), 7);
        assert_eq!(kv_width(0, 10), 0);
    }

    #[test]
    fn silu_and_its_gradient_match_the_definition_and_stay_finite() {
        let xs: Vec<f32> = [
            -1000.0, -100.0, -88.5, -20.0, -3.0, -0.5, 0.0, 1e-6, 0.5, 3.0, 20.0, 100.0,
        ]
        .into_iter()
        .chain((0..200).map(|i| -10.0 + i as f32 * 0.1))
        .collect();
        let n = xs.len();
        let x = Tensor::<CpuAutodiff, 1>::from_data(
            TensorData::new(xs.clone(), [n]),
            &Default::default(),
        )
        .require_grad();
        let y = silu(x.clone(), Precision::F32);
        let grads = y.clone().sum().backward();
        let dx = host_vec(x.grad(&grads).expect("gradient").into_data()).expect("f32");
        let y = host_vec(y.into_data()).expect("f32");
        for ((&x, &y), &d) in xs.iter().zip(&y).zip(&dx) {
            let (want_y, want_d) = reference(f64::from(x));
            assert!(y.is_finite() && d.is_finite(), "x = {x}: {y}, {d}");
            assert!(
                (f64::from(y) - want_y).abs() <= 2e-6 * want_y.abs().max(1.0),
                "silu({x}) = {y}, want {want_y}"
            );
            assert!(
                (f64::from(d) - want_d).abs() <= 2e-6,
                "silu'({x}) = {d}, want {want_d}"
            );
        }
    }
}
