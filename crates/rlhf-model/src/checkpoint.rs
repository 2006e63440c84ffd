//! Gradient checkpointing for training steps: a forward that keeps only each decoder layer's
//! input (and, for token log-probs, no logits), and a backward pass that recomputes one layer,
//! or one slice of the output head, at a time.
//!
//! burn 0.21 has no way to recompute a sub-graph inside its backward pass (its
//! `BalancedCheckpointing` recomputes element-wise operations only, and a backward step cannot
//! run a nested backward: the outer graph's lock is held). So the pass is split into segments,
//! each with a backward of its own:
//!
//! 1. The forward runs the embeddings and the layers without an autodiff graph (on the inner
//!    backend), keeping each layer's input `x_i`. [`Transformer::hidden_checkpointed`] returns
//!    the final hidden states `norm(x_L)` computed from a fresh leaf `x_L`: the head, the loss
//!    and whatever the caller builds on them are an ordinary graph.
//!    [`Transformer::token_logprobs_checkpointed`] goes further: it computes the token log-probs
//!    without a graph too, a few rows at a time, and returns them as a leaf, so the logits
//!    (4 floats per vocabulary entry and token in the backward pass) are never all held.
//! 2. The caller's `loss.backward()` then yields the gradients of what the graph covers and of
//!    the leaf. [`Checkpoints::gradients`] takes them and walks down: the head recomputed slice by
//!    slice of rows (when the log-probs are the leaf), then layer `i` recomputed from a leaf
//!    `x_i`; the backward of `sum(f(x) · g)` (whose gradient with respect to `f(x)` is exactly
//!    `g`) gives the segment's parameter gradients and the gradient of its input; the
//!    embeddings last.
//!
//! Memory: the layer inputs (`layers × batch × len × hidden` in the compute format) and one
//! segment's activations at a time; compute: one more forward pass. The gradients are those of
//! the ordinary backward pass up to rounding (tests/checkpoint.rs): the same bits for the
//! layers on the CPU; the head's may differ in the last bits (the gradient entering the
//! recomputed log-probs is a fresh tensor, and the CPU backend's reductions can order sums by
//! memory layout; several slices also sum the head's weight gradient in parts).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::batch::{SlotState, TokenBatch};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{Transformer, gather_logprobs};

/// Bytes the output head's slices of rows may take in the backward pass (logits, their shifted
/// copy, exponentials and log-softmax: 4 floats per vocabulary entry and token).
pub const HEAD_SLICE_BYTES: u64 = 256 << 20;

/// Rows (sequences of `len` tokens) per slice of the output head under [`HEAD_SLICE_BYTES`];
/// at least one.
pub fn head_slice_rows(config: &ModelConfig, len: usize) -> usize {
    let per_row = 16 * (len as u64) * config.vocab_size as u64;
    (HEAD_SLICE_BYTES / per_row.max(1)).max(1) as usize
}

/// What a checkpointed forward keeps for its backward pass (see the module docs).
#[derive(Debug)]
pub struct Checkpoints<B: AutodiffBackend> {
    batch: TokenBatch,
    /// The input of each layer (the first is the embeddings), without a graph.
    inputs: Vec<Tensor<B::InnerBackend, 3>>,
    /// Where the caller's graph starts.
    leaf: Leaf<B>,
}

/// The leaf a checkpointed forward hands to the caller's graph.
#[derive(Debug)]
enum Leaf<B: AutodiffBackend> {
    /// [`Transformer::hidden_checkpointed`]: the last layer's output; the head is the caller's.
    Top(Tensor<B, 3>),
    /// [`Transformer::token_logprobs_checkpointed`]: the log-probs (and with
    /// [`Transformer::token_logprobs_entropy_checkpointed`] the entropies), the last layer's
    /// output the head is recomputed from, and the rows per head slice.
    Logprobs {
        logprobs: Tensor<B, 2>,
        entropy: Option<Tensor<B, 2>>,
        top: Tensor<B::InnerBackend, 3>,
        slice_rows: usize,
    },
}

impl<B: AutodiffBackend> Transformer<B> {
    /// Final hidden states for a training step: [`Self::hidden`], or with `checkpointing`
    /// [`Self::hidden_checkpointed`]; for losses that need the logits or a score head. Pass the
    /// checkpoints to [`Self::param_gradients`].
    pub fn hidden_for_training(
        &self,
        batch: &TokenBatch,
        checkpointing: bool,
    ) -> Result<(Tensor<B, 3>, Option<Checkpoints<B>>)> {
        if checkpointing {
            let (hidden, checkpoints) = self.hidden_checkpointed(batch)?;
            Ok((hidden, Some(checkpoints)))
        } else {
            Ok((self.hidden(batch)?, None))
        }
    }

    /// Token log-probs for a training step: [`Self::token_logprobs`], or with `checkpointing`
    /// [`Self::token_logprobs_checkpointed`] in head slices of [`head_slice_rows`]. Pass the
    /// checkpoints to [`Self::param_gradients`].
    pub fn token_logprobs_for_training(
        &self,
        batch: &TokenBatch,
        checkpointing: bool,
    ) -> Result<(Tensor<B, 2>, Option<Checkpoints<B>>)> {
        if checkpointing {
            let rows = head_slice_rows(&self.config, batch.len);
            let (lp, checkpoints) = self.token_logprobs_checkpointed(batch, rows)?;
            Ok((lp, Some(checkpoints)))
        } else {
            Ok((self.token_logprobs(batch)?, None))
        }
    }

    /// This model's parameter gradients out of a loss's backward pass `grads` (taken out of
    /// it); with the checkpoints of this model's training forward, the checkpointed segments are
    /// recomputed ([`Checkpoints::gradients`]).
    pub fn param_gradients(
        &self,
        checkpoints: Option<Checkpoints<B>>,
        grads: &mut B::Gradients,
    ) -> Result<GradientsParams> {
        match checkpoints {
            Some(c) => c.gradients(self, grads),
            None => Ok(GradientsParams::from_module(grads, self)),
        }
    }

    /// Final hidden states `[batch, len, hidden]` of a padded batch, as [`Self::hidden`], for a
    /// training step with layer-level gradient checkpointing: the returned tensor's graph covers
    /// only the final norm; pass the loss's gradients to [`Checkpoints::gradients`] for the
    /// parameters' gradients.
    pub fn hidden_checkpointed(
        &self,
        batch: &TokenBatch,
    ) -> Result<(Tensor<B, 3>, Checkpoints<B>)> {
        let (top, inputs) = self.layers_without_graph(&self.valid(), batch)?;
        let top = Tensor::<B, 3>::from_inner(top).require_grad();
        let hidden = self.norm.forward(top.clone(), self.precision);
        Ok((
            hidden,
            Checkpoints {
                batch: batch.clone(),
                inputs,
                leaf: Leaf::Top(top),
            },
        ))
    }

    /// Token log-probs `[batch, len - 1]` of a padded batch, as [`Self::token_logprobs`], for a
    /// training step with gradient checkpointing of the layers and of the output head: the
    /// returned tensor is a leaf computed `slice_rows` rows at a time (see [`head_slice_rows`]);
    /// pass the loss's gradients to [`Checkpoints::gradients`].
    pub fn token_logprobs_checkpointed(
        &self,
        batch: &TokenBatch,
        slice_rows: usize,
    ) -> Result<(Tensor<B, 2>, Checkpoints<B>)> {
        let (logprobs, _, checkpoints) = self.head_checkpointed(batch, slice_rows, false)?;
        Ok((logprobs, checkpoints))
    }

    /// [`Self::token_logprobs_checkpointed`] and the entropy of each position's next-token
    /// distribution (`[batch, len - 1]`, as [`token_entropy`]), both computed a head slice at a
    /// time, so that an entropy bonus does not keep the whole batch's logits either.
    pub fn token_logprobs_entropy_checkpointed(
        &self,
        batch: &TokenBatch,
        slice_rows: usize,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>, Checkpoints<B>)> {
        let (logprobs, entropy, checkpoints) = self.head_checkpointed(batch, slice_rows, true)?;
        let entropy = entropy.ok_or_else(|| {
            ModelError::Input("gradient checkpointing: no entropy was computed".into())
        })?;
        Ok((logprobs, entropy, checkpoints))
    }

    /// Token log-probs and entropies for a training step: ordinary, or with `checkpointing`
    /// [`Self::token_logprobs_entropy_checkpointed`] in head slices of [`head_slice_rows`].
    #[allow(clippy::type_complexity)]
    pub fn token_logprobs_entropy_for_training(
        &self,
        batch: &TokenBatch,
        checkpointing: bool,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>, Option<Checkpoints<B>>)> {
        if checkpointing {
            let rows = head_slice_rows(&self.config, batch.len);
            let (lp, entropy, checkpoints) =
                self.token_logprobs_entropy_checkpointed(batch, rows)?;
            return Ok((lp, entropy, Some(checkpoints)));
        }
        let logits = self.logits(self.hidden(batch)?)?;
        let entropy = token_entropy(logits.clone());
        Ok((gather_logprobs(logits, batch), entropy, None))
    }

    /// The checkpointed head: log-probs, and entropies when asked, as leaves.
    #[allow(clippy::type_complexity)]
    fn head_checkpointed(
        &self,
        batch: &TokenBatch,
        slice_rows: usize,
        with_entropy: bool,
    ) -> Result<(Tensor<B, 2>, Option<Tensor<B, 2>>, Checkpoints<B>)> {
        if batch.len < 2 {
            return Err(ModelError::Input(
                "log-probs need sequences of at least two tokens".into(),
            ));
        }
        let inner = self.valid();
        let (top, inputs) = self.layers_without_graph(&inner, batch)?;
        let slice_rows = slice_rows.max(1);
        let mut parts = Vec::with_capacity(batch.batch.div_ceil(slice_rows));
        let mut entropies = Vec::with_capacity(batch.batch.div_ceil(slice_rows));
        for (rows, sub) in row_slices(batch, slice_rows) {
            let x = slice_rows_of(top.clone(), rows);
            let hidden = inner.norm.forward(x, self.precision);
            let logits = inner.logits(hidden)?;
            if with_entropy {
                entropies.push(token_entropy(logits.clone()));
            }
            parts.push(gather_logprobs(logits, &sub));
        }
        let logprobs = Tensor::<B, 2>::from_inner(Tensor::cat(parts, 0)).require_grad();
        let entropy = with_entropy
            .then(|| Tensor::<B, 2>::from_inner(Tensor::cat(entropies, 0)).require_grad());
        Ok((
            logprobs.clone(),
            entropy.clone(),
            Checkpoints {
                batch: batch.clone(),
                inputs,
                leaf: Leaf::Logprobs {
                    logprobs,
                    entropy,
                    top,
                    slice_rows,
                },
            },
        ))
    }

    /// Embeddings and layers of `inner` (this model without a graph): the last layer's output
    /// and each layer's input.
    #[allow(clippy::type_complexity)]
    fn layers_without_graph(
        &self,
        inner: &Transformer<B::InnerBackend>,
        batch: &TokenBatch,
    ) -> Result<(Tensor<B::InnerBackend, 3>, Vec<Tensor<B::InnerBackend, 3>>)> {
        batch.check_vocab(self.config.vocab_size)?;
        let layer_inputs =
            inner.layer_inputs(batch, &mut SlotState::new(batch.batch, batch.len))?;
        let mut x = inner.embed(batch, None);
        let mut inputs = Vec::with_capacity(inner.layers.len());
        for (layer, mask) in inner.layers.iter().zip(&layer_inputs.masks) {
            inputs.push(x.clone());
            x = layer.forward(x, &layer_inputs.rope, mask.clone(), None, self.precision);
        }
        Ok((x, inputs))
    }
}

/// The batch's rows in slices of `n`: each slice's row range and its own [`TokenBatch`].
fn row_slices(
    batch: &TokenBatch,
    n: usize,
) -> impl Iterator<Item = (std::ops::Range<usize>, TokenBatch)> + '_ {
    (0..batch.batch).step_by(n.max(1)).map(move |start| {
        let end = (start + n.max(1)).min(batch.batch);
        let cells = start * batch.len..end * batch.len;
        let sub = TokenBatch {
            batch: end - start,
            len: batch.len,
            ids: batch.ids[cells.clone()].to_vec(),
            mask: batch.mask[cells].to_vec(),
        };
        (start..end, sub)
    })
}

/// Rows `rows` (first axis) of a tensor.
fn slice_rows_of<B: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<B, D>,
    rows: std::ops::Range<usize>,
) -> Tensor<B, D> {
    t.narrow(0, rows.start, rows.len())
}

impl<B: AutodiffBackend> Checkpoints<B> {
    /// The gradients of `model`'s parameters (the model whose checkpointed forward made these
    /// checkpoints): those the loss's backward pass `grads` holds for it (they are taken out of
    /// `grads`), plus the head's (when the log-probs were the leaf), every layer's and the
    /// embeddings', each segment recomputed in turn.
    pub fn gradients(
        self,
        model: &Transformer<B>,
        grads: &mut B::Gradients,
    ) -> Result<GradientsParams> {
        let mut sum = GradientsAccumulator::<Transformer<B>>::new();
        let p = model.precision;
        let mut g = match &self.leaf {
            Leaf::Logprobs {
                logprobs,
                entropy,
                top,
                slice_rows,
            } => {
                let g_lp = logprobs.grad_remove(grads);
                let g_ent = entropy.as_ref().and_then(|e| e.grad_remove(grads));
                if g_lp.is_none() && g_ent.is_none() {
                    // The loss does not depend on the head's outputs.
                    return Ok(GradientsParams::from_module(grads, model));
                }
                sum.accumulate(model, GradientsParams::from_module(grads, model));
                let mut g_top = Vec::with_capacity(self.batch.batch.div_ceil(*slice_rows));
                for (rows, sub) in row_slices(&self.batch, *slice_rows) {
                    let x = slice_rows_of(top.clone(), rows.clone());
                    let x = Tensor::<B, 3>::from_inner(x).require_grad();
                    let hidden = model.norm.forward(x.clone(), p);
                    let logits = model.logits(hidden)?;
                    let grad_of = |g: &Option<Tensor<B::InnerBackend, 2>>| {
                        g.as_ref().map(|g| {
                            Tensor::<B, 2>::from_inner(slice_rows_of(g.clone(), rows.clone()))
                        })
                    };
                    let mut slice_loss = None;
                    if let Some(g) = grad_of(&g_ent) {
                        slice_loss = Some((token_entropy(logits.clone()) * g).sum());
                    }
                    if let Some(g) = grad_of(&g_lp) {
                        let lp = (gather_logprobs(logits, &sub) * g).sum();
                        slice_loss = Some(match slice_loss {
                            Some(l) => l + lp,
                            None => lp,
                        });
                    }
                    let slice_loss = slice_loss.ok_or_else(|| {
                        ModelError::Input("gradient checkpointing: no head gradient".into())
                    })?;
                    let mut slice_grads = slice_loss.backward();
                    g_top.push(input_grad(&x, &mut slice_grads, "the output head")?);
                    sum.accumulate(model, GradientsParams::from_grads(slice_grads, model));
                }
                Tensor::cat(g_top, 0)
            }
            Leaf::Top(top) => {
                let Some(g) = top.grad_remove(grads) else {
                    // The loss does not depend on the layers: the head's gradients are all.
                    return Ok(GradientsParams::from_module(grads, model));
                };
                sum.accumulate(model, GradientsParams::from_module(grads, model));
                g
            }
        };
        let layer_inputs = model.layer_inputs(
            &self.batch,
            &mut SlotState::new(self.batch.batch, self.batch.len),
        )?;
        let layers = model
            .layers
            .iter()
            .zip(&layer_inputs.masks)
            .zip(self.inputs);
        for (i, ((layer, mask), input)) in layers.enumerate().rev() {
            let x = Tensor::<B, 3>::from_inner(input).require_grad();
            let out = layer.forward(x.clone(), &layer_inputs.rope, mask.clone(), None, p);
            let mut layer_grads = (out * Tensor::from_inner(g)).sum().backward();
            g = input_grad(&x, &mut layer_grads, &format!("layer {i}"))?;
            sum.accumulate(model, GradientsParams::from_grads(layer_grads, model));
        }
        let embedded = model.embed(&self.batch, None);
        let embed_grads = (embedded * Tensor::from_inner(g)).sum().backward();
        sum.accumulate(model, GradientsParams::from_grads(embed_grads, model));
        Ok(sum.grads())
    }
}

/// The entropy of each position's next-token distribution but the last, `[batch, len - 1]`
/// from logits `[batch, len, vocab]`: `−Σ_v p log p` (the positions [`gather_logprobs`] scores).
pub fn token_entropy<B: burn::tensor::backend::Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, s, v] = logits.dims();
    let logp = burn::tensor::activation::log_softmax(logits.slice([0..b, 0..s - 1, 0..v]), 2);
    (logp.clone().exp() * logp)
        .sum_dim(2)
        .reshape([b, s - 1])
        .neg()
}

/// The gradient of a recomputed segment's input leaf `x`.
fn input_grad<B: AutodiffBackend>(
    x: &Tensor<B, 3>,
    grads: &mut B::Gradients,
    segment: &str,
) -> Result<Tensor<B::InnerBackend, 3>> {
    x.grad_remove(grads).ok_or_else(|| {
        ModelError::Input(format!(
            "gradient checkpointing: {segment}'s input got no gradient"
        ))
    })
}
