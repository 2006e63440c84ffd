//! `rlhf eval CONFIG`: rewards, win rates, ranking accuracy, length and KL of one or more
//! policies (crate rlhf-eval; config format in docs/eval.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The evaluation file (TOML), e.g. examples/eval-quickstart.toml.
    config: PathBuf,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let config = rlhf_eval::EvalConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(rlhf_eval::run_eval(&config, |line| {
        eprintln!("eval: {line}")
    }))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
