//! `rlhf sft CONFIG`: supervised fine-tuning on chat JSONL/Parquet (prompt tokens masked), so a
//! run can start from a sensible policy. Writes a Hugging Face checkpoint and a loss log.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use rlhf_core::ChatMessage;
use rlhf_data::{LoadOptions, Prompt};
use rlhf_learner::sft::{SftSettings, tokenize_example, train_sft};
use rlhf_model::{Precision, Tokenizer, Transformer};
use serde::Deserialize;

use crate::inspect::with_backend;
use crate::offline::{self, StepLog};
use crate::runfile::{ModelSection, read_toml, resolve_beside};

#[derive(Debug, Args)]
pub struct SftArgs {
    /// The SFT file (TOML): `[model]` and `[sft]`.
    config: PathBuf,
}

/// The `[sft]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SftSection {
    /// JSONL or Parquet: `messages` ending with the assistant's answer, or `prompt` + `answer`.
    data: PathBuf,
    /// Where the fine-tuned checkpoint goes.
    output_dir: PathBuf,
    #[serde(default = "offline::default_lr")]
    lr: f64,
    #[serde(default)]
    weight_decay: f32,
    #[serde(default = "offline::default_clip")]
    max_grad_norm: f64,
    #[serde(default = "offline::default_batch")]
    batch_size: usize,
    #[serde(default = "offline::default_epochs")]
    epochs: usize,
    /// Longer examples are skipped (and counted).
    #[serde(default = "offline::default_max_len")]
    max_len: usize,
    #[serde(default)]
    skip_malformed: bool,
    /// Gradient checkpointing (as `learner.gradient_checkpointing`).
    #[serde(default)]
    gradient_checkpointing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SftFile {
    model: ModelSection,
    sft: SftSection,
}

pub fn run(args: SftArgs) -> Result<()> {
    let path = &args.config;
    let mut f: SftFile = read_toml(path)?;
    resolve_beside(path, &mut [&mut f.model.path, &mut f.sft.data]);
    let s = &f.sft;
    offline::check_optim(path, "sft", s.lr, s.batch_size, s.epochs, s.max_len)?;
    let device = rlhf_model::DeviceSpec::from_setting(&f.model.device)
        .map_err(|e| anyhow::anyhow!("{}: model.device: {e}", path.display()))?;
    let precision = Precision::for_device(&f.model.precision, device)
        .map_err(|e| anyhow::anyhow!("{}: model.precision: {e}", path.display()))?;
    with_backend!(device, |dev: B| sft_on::<burn::backend::Autodiff<B>>(
        &f, precision, &dev
    ))
}

fn sft_on<B: AutodiffBackend>(f: &SftFile, precision: Precision, device: &B::Device) -> Result<()> {
    let s = &f.sft;
    let tokenizer = Tokenizer::from_dir(&f.model.path)?;
    let report = rlhf_data::load_prompts(
        &s.data,
        LoadOptions {
            skip_malformed: s.skip_malformed,
        },
    )?;
    let mut examples = vec![];
    let mut too_long = 0;
    for r in &report.records {
        let messages: Vec<ChatMessage> = match (&r.prompt, &r.answer) {
            (Prompt::Messages(m), None) => m.clone(),
            (Prompt::Text(t), Some(a)) => vec![
                ChatMessage::new("user", t.clone()),
                ChatMessage::new("assistant", a.clone()),
            ],
            (Prompt::Messages(_), Some(_)) => bail!(
                "{}: record `{}`: give the answer as the last assistant message or as `answer` with a `prompt`, not both",
                s.data.display(),
                r.id
            ),
            (Prompt::Text(_), None) => bail!(
                "{}: record `{}`: a `prompt` needs an `answer`",
                s.data.display(),
                r.id
            ),
        };
        let ex = tokenize_example(&tokenizer, &messages)
            .map_err(|e| anyhow::anyhow!("{}: record `{}`: {e}", s.data.display(), r.id))?;
        if ex.prompt.len() + ex.completion.len() > s.max_len {
            too_long += 1;
            continue;
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        bail!(
            "{}: no usable examples ({too_long} longer than sft.max_len = {})",
            s.data.display(),
            s.max_len
        );
    }
    eprintln!(
        "sft: {} examples ({} skipped as malformed, {too_long} too long), {} epochs",
        examples.len(),
        report.skipped.len(),
        s.epochs
    );
    // f32 master weights (saved as f32), computing in `precision`.
    let policy = Transformer::<B>::load(&f.model.path, device)?.with_precision(precision)?;
    let mut log = StepLog::create(&s.output_dir, "sft")?;
    let settings = SftSettings {
        lr: s.lr,
        weight_decay: s.weight_decay,
        max_grad_norm: s.max_grad_norm,
        batch_size: s.batch_size,
        epochs: s.epochs,
        max_len: s.max_len,
        gradient_checkpointing: s.gradient_checkpointing,
    };
    let (policy, r) = train_sft(policy, &examples, settings, |step, total, loss| {
        let record = serde_json::json!({"step": step, "loss": loss});
        log.step(step, total, record, &format!("loss {loss:.4}"))
    })?;
    log.finish()?;
    policy
        .valid()
        .save_pretrained(&s.output_dir, Some(&f.model.path))?;
    println!(
        "{}",
        serde_json::json!({
            "steps": r.steps, "first_loss": r.first_loss, "last_loss": r.last_loss,
            "skipped_nonfinite_steps": r.skipped_nonfinite_steps, "tokens": r.tokens,
            "seconds": r.seconds, "output_dir": s.output_dir.display().to_string(),
        })
    );
    Ok(())
}
