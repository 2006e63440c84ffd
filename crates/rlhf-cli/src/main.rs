//! The `rlhf` binary: parses the command line and calls into the library crates.

mod admin;
mod bench;
mod certs;
mod eval;
mod inspect;
mod labels;
mod memory;
mod offline;
mod rm;
mod run;
mod runfile;
mod sft;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps large freed blocks for reuse; with glibc's allocator every matmul's packing
/// buffer was a fresh mmap, and page faults took a quarter of decode time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rlhf: online RLHF for Hugging Face checkpoints.
#[derive(Debug, Parser)]
#[command(name = "rlhf", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample a completion from a causal LM (prints the text, or one JSON object with --json).
    Generate(inspect::GenerateArgs),
    /// Log-prob of every token given its prefix (teacher-forced), to debug generator/trainer drift.
    Logprobs(inspect::LogprobsArgs),
    /// Reward-model scores (sequence classification head, read at the last token).
    Score(inspect::ScoreArgs),
    /// Run an experiment with every role in this process (real gRPC on loopback).
    Run(run::RunArgs),
    /// Run only the coordinator of a run file's `[cluster]`.
    Coordinator(run::RoleArgs),
    /// Run only a rollout worker of a run file's `[cluster]`.
    Rollout(run::RoleArgs),
    /// Run only a scorer of a run file's `[cluster]`.
    Scorer(run::RoleArgs),
    /// Run only the learner of a run file's `[cluster]`.
    Learner(run::RoleArgs),
    /// A running coordinator's state (iteration, policy version, members, last metrics) as JSON.
    Status(admin::AdminArgs),
    /// Ask a running coordinator to stop after its current iteration (final checkpoint and
    /// summary are still written).
    Stop(admin::AdminArgs),
    /// Pause a running run after the iterations in flight (every role stays up; `unpause`
    /// continues it, `stop` ends it).
    Pause(admin::AdminArgs),
    /// Let a paused run continue.
    Unpause(admin::AdminArgs),
    /// Evict a rollout worker or scorer from a running run (its work in flight finishes, it
    /// gets no more), or readmit it with --readmit.
    Evict(admin::EvictArgs),
    /// Change live settings of a running run: iterations (extend or shorten it),
    /// eval_every, checkpoint_every (kept in the output folder: a resumed run keeps them).
    Set(admin::SetArgs),
    /// Evaluate policies: reward, win rate under a judge, ranking accuracy, length, KL.
    Eval(eval::EvalArgs),
    /// Supervised fine-tuning on chat data (prompt tokens masked).
    Sft(sft::SftArgs),
    /// Train a Bradley–Terry reward model on preference pairs.
    Rm(rm::RmArgs),
    /// A human scorer's labels file as preference pairs (for `rlhf rm` and `rlhf eval`).
    Labels(labels::LabelsArgs),
    /// Memory estimates of a checkpoint's training step and generation call, from config.json.
    Memory(memory::MemoryArgs),
    /// Make a development CA and a certificate for mutual TLS between the roles
    /// (`cluster.tls`); later calls with the same --out sign with the same CA.
    Certs(certs::CertsArgs),
    /// Benchmarks (not tests): numbers for docs/benchmarks.md.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Command {
    /// The command's name (the default service name of its traces: `rlhf-<name>`).
    fn name(&self) -> &'static str {
        match self {
            Command::Generate(_) => "generate",
            Command::Logprobs(_) => "logprobs",
            Command::Score(_) => "score",
            Command::Run(_) => "run",
            Command::Coordinator(_) => "coordinator",
            Command::Rollout(_) => "rollout",
            Command::Scorer(_) => "scorer",
            Command::Learner(_) => "learner",
            Command::Status(_) => "status",
            Command::Stop(_) => "stop",
            Command::Pause(_) => "pause",
            Command::Unpause(_) => "unpause",
            Command::Evict(_) => "evict",
            Command::Set(_) => "set",
            Command::Eval(_) => "eval",
            Command::Sft(_) => "sft",
            Command::Rm(_) => "rm",
            Command::Labels(_) => "labels",
            Command::Memory(_) => "memory",
            Command::Certs(_) => "certs",
            Command::Bench(_) => "bench",
        }
    }
}

fn main() -> ExitCode {
    // A panic is a bug, but the user still gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "error: internal error (please report): {}{at}",
            msg.replace('\n', " ")
        );
    }));
    let cli = Cli::parse();
    let _telemetry = telemetry::init(cli.command.name());
    // Before anything runs on a GPU: where compiled kernels and autotune results are kept.
    #[cfg(feature = "cuda")]
    {
        use rlhf_model::kernel_cache::{KernelCache, configure};
        match configure() {
            cache @ KernelCache::Unavailable(_) => tracing::warn!("{cache}"),
            cache => tracing::debug!("{cache}"),
        }
    }
    let result = match cli.command {
        Command::Generate(args) => inspect::generate(args),
        Command::Logprobs(args) => inspect::logprobs(args),
        Command::Score(args) => inspect::score(args),
        Command::Run(args) => run::run(args),
        Command::Coordinator(args) => run::role(rlhf_membership::Role::Coordinator, args),
        Command::Rollout(args) => run::role(rlhf_membership::Role::Rollout, args),
        Command::Scorer(args) => run::role(rlhf_membership::Role::Scorer, args),
        Command::Learner(args) => run::role(rlhf_membership::Role::Learner, args),
        Command::Status(args) => admin::status(args),
        Command::Stop(args) => admin::stop(args),
        Command::Pause(args) => admin::pause(args, true),
        Command::Unpause(args) => admin::pause(args, false),
        Command::Evict(args) => admin::evict(args),
        Command::Set(args) => admin::set(args),
        Command::Eval(args) => eval::run(args),
        Command::Sft(args) => sft::run(args),
        Command::Rm(args) => rm::run(args),
        Command::Labels(args) => labels::run(args),
        Command::Memory(args) => memory::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain on one line.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
