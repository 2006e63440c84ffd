//! Benchmark (not a test): loss + backward time of the objectives on `Autodiff<NdArray<f32>>`
//! for a batch of 64 pairs / lists / samples and 64 × 128 tokens.
//!
//! ```text
//! cargo run --release -p rlhf-algo --example algo_bench [iterations]
//! ```
//!
//! Prints a Markdown table (median and mean per iteration over `iterations`, default 200, after
//! 10 warm-up iterations). Inputs are fixed pseudo-random values; every iteration rebuilds the
//! leaf tensors (as a learner would receive fresh log-probs) and runs the backward pass.

use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use rlhf_algo::binary::{BinaryBatch, KtoConfig, kto_loss};
use rlhf_algo::listwise::{LipoConfig, ListBatch, ProConfig, lipo_lambda_loss, pro_loss};
use rlhf_algo::pairwise::{DpoConfig, PairBatch, SimpoConfig, dpo_loss, simpo_loss};
use rlhf_algo::policy::{
    GroupBatch, GrpoConfig, PpoConfig, RolloutBatch, TokenBatch, ValueBatch, grpo_loss, ppo_loss,
};

type B = Autodiff<NdArray<f32>>;

const PAIRS: usize = 64;
const LIST: usize = 4;
const T: usize = 128;
const GROUP: usize = 8;
const WARMUP: usize = 10;

/// Deterministic values in `[lo, hi)` (a 64-bit LCG; no extra dependency).
fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

fn tensor<const D: usize>(v: &[f32], dims: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), dims), &Default::default())
}

fn time(
    iterations: usize,
    mut step: impl FnMut() -> rlhf_algo::Result<()>,
) -> rlhf_algo::Result<(Duration, Duration)> {
    for _ in 0..WARMUP {
        step()?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        step()?;
        samples.push(start.elapsed());
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / iterations as u32;
    Ok((samples[iterations / 2], mean))
}

fn main() -> rlhf_algo::Result<()> {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200)
        .max(1);
    let pc = values(PAIRS, 1, -120.0, -20.0);
    let pr = values(PAIRS, 2, -120.0, -20.0);
    let rc = values(PAIRS, 3, -120.0, -20.0);
    let rr = values(PAIRS, 4, -120.0, -20.0);
    let nc = values(PAIRS, 5, 10.0, 128.0)
        .iter()
        .map(|v| v.round())
        .collect::<Vec<_>>();
    let nr = values(PAIRS, 6, 10.0, 128.0)
        .iter()
        .map(|v| v.round())
        .collect::<Vec<_>>();
    let list_logp = values(PAIRS * LIST, 7, -120.0, -20.0);
    let list_ref = values(PAIRS * LIST, 8, -120.0, -20.0);
    let list_tok = values(PAIRS * LIST, 9, 10.0, 128.0)
        .iter()
        .map(|v| v.round())
        .collect::<Vec<_>>();
    let mut list_scores = values(PAIRS * LIST, 10, 0.0, 1.0);
    for row in list_scores.chunks_mut(LIST) {
        row.sort_by(|a, b| b.total_cmp(a));
    }
    let logp = values(PAIRS * T, 11, -3.0, -0.01);
    let old = values(PAIRS * T, 12, -3.0, -0.01);
    let reference = values(PAIRS * T, 13, -3.0, -0.01);
    let adv = values(PAIRS * T, 14, -1.0, 1.0);
    let vals = values(PAIRS * T, 15, -1.0, 1.0);
    let old_vals = values(PAIRS * T, 16, -1.0, 1.0);
    let returns = values(PAIRS * T, 17, -1.0, 1.0);
    let lengths = values(PAIRS, 18, 16.0, 128.0);
    let mask: Vec<f32> = (0..PAIRS * T)
        .map(|i| f32::from(u8::from(((i % T) as f32) < lengths[i / T])))
        .collect();
    let rewards = values(PAIRS, 19, 0.0, 1.0);
    let desirable: Vec<bool> = (0..PAIRS).map(|i| i % 3 != 0).collect();
    let d2 = [PAIRS, T];
    let tokens = |x: Tensor<B, 2>| {
        TokenBatch::new(x, tensor(&mask, d2))
            .with_old(tensor(&old, d2))
            .with_reference(tensor(&reference, d2))
    };

    let mut rows: Vec<(&str, String, (Duration, Duration))> = Vec::new();
    rows.push((
        "dpo",
        format!("{PAIRS} pairs"),
        time(iterations, || {
            let x = tensor(&pc, [PAIRS]).require_grad();
            let b = PairBatch::new(x, tensor(&pr, [PAIRS]).require_grad())
                .with_reference(tensor(&rc, [PAIRS]), tensor(&rr, [PAIRS]));
            dpo_loss(&b, &DpoConfig::default())?.loss.backward();
            Ok(())
        })?,
    ));
    rows.push((
        "simpo",
        format!("{PAIRS} pairs"),
        time(iterations, || {
            let b = PairBatch::new(
                tensor(&pc, [PAIRS]).require_grad(),
                tensor(&pr, [PAIRS]).require_grad(),
            )
            .with_token_counts(tensor(&nc, [PAIRS]), tensor(&nr, [PAIRS]));
            simpo_loss(&b, &SimpoConfig::default())?.loss.backward();
            Ok(())
        })?,
    ));
    rows.push((
        "kto",
        format!("{PAIRS} samples"),
        time(iterations, || {
            let b = BinaryBatch::new(
                tensor(&pc, [PAIRS]).require_grad(),
                tensor(&rc, [PAIRS]),
                desirable.clone(),
            );
            kto_loss(&b, &KtoConfig::default())?.loss.backward();
            Ok(())
        })?,
    ));
    let lists = |x: Tensor<B, 2>| {
        ListBatch::new(x)
            .with_reference(tensor(&list_ref, [PAIRS, LIST]))
            .with_token_counts(tensor(&list_tok, [PAIRS, LIST]))
            .with_scores(tensor(&list_scores, [PAIRS, LIST]))
    };
    rows.push((
        "pro",
        format!("{PAIRS} lists × {LIST}"),
        time(iterations, || {
            pro_loss(
                &lists(tensor(&list_logp, [PAIRS, LIST]).require_grad()),
                &ProConfig::default(),
            )?
            .loss
            .backward();
            Ok(())
        })?,
    ));
    rows.push((
        "lipo_lambda",
        format!("{PAIRS} lists × {LIST}"),
        time(iterations, || {
            lipo_lambda_loss(
                &lists(tensor(&list_logp, [PAIRS, LIST]).require_grad()),
                &LipoConfig::default(),
            )?
            .loss
            .backward();
            Ok(())
        })?,
    ));
    rows.push((
        "ppo (+ value loss)",
        format!("{PAIRS} × {T} tokens"),
        time(iterations, || {
            let batch = RolloutBatch {
                tokens: tokens(tensor(&logp, d2).require_grad()),
                advantages: tensor(&adv, d2),
                values: Some(ValueBatch {
                    values: tensor(&vals, d2).require_grad(),
                    old_values: tensor(&old_vals, d2),
                    returns: tensor(&returns, d2),
                }),
            };
            ppo_loss(&batch, &PpoConfig::default())?.loss.backward();
            Ok(())
        })?,
    ));
    rows.push((
        "grpo (k3 KL)",
        format!("{PAIRS} × {T} tokens, groups of {GROUP}"),
        time(iterations, || {
            let batch = GroupBatch {
                tokens: tokens(tensor(&logp, d2).require_grad()),
                rewards: rewards.clone(),
                group_size: GROUP,
            };
            grpo_loss(&batch, &GrpoConfig::default())?.loss.backward();
            Ok(())
        })?,
    ));

    println!("| objective | batch | median | mean |");
    println!("|---|---|---|---|");
    for (name, batch, (median, mean)) in rows {
        println!(
            "| {name} | {batch} | {:.1} µs | {:.1} µs |",
            median.as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6
        );
    }
    println!(
        "\n{iterations} iterations after {WARMUP} warm-up, loss + backward, Autodiff<NdArray<f32>>"
    );
    Ok(())
}
