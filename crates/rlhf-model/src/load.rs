//! Building a [`Transformer`] from a Hugging Face checkpoint folder (or from random weights),
//! and saving one back in Hugging Face format.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use safetensors::Dtype;

use crate::config::{Architecture, HeadKind, ModelConfig};
use crate::error::{ModelError, Result};
use crate::model::{Attention, DecoderLayer, Mlp, Precision, RmsNorm, Transformer};
use crate::weights::{
    HostTensor, WeightStore, serialize_safetensors, write_atomic, write_safetensors,
};

/// Where weights come from while building a model.
trait Source {
    /// A tensor in Hugging Face layout (`[out, in]` for linear weights).
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor>;
}

impl Source for WeightStore {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.take(name, shape)
    }
}

/// Random weights (normal, std 0.02; norms at 1; biases at 0), as HF initialises these models.
struct RandomSource(rand::rngs::StdRng);

impl Source for RandomSource {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let n: usize = shape.iter().product();
        let data = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n)
                .map(|_| {
                    // Box-Muller: two uniforms → one standard normal.
                    let u1: f32 = self.0.random_range(f32::EPSILON..1.0);
                    let u2: f32 = self.0.random();
                    0.02 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
                })
                .collect()
        };
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }
}

fn param1<B: Backend>(t: HostTensor, device: &B::Device) -> Param<Tensor<B, 1>> {
    let n = t.data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(t.data, [n]), device))
}

/// A linear layer from an HF `[out, in]` weight (transposed to burn's `[in, out]`).
fn linear<B: Backend>(
    src: &mut dyn Source,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Linear<B>> {
    merged_linear(src, &[(prefix.to_string(), d_out)], d_in, bias, device)
}

/// One linear layer from several HF layers of one input (`(name, outputs)` each): their
/// outputs side by side, in the order given (`Attention::qkv_proj`, `Mlp::gate_up_proj`).
fn merged_linear<B: Backend>(
    src: &mut dyn Source,
    parts: &[(String, usize)],
    d_in: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Linear<B>> {
    let d_out = parts.iter().map(|(_, n)| n).sum::<usize>();
    // HF's `[out, in]` weights one after another are the merged `[out, in]` weight.
    let mut w = Vec::with_capacity(d_out * d_in);
    let mut b = Vec::with_capacity(if bias { d_out } else { 0 });
    for (name, n) in parts {
        w.extend(src.tensor(&format!("{name}.weight"), &[*n, d_in])?.data);
        if bias {
            b.extend(src.tensor(&format!("{name}.bias"), &[*n])?.data);
        }
    }
    let t = transpose(&w, d_out, d_in);
    let weight = Param::from_tensor(Tensor::from_data(TensorData::new(t, [d_in, d_out]), device));
    let bias = bias.then(|| {
        param1(
            HostTensor {
                shape: vec![d_out],
                data: b,
            },
            device,
        )
    });
    Ok(Linear { weight, bias })
}

fn norm<B: Backend>(
    src: &mut dyn Source,
    name: &str,
    cfg: &ModelConfig,
    device: &B::Device,
) -> Result<RmsNorm<B>> {
    Ok(RmsNorm {
        weight: param1(src.tensor(name, &[cfg.hidden_size])?, device),
        eps: cfg.rms_norm_eps,
    })
}

fn build<B: Backend>(
    cfg: ModelConfig,
    src: &mut dyn Source,
    prefix: &str,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let h = cfg.hidden_size;
    let (nh, nkv, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let emb = src.tensor(
        &format!("{prefix}embed_tokens.weight"),
        &[cfg.vocab_size, h],
    )?;
    let embed_tokens = Embedding {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(emb.data, [cfg.vocab_size, h]),
            device,
        )),
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("{prefix}layers.{i}");
        let self_attn = Attention {
            qkv_proj: merged_linear(src, &qkv_parts(&p, &cfg), h, cfg.qkv_bias, device)?,
            o_proj: linear(
                src,
                &format!("{p}.self_attn.o_proj"),
                nh * hd,
                h,
                cfg.o_bias,
                device,
            )?,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            window: cfg.layer_windows.get(i).copied().flatten().unwrap_or(0),
        };
        let i_size = cfg.intermediate_size;
        let mlp = Mlp {
            gate_up_proj: merged_linear(src, &gate_up_parts(&p, &cfg), h, cfg.mlp_bias, device)?,
            down_proj: linear(
                src,
                &format!("{p}.mlp.down_proj"),
                i_size,
                h,
                cfg.mlp_bias,
                device,
            )?,
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(src, &format!("{p}.input_layernorm.weight"), &cfg, device)?,
            self_attn,
            post_attention_layernorm: norm(
                src,
                &format!("{p}.post_attention_layernorm.weight"),
                &cfg,
                device,
            )?,
            mlp,
        });
    }
    let final_norm = norm(src, &format!("{prefix}norm.weight"), &cfg, device)?;
    let (lm_head, score) = match cfg.architecture.head() {
        HeadKind::CausalLm => {
            // A tied checkpoint may still carry lm_head.weight (a copy); we read the embeddings.
            let head = if cfg.tie_word_embeddings {
                None
            } else {
                Some(linear(src, "lm_head", h, cfg.vocab_size, false, device)?)
            };
            (head, None)
        }
        HeadKind::SequenceClassification => (
            None,
            Some(linear(src, "score", h, cfg.num_labels, false, device)?),
        ),
    };
    Ok(Transformer {
        embed_tokens,
        layers,
        norm: final_norm,
        lm_head,
        score,
        config: cfg,
        precision: Precision::F32,
    })
}

impl<B: Backend> Transformer<B> {
    /// Loads `config.json` and the safetensors weights of a Hugging Face checkpoint folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let cfg = ModelConfig::from_dir(dir)?;
        let mut store = WeightStore::from_dir(dir)?;
        let mut cfg = cfg;
        // config.json may leave the label count implicit (HF then assumes 2): trust the head.
        let implicit_labels =
            cfg.raw.get("id2label").is_none() && cfg.raw.get("num_labels").is_none();
        if cfg.architecture.head() == HeadKind::SequenceClassification
            && implicit_labels
            && let Some(&[n, _]) = store.shape("score.weight")
        {
            cfg.num_labels = n;
        }
        // Some exports omit the `model.` prefix.
        let prefix = if store.contains("model.embed_tokens.weight")
            || !store.contains("embed_tokens.weight")
        {
            "model."
        } else {
            ""
        };
        build(cfg, &mut store, prefix, device)
    }

    /// Builds a model of a known config from serialized safetensors (as produced by
    /// [`Transformer::to_safetensors_bytes`]); `origin` names the source in errors.
    pub fn from_safetensors_bytes(
        config: ModelConfig,
        bytes: &[u8],
        origin: &Path,
        device: &B::Device,
    ) -> Result<Self> {
        let mut store = WeightStore::from_bytes(bytes, origin)?;
        build(config, &mut store, "model.", device)
    }

    /// All weights as safetensors bytes (Hugging Face names) in the compute precision: the
    /// weight-sync payload. A bf16 model ships bf16 (half the bytes; exactly what a bf16
    /// worker would cast f32 weights to, rounded to nearest even), an f32 model f32.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let dtype = match self.precision {
            Precision::F32 => Dtype::F32,
            Precision::Bf16 => Dtype::BF16,
        };
        serialize_safetensors(&self.to_hf_tensors()?, Path::new("<policy>"), dtype)
    }

    /// A model with random weights (for tests and benchmarks).
    pub fn random(cfg: ModelConfig, seed: u64, device: &B::Device) -> Self {
        let mut src = RandomSource(rand::rngs::StdRng::seed_from_u64(seed));
        // Random sources never fail: shapes are produced to order.
        build(cfg, &mut src, "model.", device)
            .unwrap_or_else(|e| panic!("building a random model cannot fail: {e}"))
    }

    /// Turns a causal LM into a value (critic) model or reward model: drops `lm_head` and adds a
    /// `score` head with `num_labels` outputs initialised to zero.
    pub fn with_score_head(mut self, num_labels: usize) -> Self {
        let device = self.device();
        let h = self.config.hidden_size;
        self.lm_head = None;
        self.score = Some(Linear {
            weight: Param::from_tensor(Tensor::zeros([h, num_labels], &device)),
            bias: None,
        });
        self.config.architecture = match self.config.architecture.family() {
            crate::config::Family::Llama => Architecture::LlamaForSequenceClassification,
            crate::config::Family::Qwen2 => Architecture::Qwen2ForSequenceClassification,
            crate::config::Family::Mistral => Architecture::MistralForSequenceClassification,
        };
        self.config.num_labels = num_labels;
        self.config.tie_word_embeddings = false;
        self
    }

    /// All weights as host tensors with Hugging Face names and layouts.
    pub fn to_hf_tensors(&self) -> Result<BTreeMap<String, HostTensor>> {
        let mut out = BTreeMap::new();
        let emb = self.embed_tokens.weight.val();
        let shape = emb.dims().to_vec();
        out.insert(
            "model.embed_tokens.weight".into(),
            HostTensor {
                shape,
                data: weight_host_vec(emb)?,
            },
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            put_norm(
                &mut out,
                format!("{p}.input_layernorm.weight"),
                &layer.input_layernorm,
            )?;
            put_norm(
                &mut out,
                format!("{p}.post_attention_layernorm.weight"),
                &layer.post_attention_layernorm,
            )?;
            put_merged(&mut out, &qkv_parts(&p, &self.config), &a.qkv_proj)?;
            put_linear(&mut out, &format!("{p}.self_attn.o_proj"), &a.o_proj)?;
            put_merged(
                &mut out,
                &gate_up_parts(&p, &self.config),
                &layer.mlp.gate_up_proj,
            )?;
            put_linear(
                &mut out,
                &format!("{p}.mlp.down_proj"),
                &layer.mlp.down_proj,
            )?;
        }
        put_norm(&mut out, "model.norm.weight".into(), &self.norm)?;
        if let Some(head) = &self.lm_head {
            put_linear(&mut out, "lm_head", head)?;
        }
        if let Some(score) = &self.score {
            put_linear(&mut out, "score", score)?;
        }
        Ok(out)
    }

    /// Saves in Hugging Face format: `config.json`, `model.safetensors` (f32, HF names) and, when
    /// `tokenizer_from` is given, the tokenizer files copied from that folder. Files are written
    /// atomically; `dir` is created if needed.
    pub fn save_pretrained(&self, dir: &Path, tokenizer_from: Option<&Path>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors = self.to_hf_tensors()?;
        write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        let config = self.hf_config_json();
        let text = serde_json::to_string_pretty(&config).map_err(|source| ModelError::Json {
            path: dir.join("config.json"),
            source,
        })?;
        write_atomic(&dir.join("config.json"), text.as_bytes())?;
        if let Some(generation) = &self.config.generation {
            let text =
                serde_json::to_string_pretty(generation).map_err(|source| ModelError::Json {
                    path: dir.join("generation_config.json"),
                    source,
                })?;
            write_atomic(&dir.join("generation_config.json"), text.as_bytes())?;
        }
        if let Some(src) = tokenizer_from {
            for name in TOKENIZER_FILES {
                let from = src.join(name);
                if from.exists() && src != dir {
                    let bytes = std::fs::read(&from).map_err(|e| ModelError::io(&from, e))?;
                    write_atomic(&dir.join(name), &bytes)?;
                }
            }
        }
        Ok(())
    }

    /// `config.json` for this model: the loaded JSON with the fields we own overwritten.
    pub fn hf_config_json(&self) -> serde_json::Value {
        let c = &self.config;
        let mut v = c.raw.clone();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "architectures".into(),
                serde_json::json!([c.architecture.name()]),
            );
            obj.insert("model_type".into(), c.architecture.model_type().into());
            obj.insert("tie_word_embeddings".into(), c.tie_word_embeddings.into());
            let dtype_key = if obj.contains_key("torch_dtype") {
                "torch_dtype"
            } else {
                "dtype"
            };
            obj.insert(dtype_key.into(), "float32".into());
            if c.architecture.head() == HeadKind::SequenceClassification {
                obj.insert("num_labels".into(), c.num_labels.into());
                let id2label: serde_json::Map<String, serde_json::Value> = (0..c.num_labels)
                    .map(|i| (i.to_string(), format!("LABEL_{i}").into()))
                    .collect();
                let label2id: serde_json::Map<String, serde_json::Value> = (0..c.num_labels)
                    .map(|i| (format!("LABEL_{i}"), i.into()))
                    .collect();
                obj.insert("id2label".into(), id2label.into());
                obj.insert("label2id".into(), label2id.into());
                if c.pad_token_id.is_some() {
                    obj.insert("pad_token_id".into(), c.pad_token_id.into());
                }
            }
        }
        v
    }
}

/// Tokenizer-side files copied next to saved weights.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
];

fn put_norm<B: Backend>(
    out: &mut BTreeMap<String, HostTensor>,
    name: String,
    norm: &RmsNorm<B>,
) -> Result<()> {
    let t = norm.weight.val();
    let shape = t.dims().to_vec();
    out.insert(
        name,
        HostTensor {
            shape,
            data: weight_host_vec(t)?,
        },
    );
    Ok(())
}

/// Stores a linear layer in HF layout (`[out, in]` weight, transposed back from burn's).
fn put_linear<B: Backend>(
    out: &mut BTreeMap<String, HostTensor>,
    name: &str,
    layer: &Linear<B>,
) -> Result<()> {
    let d_out = layer.weight.val().dims()[1];
    put_merged(out, &[(name.to_string(), d_out)], layer)
}

/// Stores a merged linear layer ([`merged_linear`]) as the HF layers it joins.
fn put_merged<B: Backend>(
    out: &mut BTreeMap<String, HostTensor>,
    parts: &[(String, usize)],
    layer: &Linear<B>,
) -> Result<()> {
    let w = layer.weight.val();
    let [d_in, d_out] = w.dims();
    if parts.iter().map(|(_, n)| n).sum::<usize>() != d_out {
        return Err(ModelError::Data(format!(
            "{}: {d_out} outputs, not the sum of its parts' {parts:?}",
            parts.first().map_or("a layer", |(name, _)| name.as_str()),
        )));
    }
    // The merged `[out, in]` weight is the parts' `[out, in]` weights one after another.
    let t = transpose(&weight_host_vec(w)?, d_in, d_out);
    let bias = match &layer.bias {
        Some(b) => Some(weight_host_vec(b.val())?),
        None => None,
    };
    let mut row = 0;
    for (name, n) in parts {
        out.insert(
            format!("{name}.weight"),
            HostTensor {
                shape: vec![*n, d_in],
                data: t[row * d_in..(row + n) * d_in].to_vec(),
            },
        );
        if let Some(b) = &bias {
            out.insert(
                format!("{name}.bias"),
                HostTensor {
                    shape: vec![*n],
                    data: b[row..row + n].to_vec(),
                },
            );
        }
        row += n;
    }
    Ok(())
}

/// The HF layers joined in a layer's `qkv_proj` (`prefix`: `model.layers.{i}`), with their
/// output widths.
fn qkv_parts(prefix: &str, cfg: &ModelConfig) -> [(String, usize); 3] {
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    [
        (format!("{prefix}.self_attn.q_proj"), q),
        (format!("{prefix}.self_attn.k_proj"), kv),
        (format!("{prefix}.self_attn.v_proj"), kv),
    ]
}

/// The HF layers joined in a layer's `gate_up_proj`.
fn gate_up_parts(prefix: &str, cfg: &ModelConfig) -> [(String, usize); 2] {
    let i = cfg.intermediate_size;
    [
        (format!("{prefix}.mlp.gate_proj"), i),
        (format!("{prefix}.mlp.up_proj"), i),
    ]
}

/// The transpose of a row-major `rows × cols` matrix, in tiles that stay in cache (an element
/// at a time, every write of a row-by-row transpose missed the cache: seconds for a 0.5B model).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
    out
}

/// Host `f32` values of a weight. burn-ndarray reads a tensor that something else still holds
/// (a parameter always is) element by element through a dynamic-dimension iterator (measured
/// 125 MB/s: 16 s for Qwen2.5-0.5B's weights); the fresh result of an element-wise operation is
/// handed over without that copy. `x · 1` is exact for every value (signed zeros included).
fn weight_host_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    host_vec(t.mul_scalar(1.0).into_data())
}

/// Host `f32` values of a tensor.
pub fn host_vec(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}
