//! Layer-level gradient checkpointing: a training forward that keeps only each decoder layer's
//! input, and a backward pass that recomputes one layer at a time.
//!
//! burn 0.21 has no way to recompute a sub-graph inside its backward pass (its
//! `BalancedCheckpointing` recomputes element-wise operations only, and a backward step cannot
//! run a nested backward: the outer graph's lock is held). So the pass is split into segments,
//! each with a backward of its own:
//!
//! 1. [`Transformer::hidden_checkpointed`] runs the embeddings and the layers without an autodiff
//!    graph (on the inner backend), keeping each layer's input `x_i`, and returns the final
//!    hidden states `norm(x_L)` computed from a fresh leaf `x_L`: the head, the loss and whatever
//!    the caller builds on them are an ordinary graph.
//! 2. The caller's `loss.backward()` then yields the gradients of the head's parameters and of
//!    `x_L`. [`Checkpoints::gradients`] takes them and walks the layers down: layer `i` is
//!    recomputed from a leaf `x_i`, and the backward of `sum(layer_i(x_i) · g_{i+1})` (whose
//!    gradient with respect to the layer's output is exactly `g_{i+1}`) gives the layer's
//!    parameter gradients and `g_i`; the embeddings last.
//!
//! Memory: the layer inputs (`layers × batch × len × hidden` in the compute format) and one
//! layer's activations at a time, instead of every layer's; compute: one more forward pass of
//! the layers. The gradients are those of the ordinary backward pass up to the order of float
//! additions (tests/checkpoint.rs).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use crate::batch::{SlotState, TokenBatch};
use crate::error::{ModelError, Result};
use crate::model::Transformer;

/// What a checkpointed forward keeps for its backward pass (see the module docs).
#[derive(Debug)]
pub struct Checkpoints<B: AutodiffBackend> {
    batch: TokenBatch,
    /// The input of each layer (the first is the embeddings), without a graph.
    inputs: Vec<Tensor<B::InnerBackend, 3>>,
    /// The last layer's output as a leaf: the head's graph starts here.
    top: Tensor<B, 3>,
}

impl<B: AutodiffBackend> Transformer<B> {
    /// Final hidden states `[batch, len, hidden]` of a padded batch, as [`Self::hidden`], for a
    /// training step with layer-level gradient checkpointing: the returned tensor's graph covers
    /// only the final norm; pass the loss's gradients to [`Checkpoints::gradients`] for the
    /// parameters' gradients.
    pub fn hidden_checkpointed(
        &self,
        batch: &TokenBatch,
    ) -> Result<(Tensor<B, 3>, Checkpoints<B>)> {
        batch.check_vocab(self.config.vocab_size)?;
        let inner = self.valid();
        let layer_inputs =
            inner.layer_inputs(batch, &mut SlotState::new(batch.batch, batch.len))?;
        let mut x = inner.embed(batch, None);
        let mut inputs = Vec::with_capacity(inner.layers.len());
        for (layer, mask) in inner.layers.iter().zip(&layer_inputs.masks) {
            inputs.push(x.clone());
            x = layer.forward(x, &layer_inputs.rope, mask.clone(), None, self.precision);
        }
        let top = Tensor::<B, 3>::from_inner(x).require_grad();
        let hidden = self.norm.forward(top.clone(), self.precision);
        Ok((
            hidden,
            Checkpoints {
                batch: batch.clone(),
                inputs,
                top,
            },
        ))
    }
}

impl<B: AutodiffBackend> Checkpoints<B> {
    /// The gradients of `model`'s parameters (the model whose [`Transformer::hidden_checkpointed`]
    /// made these checkpoints): those the loss's backward pass `grads` holds (the final norm and
    /// the head; they are taken out of `grads`), plus every layer's and the embeddings', each
    /// layer recomputed in turn.
    pub fn gradients(
        self,
        model: &Transformer<B>,
        grads: &mut B::Gradients,
    ) -> Result<GradientsParams> {
        let mut sum = GradientsAccumulator::<Transformer<B>>::new();
        let Some(mut g) = self.top.grad_remove(grads) else {
            // The loss does not depend on the layers: the head's gradients are all there is.
            return Ok(GradientsParams::from_module(grads, model));
        };
        sum.accumulate(model, GradientsParams::from_module(grads, model));
        let p = model.precision;
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
            g = x.grad_remove(&mut layer_grads).ok_or_else(|| {
                ModelError::Input(format!(
                    "gradient checkpointing: layer {i}'s input got no gradient"
                ))
            })?;
            sum.accumulate(model, GradientsParams::from_grads(layer_grads, model));
        }
        let embedded = model.embed(&self.batch, None);
        let embed_grads = (embedded * Tensor::from_inner(g)).sum().backward();
        sum.accumulate(model, GradientsParams::from_grads(embed_grads, model));
        Ok(sum.grads())
    }
}
