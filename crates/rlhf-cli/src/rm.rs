//! `rlhf rm CONFIG`: trains a Bradley–Terry reward model on preference pairs (the format of
//! `rlhf eval`'s ranking data: `prompt` or `messages`, `chosen`, `rejected`), measures pair
//! accuracy on a held-out split before and after, and writes a Hugging Face
//! `*ForSequenceClassification` checkpoint that a `reward_model` scorer loads.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use rlhf_algo::Objective;
use rlhf_eval::ranking::{load_pairs, tokenize};
use rlhf_learner::reward_model::{
    RewardSettings, TokenPair, as_reward_model, pair_accuracy, train_reward_model,
};
use rlhf_model::{DeviceSpec, Tokenizer, Transformer};
use serde::Deserialize;

use crate::inspect::with_backend;
use crate::runfile::{ModelSection, read_toml, resolve_beside};

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The reward-model file (TOML): `[model]` and `[rm]`.
    config: PathBuf,
}

/// The `[rm]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RmSection {
    /// Preference pairs, JSONL: `prompt` (or `messages`), `chosen`, `rejected`.
    data: PathBuf,
    /// Where the reward model goes.
    output_dir: PathBuf,
    /// `{ name = "bradley_terry", beta = 1.0 }` (the only reward-model loss on pairs).
    #[serde(default = "default_objective")]
    objective: Objective,
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default)]
    weight_decay: f32,
    #[serde(default = "default_clip")]
    max_grad_norm: f64,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(default = "default_epochs")]
    epochs: usize,
    /// Pairs whose longer side (prompt + answer tokens) exceeds this are skipped and counted.
    #[serde(default = "default_max_len")]
    max_len: usize,
    /// Fraction of pairs (by id hash) held out to measure accuracy.
    #[serde(default = "default_heldout")]
    heldout_fraction: f64,
    /// Seed of the held-out split.
    #[serde(default)]
    seed: u64,
    /// Render prompt and answer through the chat template.
    #[serde(default = "default_true")]
    chat: bool,
}

fn default_objective() -> Objective {
    Objective::BradleyTerry(Default::default())
}
fn default_lr() -> f64 {
    1e-4
}
fn default_clip() -> f64 {
    1.0
}
fn default_batch() -> usize {
    8
}
fn default_epochs() -> usize {
    1
}
fn default_max_len() -> usize {
    1024
}
fn default_heldout() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RmFile {
    model: ModelSection,
    rm: RmSection,
}

pub fn run(args: RmArgs) -> Result<()> {
    let path = &args.config;
    let mut f: RmFile = read_toml(path)?;
    resolve_beside(path, &mut [&mut f.model.path, &mut f.rm.data]);
    let at = path.display();
    let s = &f.rm;
    match s.objective {
        Objective::BradleyTerry(c) => c
            .validate()
            .map_err(|e| anyhow::anyhow!("{at}: rm.objective: {e}"))?,
        Objective::ArmoRegression(_) => bail!(
            "{at}: rm.objective: `armo_regression` regresses per-objective ratings, which `rlhf rm` does not read yet (it trains on preference pairs: use `bradley_terry`)"
        ),
        other => bail!(
            "{at}: rm.objective: `{}` trains a policy (use it in `rlhf run`); `rlhf rm` trains a reward model with `bradley_terry`",
            other.name()
        ),
    }
    if !(s.lr > 0.0 && s.lr.is_finite()) {
        bail!("{at}: rm.lr must be a positive number");
    }
    if s.batch_size == 0 || s.epochs == 0 || s.max_len < 2 {
        bail!("{at}: rm.batch_size and rm.epochs must be at least 1, rm.max_len at least 2");
    }
    if !(0.0..1.0).contains(&s.heldout_fraction) {
        bail!("{at}: rm.heldout_fraction must be in [0, 1)");
    }
    let device = DeviceSpec::from_setting(&f.model.device)
        .map_err(|e| anyhow::anyhow!("{at}: model.device: {e}"))?;
    with_backend!(device, |dev: B| rm_on::<burn::backend::Autodiff<B>>(
        &f, &dev
    ))
}

fn rm_on<B: AutodiffBackend>(f: &RmFile, device: &B::Device) -> Result<()> {
    let s = &f.rm;
    let Objective::BradleyTerry(objective) = s.objective else {
        bail!("rm.objective: only bradley_terry");
    };
    let tokenizer = Tokenizer::from_dir(&f.model.path)?;
    let pairs = load_pairs(&s.data, None)?;
    let (mut train, mut heldout) = (vec![], vec![]);
    let mut too_long = 0;
    for p in &pairs {
        let tok = |answer: &str| {
            tokenize(&tokenizer, &p.prompt, answer, s.chat)
                .map_err(|e| anyhow::anyhow!("{}: pair `{}`: {e}", s.data.display(), p.id))
        };
        let pair: TokenPair = (tok(&p.chosen)?, tok(&p.rejected)?);
        let len = |q: &rlhf_learner::Seq| q.prompt.len() + q.completion.len();
        if len(&pair.0).max(len(&pair.1)) > s.max_len {
            too_long += 1;
            continue;
        }
        if rlhf_data::is_held_out(&p.id, s.heldout_fraction, s.seed) {
            heldout.push(pair);
        } else {
            train.push(pair);
        }
    }
    if train.is_empty() {
        bail!(
            "{}: no training pairs ({} held out, {too_long} longer than rm.max_len = {})",
            s.data.display(),
            heldout.len(),
            s.max_len
        );
    }
    eprintln!(
        "rm: {} training pairs, {} held out, {too_long} too long; {} epochs",
        train.len(),
        heldout.len(),
        s.epochs
    );
    let model = as_reward_model(Transformer::<B>::load(&f.model.path, device)?)?;
    let accuracy = |m: &Transformer<B::InnerBackend>| -> Result<Option<f64>> {
        if heldout.is_empty() {
            return Ok(None);
        }
        Ok(Some(pair_accuracy(m, &heldout, s.batch_size)?))
    };
    let before = accuracy(&model.valid())?;
    std::fs::create_dir_all(&s.output_dir).with_context(|| s.output_dir.display().to_string())?;
    let log_path = s.output_dir.join("rm_log.jsonl");
    let mut log =
        std::fs::File::create(&log_path).with_context(|| log_path.display().to_string())?;
    let settings = RewardSettings {
        lr: s.lr,
        weight_decay: s.weight_decay,
        max_grad_norm: s.max_grad_norm,
        batch_size: s.batch_size,
        epochs: s.epochs,
        objective,
    };
    let mut write_err = None;
    let (model, r) = train_reward_model(model, &train, settings, |step, total, loss, acc| {
        let line = serde_json::json!({"step": step, "loss": loss, "accuracy": acc});
        if let Err(e) = writeln!(log, "{line}") {
            write_err.get_or_insert(e);
        }
        if step == 1 || step == total || step % 10 == 0 {
            eprintln!("rm: step {step}/{total} loss {loss:.4} accuracy {acc:.3}");
        }
    })?;
    if let Some(e) = write_err {
        bail!("{}: {e}", log_path.display());
    }
    let model = model.valid();
    let after = accuracy(&model)?;
    model.save_pretrained(&s.output_dir, Some(&f.model.path))?;
    println!(
        "{}",
        serde_json::json!({
            "steps": r.steps, "first_loss": r.first_loss, "last_loss": r.last_loss,
            "train_accuracy_last_epoch": r.last_epoch_accuracy,
            "heldout_pairs": heldout.len(), "heldout_accuracy_before": before,
            "heldout_accuracy_after": after, "skipped_too_long": too_long,
            "skipped_nonfinite_steps": r.skipped_nonfinite_steps, "seconds": r.seconds,
            "output_dir": s.output_dir.display().to_string(),
        })
    );
    Ok(())
}
