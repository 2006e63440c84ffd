//! `rlhf labels`: a human scorer's labels file as preference pairs (JSON lines: `prompt` or
//! `messages`, `chosen`, `rejected`, ...), the data `rlhf rm` trains a reward model on and
//! `rlhf eval`'s ranking reads.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

#[derive(Debug, Args)]
pub struct LabelsArgs {
    /// A human scorer's `labels_file`.
    labels: PathBuf,
    /// Where to write the pairs (JSON lines; replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// Leave out labels given after their scoring call stopped waiting.
    #[arg(long)]
    skip_late: bool,
}

pub fn run(args: LabelsArgs) -> Result<()> {
    let same = |a: &PathBuf, b: &PathBuf| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&args.labels, &args.out) {
        bail!("--out {} is the labels file itself", args.out.display());
    }
    let (pairs, export) =
        rlhf_reward::human::preference_pairs(&args.labels).map_err(anyhow::Error::msg)?;
    let before = pairs.len();
    let pairs: Vec<_> = pairs
        .into_iter()
        .filter(|p| !(args.skip_late && p["late"] == true))
        .collect();
    let mut text = Vec::new();
    for p in &pairs {
        serde_json::to_writer(&mut text, p)?;
        text.push(b'\n');
    }
    rlhf_model::weights::write_atomic(&args.out, &text)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}",
        json!({
            "pairs": pairs.len(),
            "late_skipped": before - pairs.len(),
            "ties": export.ties,
            "superseded": export.superseded,
            "out": args.out,
        })
    );
    Ok(())
}
