//! Parsing of a Hugging Face `config.json` (and `generation_config.json`) into the typed
//! [`ModelConfig`] the decoder is built from.
//!
//! Accepts both RoPE layouts that exist in the wild: transformers-5 `rope_parameters` and the older
//! top-level `rope_theta` + `rope_scaling`. Unsupported values fail with the file and field named.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

/// The architectures this crate can load, as spelled in `config.json` `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    LlamaForCausalLM,
    Qwen2ForCausalLM,
    MistralForCausalLM,
    LlamaForSequenceClassification,
    Qwen2ForSequenceClassification,
    MistralForSequenceClassification,
}

/// The decoder family (what differs in the attention block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Mistral,
}

/// What sits on top of the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `lm_head`: next-token logits.
    CausalLm,
    /// `score`: a sequence-classification (reward model) head read at the last non-pad token.
    SequenceClassification,
}

impl Architecture {
    /// All architectures, for error messages.
    pub const ALL: [Architecture; 6] = [
        Architecture::LlamaForCausalLM,
        Architecture::Qwen2ForCausalLM,
        Architecture::MistralForCausalLM,
        Architecture::LlamaForSequenceClassification,
        Architecture::Qwen2ForSequenceClassification,
        Architecture::MistralForSequenceClassification,
    ];

    /// The name used in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::LlamaForCausalLM => "LlamaForCausalLM",
            Architecture::Qwen2ForCausalLM => "Qwen2ForCausalLM",
            Architecture::MistralForCausalLM => "MistralForCausalLM",
            Architecture::LlamaForSequenceClassification => "LlamaForSequenceClassification",
            Architecture::Qwen2ForSequenceClassification => "Qwen2ForSequenceClassification",
            Architecture::MistralForSequenceClassification => "MistralForSequenceClassification",
        }
    }

    /// Parses the name used in `config.json`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The decoder family.
    pub fn family(self) -> Family {
        match self {
            Architecture::LlamaForCausalLM | Architecture::LlamaForSequenceClassification => {
                Family::Llama
            }
            Architecture::Qwen2ForCausalLM | Architecture::Qwen2ForSequenceClassification => {
                Family::Qwen2
            }
            Architecture::MistralForCausalLM | Architecture::MistralForSequenceClassification => {
                Family::Mistral
            }
        }
    }

    /// The head on top of the decoder.
    pub fn head(self) -> HeadKind {
        match self {
            Architecture::LlamaForCausalLM
            | Architecture::Qwen2ForCausalLM
            | Architecture::MistralForCausalLM => HeadKind::CausalLm,
            _ => HeadKind::SequenceClassification,
        }
    }

    /// The `model_type` written to `config.json`.
    pub fn model_type(self) -> &'static str {
        match self.family() {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
        }
    }
}

/// Rotary position embedding variants (HF `rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: frequencies divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// RoPE settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Inverse frequencies, one per rotated pair (`head_dim / 2` values), as HF computes them
    /// (in float32, after scaling).
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (self.theta as f32).powf(exponent)
            })
            .collect();
        match &self.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / *factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let factor = *factor as f32;
                let low = *low_freq_factor as f32;
                let high = *high_freq_factor as f32;
                let old_ctx = *original_max_position_embeddings as f32;
                let low_freq_wavelen = old_ctx / low;
                let high_freq_wavelen = old_ctx / high;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            f
                        };
                        let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                        if medium {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

/// Everything the decoder needs from `config.json`, plus token ids from `generation_config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    /// Bias on q/k/v projections (always on for Qwen2; `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (`attention_bias` for Llama; never for Qwen2).
    pub o_bias: bool,
    /// Bias on the MLP projections (`mlp_bias`).
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// Per layer: the sliding-window size, if that layer uses one.
    pub layer_windows: Vec<Option<usize>>,
    /// Number of outputs of a sequence-classification head.
    pub num_labels: usize,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The parsed `config.json`, kept so that saving writes back every field we do not model.
    pub raw: Value,
    /// The `generation_config.json`, if the folder had one.
    pub generation: Option<Value>,
}

/// Reads a JSON file, naming the file in errors.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Typed access to fields of a JSON object with errors that name file and field.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Value,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, message: impl Into<String>) -> ModelError {
        ModelError::config(self.path, format!("{}{field}", self.prefix), message)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    fn positive(&self, field: &str) -> Result<usize> {
        let v = self.usize(field)?;
        if v == 0 {
            return Err(self.err(field, "must be positive"));
        }
        Ok(v)
    }

    fn f64_opt(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
        }
    }

    fn f64(&self, field: &str) -> Result<f64> {
        self.f64_opt(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    fn bool_opt(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))),
        }
    }

    fn str_opt(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("expected a string, found {v}"))),
        }
    }

    /// A token id field that may be an integer or a list of integers.
    fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        let to_id = |v: &Value| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| self.err(field, format!("expected a token id, found {v}")))
        };
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items.iter().map(to_id).collect(),
            Some(v) => Ok(vec![to_id(v)?]),
        }
    }
}

impl ModelConfig {
    /// Loads `config.json` (and `generation_config.json` when present) from a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.exists() {
            return Err(ModelError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found (is this a Hugging Face checkpoint folder?)",
                ),
            ));
        }
        let raw = read_json(&path)?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.exists() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        Self::from_json(raw, &path, generation, &gen_path)
    }

    /// Builds the config from parsed JSON; `path` is only used in error messages.
    pub fn from_json(
        raw: Value,
        path: &Path,
        generation: Option<Value>,
        gen_path: &Path,
    ) -> Result<Self> {
        if !raw.is_object() {
            return Err(ModelError::config(path, "<root>", "expected a JSON object"));
        }
        let f = Fields {
            path,
            obj: &raw,
            prefix: String::new(),
        };
        let architecture = parse_architecture(&f)?;
        let family = architecture.family();
        if let Some(act) = f.str_opt("hidden_act")?
            && act != "silu"
            && act != "swish"
        {
            return Err(f.err(
                "hidden_act",
                format!("unsupported activation `{act}` (supported: silu)"),
            ));
        }
        let hidden_size = f.positive("hidden_size")?;
        let num_attention_heads = f.positive("num_attention_heads")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} must be positive and divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(f.err(
                        "head_dim",
                        "missing, and hidden_size is not a multiple of num_attention_heads",
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err("head_dim", format!("{head_dim} must be positive and even")));
        }
        if let Some(p) = f.f64_opt("partial_rotary_factor")?
            && p != 1.0
        {
            return Err(f.err("partial_rotary_factor", "only 1.0 is supported"));
        }
        let rope = parse_rope(&f)?;
        let attention_bias = f.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama | Family::Mistral => (attention_bias, attention_bias),
        };
        let mlp_bias = f.bool_opt("mlp_bias")?.unwrap_or(false);
        let num_hidden_layers = f.positive("num_hidden_layers")?;
        let layer_windows = parse_windows(&f, family, num_hidden_layers)?;
        let num_labels = match f.get("id2label").and_then(Value::as_object) {
            Some(map) if !map.is_empty() => map.len(),
            _ => f.usize_opt("num_labels")?.unwrap_or(2),
        };

        let mut eos_token_ids = f.token_ids("eos_token_id")?;
        let mut pad_token_id = f.token_ids("pad_token_id")?.first().copied();
        let mut bos_token_id = f.token_ids("bos_token_id")?.first().copied();
        if let Some(g) = &generation {
            let gf = Fields {
                path: gen_path,
                obj: g,
                prefix: String::new(),
            };
            let gen_eos = gf.token_ids("eos_token_id")?;
            for id in gen_eos {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
            pad_token_id = pad_token_id.or(gf.token_ids("pad_token_id")?.first().copied());
            bos_token_id = bos_token_id.or(gf.token_ids("bos_token_id")?.first().copied());
        }

        let cfg = ModelConfig {
            architecture,
            vocab_size: f.positive("vocab_size")?,
            hidden_size,
            intermediate_size: f.positive("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope,
            qkv_bias,
            o_bias,
            mlp_bias,
            tie_word_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(4096),
            layer_windows,
            num_labels,
            pad_token_id,
            bos_token_id,
            eos_token_ids,
            raw,
            generation,
        };
        Ok(cfg)
    }

    /// Number of query heads per key/value head (grouped-query attention).
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters of the decoder and its head.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let head = match self.architecture.head() {
            HeadKind::CausalLm if self.tie_word_embeddings => 0,
            HeadKind::CausalLm => self.vocab_size * h,
            HeadKind::SequenceClassification => self.num_labels * h,
        };
        self.vocab_size * h + self.num_hidden_layers * self.layer_parameters() + h + head
    }

    /// Parameters of one decoder layer (attention, MLP, its two norms).
    pub fn layer_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let i = self.intermediate_size;
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias { q + 2 * kv } else { 0 }
            + if self.o_bias { h } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        attn + mlp + 2 * h
    }

    /// A small config for tests and benchmarks (random weights), in the Llama layout.
    pub fn synthetic(
        architecture: Architecture,
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        intermediate_size: usize,
    ) -> Self {
        let raw = serde_json::json!({
            "architectures": [architecture.name()],
            "model_type": architecture.model_type(),
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": false,
            "num_labels": 1,
        });
        // The JSON above is complete and valid by construction.
        Self::from_json(
            raw,
            Path::new("<synthetic>"),
            None,
            Path::new("<synthetic>"),
        )
        .unwrap_or_else(|e| panic!("synthetic config is invalid: {e}"))
    }

    /// The path-independent name of a config source, used in messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} layers, hidden {}, {} heads / {} kv heads, vocab {}, {:.1}M parameters)",
            self.architecture.name(),
            self.num_hidden_layers,
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.vocab_size,
            self.num_parameters() as f64 / 1e6
        )
    }
}

fn parse_architecture(f: &Fields<'_>) -> Result<Architecture> {
    match f.get("architectures") {
        Some(Value::Array(items)) if !items.is_empty() => {
            let name = items[0]
                .as_str()
                .ok_or_else(|| f.err("architectures", "expected a list of strings"))?;
            Architecture::from_name(name).ok_or_else(|| {
                let supported: Vec<_> = Architecture::ALL.iter().map(|a| a.name()).collect();
                f.err(
                    "architectures",
                    format!(
                        "unknown architecture `{name}` (supported: {})",
                        supported.join(", ")
                    ),
                )
            })
        }
        Some(_) => Err(f.err("architectures", "expected a non-empty list of strings")),
        None => match f.str_opt("model_type")? {
            Some("llama") => Ok(Architecture::LlamaForCausalLM),
            Some("qwen2") => Ok(Architecture::Qwen2ForCausalLM),
            Some("mistral") => Ok(Architecture::MistralForCausalLM),
            Some(other) => Err(f.err(
                "model_type",
                format!("unknown model type `{other}` and no `architectures` field"),
            )),
            None => Err(f.err("architectures", "missing (and no `model_type` either)")),
        },
    }
}

fn parse_rope(f: &Fields<'_>) -> Result<RopeConfig> {
    // transformers >= 5: everything under `rope_parameters`; older: `rope_theta` + `rope_scaling`.
    let (params, field_name) = match f.get("rope_parameters") {
        Some(p) => (Some(p), "rope_parameters"),
        None => (f.get("rope_scaling"), "rope_scaling"),
    };
    let top_theta = f.f64_opt("rope_theta")?;
    let Some(params) = params else {
        return Ok(RopeConfig {
            theta: top_theta.unwrap_or(10000.0),
            scaling: RopeScaling::Default,
        });
    };
    if !params.is_object() {
        return Err(f.err(field_name, "expected an object"));
    }
    let p = Fields {
        path: f.path,
        obj: params,
        prefix: format!("{field_name}."),
    };
    let theta = p.f64_opt("rope_theta")?.or(top_theta).unwrap_or(10000.0);
    let kind = match p.str_opt("rope_type")? {
        Some(t) => t,
        None => p.str_opt("type")?.unwrap_or("default"),
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: p.f64("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: p.f64("factor")?,
            low_freq_factor: p.f64("low_freq_factor")?,
            high_freq_factor: p.f64("high_freq_factor")?,
            original_max_position_embeddings: p.f64("original_max_position_embeddings")?,
        },
        other => {
            return Err(p.err(
                "rope_type",
                format!("unsupported RoPE type `{other}` (supported: default, linear, llama3)"),
            ));
        }
    };
    if let RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. } = &scaling
        && *factor <= 0.0
    {
        return Err(p.err("factor", "must be positive"));
    }
    if let RopeScaling::Llama3 {
        low_freq_factor,
        high_freq_factor,
        ..
    } = &scaling
        && high_freq_factor <= low_freq_factor
    {
        return Err(p.err("high_freq_factor", "must be greater than low_freq_factor"));
    }
    Ok(RopeConfig { theta, scaling })
}

fn parse_windows(f: &Fields<'_>, family: Family, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = f.usize_opt("sliding_window")?;
    if let Some(Value::Array(types)) = f.get("layer_types") {
        if types.len() != layers {
            return Err(f.err(
                "layer_types",
                format!("has {} entries, num_hidden_layers is {layers}", types.len()),
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => window.map(Some).ok_or_else(|| {
                    f.err("sliding_window", "required by a sliding_attention layer")
                }),
                _ => Err(f.err("layer_types", format!("unsupported layer type {t}"))),
            })
            .collect();
    }
    Ok(match family {
        Family::Llama => vec![None; layers],
        Family::Mistral => vec![window; layers],
        Family::Qwen2 => {
            let use_sw = f.bool_opt("use_sliding_window")?.unwrap_or(false);
            let max_window_layers = f.usize_opt("max_window_layers")?.unwrap_or(layers);
            (0..layers)
                .map(|i| {
                    if use_sw && i >= max_window_layers {
                        window
                    } else {
                        None
                    }
                })
                .collect()
        }
    })
}

/// The path of `config.json` inside a checkpoint folder.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(
            v,
            Path::new("config.json"),
            None,
            Path::new("generation_config.json"),
        )
    }

    fn base() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
               "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})
    }

    #[test]
    fn old_and_new_rope_layouts_agree() {
        let mut old = base();
        old["rope_theta"] = json!(5e5);
        old["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let mut new = base();
        new["rope_parameters"] = json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5});
        assert_eq!(
            parse(old).map(|c| c.rope).ok(),
            parse(new).map(|c| c.rope).ok()
        );
        assert_eq!(
            parse(base()).map(|c| c.rope).ok(),
            Some(RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::Default
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"architectures": ["GPT2LMHeadModel"]}),
                "architectures",
            ),
            (
                {
                    let mut v = base();
                    v.as_object_mut().map(|o| o.remove("hidden_size"));
                    v
                },
                "`hidden_size`: missing",
            ),
            (
                {
                    let mut v = base();
                    v["num_key_value_heads"] = json!(3);
                    v
                },
                "num_key_value_heads",
            ),
            (
                {
                    let mut v = base();
                    v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
                    v
                },
                "rope_scaling.rope_type",
            ),
            (
                {
                    let mut v = base();
                    v["rope_parameters"] = json!({"rope_type": "llama3", "factor": 8.0});
                    v
                },
                "rope_parameters.low_freq_factor",
            ),
            (
                {
                    let mut v = base();
                    v["hidden_act"] = json!("gelu");
                    v
                },
                "hidden_act",
            ),
            (
                {
                    let mut v = base();
                    v["vocab_size"] = json!("ten");
                    v
                },
                "vocab_size",
            ),
        ];
        for (v, needle) in cases {
            let err = parse(v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
            assert!(err.starts_with("config.json"), "{err}");
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        let rope = RopeConfig {
            theta: 5e5,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64.0,
            },
        };
        let plain = RopeConfig {
            theta: 5e5,
            scaling: RopeScaling::Default,
        }
        .inv_freq(16);
        let scaled = rope.inv_freq(16);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_windows_follow_layer_types() {
        let mut v = base();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["num_hidden_layers"] = json!(2);
        v["sliding_window"] = json!(4);
        v["layer_types"] = json!(["full_attention", "sliding_attention"]);
        let c = parse(v).ok();
        assert_eq!(
            c.as_ref().map(|c| (c.qkv_bias, c.o_bias)),
            Some((true, false))
        );
        assert_eq!(c.map(|c| c.layer_windows), Some(vec![None, Some(4)]));
    }
}
