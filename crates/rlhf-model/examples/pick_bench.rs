//! Cost of choosing the next token for a decoding step at Qwen2's vocabulary size, on the CPU
//! backend: the tensor-op picker (`pick`, what a GPU runs), the host picker (`pick_row`, what
//! the CPU backend runs) and the sort-based host choice generation made before both.
//!
//! `cargo run --release -p rlhf-model --example pick_bench [VOCAB] [STEPS]`

use std::time::Instant;

use burn::tensor::{Distribution, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rlhf_model::generate::{log_softmax_row, pick, pick_row};
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, SamplingParams};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let vocab: usize = args.next().map_or(Ok(151_936), |s| s.parse())?;
    let steps: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let device = Default::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for batch in [8usize, 64] {
        for (name, params) in [
            ("temperature 1", SamplingParams::default()),
            (
                "top_p 0.9",
                SamplingParams {
                    top_p: 0.9,
                    ..Default::default()
                },
            ),
        ] {
            let logits =
                Tensor::<Cpu, 2>::random([batch, vocab], Distribution::Normal(0.0, 3.0), &device);
            let t = Instant::now();
            for _ in 0..steps {
                let u: Vec<f32> = (0..batch).map(|_| rng.random()).collect();
                let u = Tensor::from_data(TensorData::new(u, [batch, 1]), &device);
                let p = pick(logits.clone(), &params, Some(u));
                host_vec(p.logprobs.into_data())?;
            }
            let device_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            let t = Instant::now();
            for _ in 0..steps {
                let host = host_vec(logits.clone().into_data())?;
                for row in host.chunks(vocab) {
                    host_choice(row, params.top_p, rng.random());
                }
            }
            let sort_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            let t = Instant::now();
            for _ in 0..steps {
                let host = host_vec(logits.clone().into_data())?;
                for row in host.chunks(vocab) {
                    pick_row(row, &params, rng.random());
                }
            }
            let host_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            println!(
                "vocab {vocab}, batch {batch}, {name}: tensor ops {device_ms:.1} ms/step, \
                 host pick_row {host_ms:.1} ms/step, old sort-based host choice {sort_ms:.1} ms/step"
            );
        }
    }
    Ok(())
}

/// The host-side choice generation made before `pick`/`pick_row`: f64 log-softmax, sort, walk the prefix.
fn host_choice(row: &[f32], top_p: f32, u: f64) -> usize {
    let lp = log_softmax_row(row);
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    let mut keep = order.len();
    let mut cum = 0.0;
    for (n, &i) in order.iter().enumerate() {
        cum += lp[i].exp();
        if cum >= top_p as f64 {
            keep = n + 1;
            break;
        }
    }
    let z: f64 = order[..keep].iter().map(|&i| lp[i].exp()).sum();
    let mut acc = 0.0;
    for &i in &order[..keep] {
        acc += lp[i].exp();
        if u * z < acc {
            return i;
        }
    }
    order[keep - 1]
}
