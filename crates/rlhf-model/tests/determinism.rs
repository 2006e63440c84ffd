//! The same inputs give bit-identical outputs (synchronous runs must be reproducible).

use std::path::Path;

use rlhf_model::generate::DecodeSchedule;
use rlhf_model::load::host_vec;
use rlhf_model::{Cpu, FinishReason, PaddingSide, SamplingParams, TokenBatch, Transformer};

#[test]
fn forward_and_generation_are_bitwise_deterministic() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2");
    let model = Transformer::<Cpu>::load(&dir, &Default::default())?;
    let seqs = vec![
        vec![38, 75, 259, 308, 346],
        vec![1, 427, 265, 201, 52, 270, 77],
    ];
    let batch = TokenBatch::pad(&seqs, 0, PaddingSide::Left)?;
    let a = host_vec(model.forward_logits(&batch)?.into_data())?;
    for _ in 0..5 {
        let b = host_vec(model.forward_logits(&batch)?.into_data())?;
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "forward differs"
        );
    }
    let p = SamplingParams {
        max_new_tokens: 6,
        seed: 11,
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| seqs[i % 2].clone()).collect();
    let g = model.generate(&prompts, &p)?;
    for _ in 0..5 {
        assert_eq!(model.generate(&prompts, &p)?, g, "generation differs");
    }
    Ok(())
}

/// The GPU schedule (tokens picked on the device, read back every few steps) gives the same
/// completions as the CPU schedule (picked on the host, read every step): rows that stopped
/// between two reads are cut at their stop id, and the two pickers agree.
#[test]
fn completions_do_not_depend_on_the_decode_schedule() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf-tiny/tiny-qwen2");
    let model = Transformer::<Cpu>::load(&dir, &Default::default())?;
    let prompts: Vec<Vec<u32>> = (0..8u32).map(|i| vec![38 + i, 75, 259, 308 + i]).collect();
    let seeds: Vec<u64> = (0..8).collect();
    let host = DecodeSchedule {
        pick_on_device: false,
        readback_every: 1,
    };
    assert_eq!(
        DecodeSchedule::for_backend::<Cpu>(&Default::default()),
        host
    );
    for (temperature, top_k, top_p) in [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.8), (0.0, 0, 1.0)]
    {
        let mut p = SamplingParams {
            max_new_tokens: 24,
            temperature,
            top_k,
            top_p,
            seed: 3,
            ..Default::default()
        };
        // Stop on tokens the rows actually sample, at different steps.
        let free = model.generate_scheduled(&prompts, &p, &seeds, host)?;
        p.stop_ids = vec![free[0].completion_ids[5], free[3].completion_ids[11]];
        let want = model.generate_scheduled(&prompts, &p, &seeds, host)?;
        let stopped = want
            .iter()
            .filter(|c| c.finish_reason == FinishReason::Stop)
            .count();
        assert!(
            (2..8).contains(&stopped),
            "{stopped} of 8 rows stopped early: the test needs some of each"
        );
        for (pick_on_device, readback_every) in [(false, 5), (true, 1), (true, 8), (true, 64)] {
            let schedule = DecodeSchedule {
                pick_on_device,
                readback_every,
            };
            let got = model.generate_scheduled(&prompts, &p, &seeds, schedule)?;
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (&g.completion_ids, g.finish_reason),
                    (&w.completion_ids, w.finish_reason),
                    "{schedule:?}, {p:?}"
                );
                for (a, b) in g
                    .logprobs
                    .iter()
                    .chain(&g.sampling_logprobs)
                    .zip(w.logprobs.iter().chain(&w.sampling_logprobs))
                {
                    assert!((a - b).abs() < 1e-4, "{a} vs {b}: {schedule:?}, {p:?}");
                }
            }
        }
    }
    Ok(())
}
