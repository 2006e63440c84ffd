//! The bf16 compute path (`Precision::Bf16`), on burn's flex CPU backend: the only CPU backend
//! of burn 0.21 with bf16 tensors (its bf16 matmul accumulates in f32 and rounds the result, as
//! GPU tensor cores do). The CPU backend the product uses (ndarray) has none and refuses.
//!
//! What must hold: bf16 log-probs stay close to transformers' f32 ones on the fixtures; a
//! bf16-stored copy computes exactly what cast-at-use computes; the sampler's log-probs agree
//! with teacher-forced ones in bf16 too; training in bf16 keeps f32 master weights and
//! gradients that point where the f32 gradients point.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use burn_flex::Flex;
use rlhf_model::load::host_vec;
use rlhf_model::{
    Cpu, Precision, SamplingParams, TokenBatch, Transformer, masked_sum, target_mask,
};

mod common;
use common::{Reference, fixtures, max_abs_diff};

fn fixture(name: &str) -> PathBuf {
    fixtures().join("hf-tiny").join(name)
}

const CAUSAL: [&str; 2] = ["tiny-llama3", "tiny-qwen2"];

/// transformers' (f32) token log-probs of the fixture's reference batch.
fn reference(dir: &Path) -> anyhow::Result<(TokenBatch, Vec<f32>)> {
    let r = Reference::load(dir)?;
    let (shape, ids) = r.i64("input_ids")?;
    let ids = ids.into_iter().map(|x| x as u32).collect();
    let (_, lp) = r.f32("token_logprobs")?;
    Ok((TokenBatch::unpadded(ids, shape[0], shape[1])?, lp))
}

/// The size of the f32 weight-sync payload of the same weights.
fn model_f32_bytes(m: &Transformer<Flex>) -> anyhow::Result<usize> {
    Ok(m.clone()
        .with_precision(Precision::F32)?
        .to_safetensors_bytes()?
        .len())
}

#[test]
fn the_cpu_backend_refuses_bf16_naming_it() -> anyhow::Result<()> {
    let model = Transformer::<Cpu>::load(&fixture("tiny-qwen2"), &Default::default())?;
    let err = model
        .with_precision(Precision::Bf16)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("bf16"), "{err}");
    assert_eq!("bf16".parse(), Ok(Precision::Bf16));
    assert_eq!("f32".parse(), Ok(Precision::F32));
    assert!("fp8".parse::<Precision>().is_err());
    Ok(())
}

#[test]
fn bf16_logprobs_stay_close_to_transformers_f32() -> anyhow::Result<()> {
    let device = Default::default();
    for name in CAUSAL {
        let dir = fixture(name);
        let (batch, want) = reference(&dir)?;
        let f32_model = Transformer::<Flex>::load(&dir, &device)?;
        let f32_lp = host_vec(f32_model.token_logprobs(&batch)?.into_data())?;
        let bf16_model = f32_model.with_precision(Precision::Bf16)?;
        let out = bf16_model.token_logprobs(&batch)?;
        assert_eq!(out.dtype(), DType::F32, "log-probs leave the model in f32");
        let bf16_lp = host_vec(out.into_data())?;
        let d32 = max_abs_diff(&f32_lp, &want);
        let d16 = max_abs_diff(&bf16_lp, &want);
        let mean16 = bf16_lp
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / want.len() as f32;
        eprintln!("{name}: max |Δ log-prob| f32 {d32:e}, bf16 {d16:e} (mean {mean16:e})");
        assert!(
            d32 < 1e-4,
            "{name}: flex f32 differs from transformers by {d32}"
        );
        // bf16 keeps 8 bits of mantissa: a real difference, but a small one (measured 1.9e-3
        // and 2.2e-3 at most, 7e-4 and 8e-4 on average).
        assert!(d16 > d32, "{name}: the bf16 path computed in f32");
        assert!(
            d16 < 0.02 && mean16 < 5e-3,
            "{name}: bf16 drifts by {d16} (mean {mean16})"
        );
    }
    Ok(())
}

#[test]
fn a_bf16_stored_copy_computes_what_cast_at_use_computes() -> anyhow::Result<()> {
    let device = Default::default();
    for name in CAUSAL {
        let dir = fixture(name);
        let (batch, _) = reference(&dir)?;
        let model = Transformer::<Flex>::load(&dir, &device)?;
        assert!(model.weight_dtypes().iter().all(|d| *d == DType::F32));
        let at_use = model.clone().with_precision(Precision::Bf16)?;
        let stored = model.cast_weights(Precision::Bf16)?;
        let dtypes = stored.weight_dtypes();
        assert!(
            !dtypes.is_empty() && dtypes.iter().all(|d| *d == DType::BF16),
            "{dtypes:?}"
        );
        let a = host_vec(at_use.forward_logits(&batch)?.into_data())?;
        let b = host_vec(stored.forward_logits(&batch)?.into_data())?;
        assert_eq!(a, b, "{name}: stored and cast-at-use bf16 differ");
        // The weight-sync payload of a bf16 model is bf16 (about half the f32 payload), each
        // weight rounded to nearest even; a worker loads it (into f32) and casts back to bf16
        // without changing a bit.
        let payload = at_use.to_safetensors_bytes()?;
        let f32_payload = model_f32_bytes(&at_use)?;
        assert!(payload.len() * 2 < f32_payload + 4096 && payload.len() * 2 > f32_payload - 4096);
        let back = Transformer::<Flex>::from_safetensors_bytes(
            stored.config.clone(),
            &payload,
            Path::new("<bf16 payload>"),
            &device,
        )?;
        assert!(back.weight_dtypes().iter().all(|d| *d == DType::F32));
        let worker = back.cast_weights(Precision::Bf16)?;
        let (sent, got) = (at_use.to_hf_tensors()?, worker.to_hf_tensors()?);
        assert_eq!(sent.len(), got.len());
        for ((tensor, w), (_, g)) in sent.iter().zip(&got) {
            let rne: Vec<f32> = w
                .data
                .iter()
                .map(|x| half::bf16::from_f32(*x).to_f32())
                .collect();
            assert!(
                rne == g.data,
                "{name}: `{tensor}` is not the nearest-even bf16 of the f32 weights"
            );
        }
        // (flex's own f32 -> bf16 cast goes through f64 and half's `from_f64`, which drops the
        // f32's last 3 mantissa bits before rounding: near ties it may round down where
        // nearest-even rounds up, so the worker's logits need not equal `stored`'s bit for bit
        // here. CUDA's cast rounds to nearest even.)
        let c = host_vec(worker.forward_logits(&batch)?.into_data())?;
        assert!(
            max_abs_diff(&a, &c) < 1e-2,
            "{name}: payload weights compute differently"
        );
    }
    Ok(())
}

#[test]
fn bf16_sampler_logprobs_agree_with_teacher_forced_logprobs() -> anyhow::Result<()> {
    let device = Default::default();
    for name in CAUSAL {
        let model =
            Transformer::<Flex>::load(&fixture(name), &device)?.cast_weights(Precision::Bf16)?;
        let prompts = vec![vec![5, 9, 33, 41, 7], vec![100, 3], vec![12, 13, 14]];
        let params = SamplingParams {
            max_new_tokens: 12,
            temperature: 1.0,
            ..Default::default()
        };
        let outs = model.generate_seeded(&prompts, &params, &[1, 2, 3])?;
        let mut worst = 0f32;
        for (prompt, out) in prompts.iter().zip(&outs) {
            let ids: Vec<u32> = prompt.iter().chain(&out.completion_ids).copied().collect();
            let n = ids.len();
            let batch = TokenBatch::unpadded(ids, 1, n)?;
            let lp = host_vec(model.token_logprobs(&batch)?.into_data())?;
            let tail = &lp[prompt.len() - 1..];
            assert_eq!(tail.len(), out.logprobs.len());
            worst = worst.max(max_abs_diff(tail, &out.logprobs));
        }
        eprintln!("{name}: bf16 cached vs teacher-forced max |Δ log-prob| {worst:e}");
        // Same weights and format; only the matmul shapes (cached rows vs whole sequences)
        // differ, which flex's f32-accumulating bf16 matmul does not notice (measured 0).
        assert!(
            worst < 1e-3,
            "{name}: sampler and teacher-forced bf16 log-probs differ by {worst}"
        );
    }
    Ok(())
}

type Train = Autodiff<Flex>;

/// Sequence log-likelihood loss of the reference batch, and its gradient.
fn nll_grads(
    model: &Transformer<Train>,
    batch: &TokenBatch,
) -> anyhow::Result<(f32, <Train as AutodiffBackend>::Gradients)> {
    let lp = model.token_logprobs(batch)?;
    let [b, t] = lp.dims();
    let mask = Tensor::<Train, 2>::from_data(
        burn::tensor::TensorData::new(target_mask(batch), [b, t]),
        &model.device(),
    );
    let loss = masked_sum(lp, mask).mean().neg();
    let value = host_vec(loss.clone().into_data())?[0];
    Ok((value, loss.backward()))
}

#[test]
fn bf16_training_keeps_f32_master_weights_and_f32_gradients() -> anyhow::Result<()> {
    let device = Default::default();
    let dir = fixture("tiny-qwen2");
    let (batch, _) = reference(&dir)?;
    let model = Transformer::<Train>::load(&dir, &device)?;
    let (loss32, g32) = nll_grads(&model, &batch)?;
    let bf16 = model.with_precision(Precision::Bf16)?;
    let (loss16, g16) = nll_grads(&bf16, &batch)?;
    eprintln!("loss f32 {loss32} bf16 {loss16}");
    assert!((loss32 - loss16).abs() < 0.05 * loss32.abs().max(1.0));

    // Gradients reach the f32 master weights in f32 and point where the f32 gradients point.
    for (what, p) in [
        ("embed_tokens", &bf16.embed_tokens.weight),
        (
            "layers.0.mlp.down_proj",
            &bf16.layers[0].mlp.down_proj.weight,
        ),
    ] {
        let a = p
            .grad(&g32)
            .ok_or_else(|| anyhow::anyhow!("{what}: no f32 grad"))?;
        let b = p
            .grad(&g16)
            .ok_or_else(|| anyhow::anyhow!("{what}: no bf16 grad"))?;
        assert_eq!(b.dtype(), DType::F32, "{what}: gradient dtype");
        let (a, b) = (host_vec(a.into_data())?, host_vec(b.into_data())?);
        let dot: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        eprintln!("{what}: cosine(f32 grad, bf16 grad) = {cos:.5}");
        assert!(
            cos > 0.99,
            "{what}: bf16 gradient points elsewhere (cosine {cos})"
        );
    }

    // A few AdamW steps: weights stay f32, the loss goes down.
    let mut optim = AdamWConfig::new().init::<Train, Transformer<Train>>();
    let mut model = bf16;
    let mut losses = vec![];
    for _ in 0..4 {
        let (loss, grads) = nll_grads(&model, &batch)?;
        losses.push(loss);
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-3, model, grads);
        assert!(model.weight_dtypes().iter().all(|d| *d == DType::F32));
        assert_eq!(model.precision, Precision::Bf16);
    }
    eprintln!("bf16 training losses {losses:?}");
    assert!(losses[3] < losses[0], "{losses:?}");
    Ok(())
}
