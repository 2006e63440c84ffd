//! Memory estimates for sizing a run: what a training step and a generation call hold, part by
//! part, computed from the model's shape and the compute [`Precision`]. `rlhf bench model`
//! prints them next to the measured peak of a real step, so the estimate's error is known per
//! model (docs/benchmarks.md).
//!
//! Activations count the tensors burn's autodiff keeps for the backward pass of this crate's
//! forward (`model.rs`), per token and layer, in floats:
//! - the two RMSNorms keep their input, its square and their output: `2 × 3h`;
//! - attention keeps q, k, v (`q + 2kv`), the rotary products of q and k (`2q + 2kv`), keys and
//!   values repeated to every head under GQA (`2q`, when grouped), the attention weights
//!   before and after the softmax and the softmax's exponentials (`3 · heads · len`), and the
//!   merged heads fed to `o_proj` (`2q`);
//! - the MLP keeps the gate and up projections, the SiLU's sigmoid and output and their
//!   product (`5i`);
//! - the output head keeps the logits, their shifted copy and exponentials and the
//!   log-softmax (`4 · vocab`) per token.
//!
//! In bf16 the norms' tensors, the attention weights and the logits stay f32 (the model
//! computes them in f32) and the rest takes 2 bytes; the matmuls' backward passes also keep
//! the bf16 copies of the weights. Master weights, AdamW's moments and gradients stay f32; a
//! frozen reference and generation copies are stored in bf16.

use std::fmt;

use crate::checkpoint::head_slice_rows;
use crate::config::ModelConfig;
use crate::model::Precision;

const F32: u64 = 4;

/// Named byte counts: what stays resident, and the phases of a call, of which only the largest
/// counts towards the peak (activations are freed as the backward pass produces gradients, so a
/// training step holds one or the other at its peak, not both).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    pub resident: Vec<(&'static str, u64)>,
    pub phases: Vec<(&'static str, Vec<(&'static str, u64)>)>,
}

impl MemoryEstimate {
    /// Bytes held before and after the call.
    pub fn resident(&self) -> u64 {
        self.resident.iter().map(|(_, b)| b).sum()
    }

    /// Bytes the call adds at its peak: its largest phase.
    pub fn transient(&self) -> u64 {
        self.phases
            .iter()
            .map(|(_, parts)| parts.iter().map(|(_, b)| b).sum::<u64>())
            .max()
            .unwrap_or(0)
    }

    /// Estimated peak: resident plus the largest phase.
    pub fn peak(&self) -> u64 {
        self.resident() + self.transient()
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |parts: &[(&str, u64)]| {
            parts
                .iter()
                .map(|(n, b)| format!("{n} {}", human(*b)))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        write!(f, "resident {}", list(&self.resident))?;
        for (name, parts) in &self.phases {
            write!(f, "; {name}: {}", list(parts))?;
        }
        write!(f, "; peak {}", human(self.peak()))
    }
}

/// Bytes as MiB or GiB.
pub fn human(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// What a training step of the policy holds once AdamW's moments exist: resident weights,
/// moments and (when the objective uses one) the frozen reference's weights; then either the
/// activations and logits of a `batch × len` forward, or the gradients.
///
/// With `checkpointing` ([`crate::checkpoint`], token log-probs checkpointed) the forward keeps
/// each layer's input instead of its activations; the backward pass then holds those inputs with
/// either one recomputed slice of the output head, or one recomputed layer's activations and the
/// gradients.
pub fn training(
    cfg: &ModelConfig,
    batch: usize,
    len: usize,
    reference: bool,
    precision: Precision,
    checkpointing: bool,
) -> MemoryEstimate {
    let params = cfg.num_parameters() as u64;
    let weights = params * F32;
    let compute = precision.bytes() as u64;
    let mut resident = vec![("weights", weights), ("adamw moments", 2 * weights)];
    if reference {
        resident.push(("reference weights", params * compute));
    }
    let tokens = (batch * len) as u64;
    let h = cfg.hidden_size as u64;
    let layers = cfg.num_hidden_layers as u64;
    let (f32_floats, compute_floats) = layer_floats(cfg, len);
    let activations = tokens * (f32_floats * F32 + compute_floats * compute);
    let logits = ("logits", tokens * 4 * cfg.vocab_size as u64 * F32);
    // The bf16 copies of the weights the matmuls' backward passes keep.
    let copies = |n: u64| (precision != Precision::F32).then_some(("weight copies", n * compute));
    let phases = if checkpointing {
        let inputs = ("layer inputs", layers * tokens * h * compute);
        // The head is recomputed a slice of rows at a time: the slice's final norm (three f32
        // values per hidden unit, `layer_floats`) and logits, with the whole batch's log-probs.
        let rows = batch.min(head_slice_rows(cfg, len)) as u64;
        let slice_tokens = rows * len as u64;
        let head = vec![
            inputs,
            ("log-probs", tokens * F32),
            ("head slice activations", slice_tokens * 3 * h * F32),
            (
                "head slice logits",
                slice_tokens * 4 * cfg.vocab_size as u64 * F32,
            ),
        ];
        let final_norm = tokens * 3 * h * F32;
        let one_layer = (
            "one layer's activations",
            (activations - final_norm) / layers.max(1),
        );
        vec![
            ("head recomputation", head),
            (
                "layer recomputation",
                [
                    Some(inputs),
                    Some(one_layer),
                    Some(("gradients", weights)),
                    copies(cfg.layer_parameters() as u64),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            ("update", vec![("gradients", weights)]),
        ]
    } else {
        let forward = [
            Some(("activations", activations)),
            Some(logits),
            copies(params),
        ];
        vec![
            ("forward/backward", forward.into_iter().flatten().collect()),
            ("update", vec![("gradients", weights)]),
        ]
    };
    MemoryEstimate { resident, phases }
}

/// What a generation call holds: resident weights; then the KV cache for `batch` rows of
/// `prompt + new_tokens` slots with the prefill's attention weights (before and after the
/// softmax) and one step's logits.
pub fn generation(
    cfg: &ModelConfig,
    batch: usize,
    prompt: usize,
    new_tokens: usize,
    precision: Precision,
) -> MemoryEstimate {
    let slots = (batch * (prompt + new_tokens)) as u64;
    let kv = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim) as u64;
    let compute = precision.bytes() as u64;
    MemoryEstimate {
        resident: vec![("weights", cfg.num_parameters() as u64 * compute)],
        phases: vec![(
            "decoding",
            vec![
                ("kv cache", slots * kv * compute),
                (
                    "prefill attention",
                    2 * (batch * cfg.num_attention_heads * prompt * prompt) as u64 * F32,
                ),
                ("logits", (batch * cfg.vocab_size) as u64 * F32),
            ],
        )],
    }
}

/// Values the backward pass keeps per token for all layers (module docs): those kept in f32
/// whatever the precision (norms, attention weights), and those in the compute format.
fn layer_floats(cfg: &ModelConfig, len: usize) -> (u64, u64) {
    let h = cfg.hidden_size as u64;
    let heads = cfg.num_attention_heads as u64;
    let q = heads * cfg.head_dim as u64;
    let kv = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let grouped = if cfg.num_key_value_heads < cfg.num_attention_heads {
        2 * q
    } else {
        0
    };
    let layers = cfg.num_hidden_layers as u64;
    let always_f32 = 6 * h + 3 * heads * len as u64;
    let compute = (q + 2 * kv) + (2 * q + 2 * kv) + grouped + 2 * q + 5 * i;
    (layers * always_f32 + 3 * h, layers * compute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Architecture;

    #[test]
    fn the_peak_takes_the_larger_phase_and_scales_with_the_batch() {
        let cfg = ModelConfig::synthetic(Architecture::LlamaForCausalLM, 1000, 64, 2, 4, 2, 128);
        let weights = cfg.num_parameters() as u64 * 4;
        let f32 = Precision::F32;
        let one = training(&cfg, 1, 32, false, f32, false);
        let two = training(&cfg, 2, 32, false, f32, false);
        assert_eq!(one.resident(), 3 * weights);
        assert_eq!(
            training(&cfg, 1, 32, true, f32, false).resident(),
            4 * weights
        );
        // Activations and logits dominate here and double with the batch.
        assert!(one.transient() > weights);
        assert_eq!(two.transient(), 2 * one.transient());
        // With a single token the update phase (gradients) is the larger one.
        let tiny = training(&cfg, 1, 1, false, f32, false);
        assert_eq!(tiny.transient(), weights);
        let text = two.to_string();
        assert!(
            text.contains("adamw moments") && text.contains("peak"),
            "{text}"
        );
        let g = generation(&cfg, 8, 16, 16, f32);
        // K and V: 2 layers × 2 KV heads × 16 dims × 2, for 8 rows × 32 slots, in f32.
        assert_eq!(g.phases[0].1[0], ("kv cache", 8 * 32 * 2 * 2 * 2 * 16 * 4));
    }

    #[test]
    fn bf16_halves_what_it_stores_in_bf16_and_nothing_else() {
        let cfg = ModelConfig::synthetic(Architecture::LlamaForCausalLM, 1000, 64, 2, 4, 2, 128);
        let params = cfg.num_parameters() as u64;
        let (f, b) = (Precision::F32, Precision::Bf16);
        // Master weights and moments stay f32; the reference is a bf16 copy.
        assert_eq!(
            training(&cfg, 1, 32, false, b, false).resident(),
            12 * params
        );
        assert_eq!(
            training(&cfg, 1, 32, true, b, false).resident(),
            14 * params
        );
        let part = |e: &MemoryEstimate, name: &str| {
            e.phases[0]
                .1
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        };
        let (t32, t16) = (
            training(&cfg, 2, 32, false, f, false),
            training(&cfg, 2, 32, false, b, false),
        );
        assert_eq!(part(&t16, "logits"), part(&t32, "logits"));
        let (a32, a16) = (part(&t32, "activations"), part(&t16, "activations"));
        assert!(a16 < a32 && a16 > a32.map(|a| a / 2), "{a16:?} vs {a32:?}");
        assert_eq!(part(&t16, "weight copies"), Some(2 * params));
        assert_eq!(part(&t32, "weight copies"), None);
        let (g32, g16) = (
            generation(&cfg, 8, 16, 16, f),
            generation(&cfg, 8, 16, 16, b),
        );
        assert_eq!(2 * g16.resident(), g32.resident());
        assert_eq!(2 * g16.phases[0].1[0].1, g32.phases[0].1[0].1);
    }

    #[test]
    fn checkpointing_keeps_layer_inputs_instead_of_activations() {
        // Qwen2.5-0.5B's shape at the batch: the layers' activations dominate.
        let cfg =
            ModelConfig::synthetic(Architecture::Qwen2ForCausalLM, 151936, 896, 24, 14, 2, 4864);
        for p in [Precision::F32, Precision::Bf16] {
            let plain = training(&cfg, 8, 256, false, p, false);
            let ckpt = training(&cfg, 8, 256, false, p, true);
            assert_eq!(plain.resident(), ckpt.resident());
            let inputs = 24 * 8 * 256 * 896 * p.bytes() as u64;
            let phase = |e: &MemoryEstimate, name: &str| {
                e.phases
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, parts)| parts.iter().map(|(_, b)| b).sum::<u64>())
                    .unwrap_or(0)
            };
            // The head's phase: the layer inputs replace the activations, one row's logits
            // (a 256-token row of Qwen's vocabulary is over the slice budget alone) the batch's.
            let head = phase(&ckpt, "head recomputation");
            assert!(head > inputs + 256 * 4 * 151936 * 4, "{p}");
            assert!(head < inputs + 2 * 256 * 4 * 151936 * 4, "{p}");
            assert!(ckpt.peak() < plain.peak(), "{p}: {ckpt} vs {plain}");
            assert!(phase(&ckpt, "layer recomputation") > 0, "{p}");
        }
    }
}
