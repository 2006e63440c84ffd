//! `rlhf memory`: what a training step and a generation call of a checkpoint's shape will hold
//! (`rlhf_model::memory`), from its `config.json` alone, for sizing a run before starting it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use rlhf_model::memory::{self, MemoryEstimate, human};
use rlhf_model::{ModelConfig, Precision};
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Hugging Face checkpoint folder (only its config.json is read).
    #[arg(long)]
    model: PathBuf,
    /// Sequences per training step on one device: e.g. 2 per pair × `learner.batch_units`
    /// (divided by the number of `learner.devices` under data parallelism).
    #[arg(long, default_value_t = 16)]
    rows: usize,
    /// Tokens per training sequence (prompt + completion, padded to the longest).
    #[arg(long, default_value_t = 512)]
    len: usize,
    /// Compute precision: `f32` or `bf16`.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// With `learner.gradient_checkpointing`.
    #[arg(long)]
    checkpointing: bool,
    /// With a frozen reference on the same device (the DPO family, KL-regularised objectives).
    #[arg(long)]
    reference: bool,
    /// Rows decoded together by a rollout worker (`rollout.max_batch_rows`).
    #[arg(long, default_value_t = 64)]
    gen_batch: usize,
    /// Prompt tokens per generated row.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// New tokens per generated row.
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: MemoryArgs) -> Result<()> {
    if args.rows == 0 || args.len < 2 || args.gen_batch == 0 || args.prompt_len == 0 {
        bail!("--rows, --gen-batch and --prompt-len must be positive, --len at least 2");
    }
    let cfg = ModelConfig::from_dir(&args.model)?;
    let training = memory::training(
        &cfg,
        args.rows,
        args.len,
        args.reference,
        args.precision,
        args.checkpointing,
    );
    let generation = memory::generation(
        &cfg,
        args.gen_batch,
        args.prompt_len,
        args.new_tokens,
        args.precision,
    );
    if args.json {
        println!(
            "{}",
            json!({
                "model": cfg.describe(),
                "parameters": cfg.num_parameters(),
                "precision": args.precision.to_string(),
                "training": as_json(&training),
                "generation": as_json(&generation),
            })
        );
    } else {
        println!("model: {} ({})", cfg.describe(), args.precision);
        println!(
            "training step, {} x {} tokens{}{}: {training}",
            args.rows,
            args.len,
            if args.checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            },
            if args.reference { ", reference" } else { "" },
        );
        println!(
            "generation, {} rows x ({} + {}) tokens: {generation}",
            args.gen_batch, args.prompt_len, args.new_tokens
        );
        println!(
            "peaks: learner {}, rollout worker {} (estimates; docs/gpu.md)",
            human(training.peak()),
            human(generation.peak())
        );
    }
    Ok(())
}

fn as_json(e: &MemoryEstimate) -> Value {
    let parts =
        |p: &[(&str, u64)]| -> Value { p.iter().map(|(n, b)| (n.to_string(), json!(b))).collect() };
    json!({
        "resident_bytes": parts(&e.resident),
        "phases": e.phases.iter().map(|(name, p)| (name.to_string(), parts(p))).collect::<serde_json::Map<_, _>>(),
        "peak_bytes": e.peak(),
    })
}
