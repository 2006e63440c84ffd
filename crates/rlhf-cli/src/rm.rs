//! `rlhf rm CONFIG`: trains a reward model and writes a Hugging Face
//! `*ForSequenceClassification` checkpoint that a `reward_model` scorer loads.
//! - `bradley_terry` on preference pairs (the format of `rlhf eval`'s ranking data: `prompt` or
//!   `messages`, `chosen`, `rejected`); reports held-out pair accuracy before and after.
//! - `armo_regression` on rated answers (`prompt` or `messages`, `response`, `ratings`: one
//!   number or null per objective); a K-output model; reports held-out MSE before and after.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use rlhf_algo::Objective;
use rlhf_data::Prompt;
use rlhf_eval::ranking::{load_pairs, tokenize};
use rlhf_learner::reward_model::{
    Rated, RewardSettings, TokenPair, as_reward_model, pair_accuracy, ratings_mse,
    train_ratings_model, train_reward_model,
};
use rlhf_model::{DeviceSpec, Precision, Tokenizer, Transformer};
use serde::Deserialize;

use crate::inspect::with_backend;
use crate::offline::{self, StepLog};
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
    /// JSONL: preference pairs (`prompt` or `messages`, `chosen`, `rejected`) for
    /// `bradley_terry`; rated answers (`prompt` or `messages`, `response`, `ratings`) for
    /// `armo_regression`.
    data: PathBuf,
    /// Where the reward model goes.
    output_dir: PathBuf,
    /// `{ name = "bradley_terry", beta = 1.0 }` or `{ name = "armo_regression" }`.
    #[serde(default = "default_objective")]
    objective: Objective,
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
    /// Pairs whose longer side (prompt + answer tokens) exceeds this are skipped and counted.
    #[serde(default = "offline::default_max_len")]
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
        Objective::ArmoRegression(_) => {}
        other => bail!(
            "{at}: rm.objective: `{}` trains a policy (use it in `rlhf run`); `rlhf rm` trains reward models with `bradley_terry` or `armo_regression`",
            other.name()
        ),
    }
    offline::check_optim(path, "rm", s.lr, s.batch_size, s.epochs, s.max_len)?;
    if !(0.0..1.0).contains(&s.heldout_fraction) {
        bail!("{at}: rm.heldout_fraction must be in [0, 1)");
    }
    let device = DeviceSpec::from_setting(&f.model.device)
        .map_err(|e| anyhow::anyhow!("{at}: model.device: {e}"))?;
    let precision = Precision::for_device(&f.model.precision, device)
        .map_err(|e| anyhow::anyhow!("{at}: model.precision: {e}"))?;
    with_backend!(device, |dev: B| rm_on::<burn::backend::Autodiff<B>>(
        &f, precision, &dev
    ))
}

/// One line of a ratings file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatedLine {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<rlhf_core::ChatMessage>>,
    response: String,
    ratings: Vec<Option<f64>>,
}

/// Reads rated answers: (id, prompt, response, ratings); every line has the same number of
/// ratings; errors name the file and the line.
#[allow(clippy::type_complexity)]
fn load_rated(path: &Path) -> Result<Vec<(String, Prompt, String, Vec<Option<f32>>)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}: line {}", path.display(), i + 1);
        let l: RatedLine = serde_json::from_str(line).with_context(at)?;
        let prompt = match (l.prompt, l.messages) {
            (Some(p), None) => Prompt::Text(p),
            (None, Some(m)) if !m.is_empty() => Prompt::Messages(m),
            _ => bail!("{}: set exactly one of `prompt` and `messages`", at()),
        };
        if l.ratings.is_empty() || l.ratings.iter().all(Option::is_none) {
            bail!("{}: `ratings` holds no rating", at());
        }
        if let Some(x) = l.ratings.iter().flatten().find(|x| !x.is_finite()) {
            bail!("{}: `ratings` holds a non-finite value {x}", at());
        }
        if let Some((_, _, _, first)) = out.first()
            && Vec::len(first) != l.ratings.len()
        {
            bail!(
                "{}: {} ratings, the first line has {}",
                at(),
                l.ratings.len(),
                Vec::len(first)
            );
        }
        let id = match l.id {
            None | Some(serde_json::Value::Null) => i.to_string(),
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
        };
        let ratings = l.ratings.iter().map(|x| x.map(|v| v as f32)).collect();
        out.push((id, prompt, l.response, ratings));
    }
    if out.is_empty() {
        bail!("{}: no rated answers", path.display());
    }
    Ok(out)
}

fn settings(s: &RmSection) -> RewardSettings {
    RewardSettings {
        lr: s.lr,
        weight_decay: s.weight_decay,
        max_grad_norm: s.max_grad_norm,
        batch_size: s.batch_size,
        epochs: s.epochs,
    }
}

fn rm_on<B: AutodiffBackend>(f: &RmFile, precision: Precision, device: &B::Device) -> Result<()> {
    // f32 master weights (saved as f32), computing in `precision`.
    let model = Transformer::<B>::load(&f.model.path, device)?.with_precision(precision)?;
    match f.rm.objective {
        Objective::BradleyTerry(c) => pairs_on::<B>(f, c, model),
        _ => ratings_on::<B>(f, model),
    }
}

fn ratings_on<B: AutodiffBackend>(f: &RmFile, model: Transformer<B>) -> Result<()> {
    let s = &f.rm;
    let tokenizer = Tokenizer::from_dir(&f.model.path)?;
    let lines = load_rated(&s.data)?;
    let k = lines[0].3.len();
    let (mut train, mut heldout): (Vec<Rated>, Vec<Rated>) = (vec![], vec![]);
    let mut too_long = 0;
    for (id, prompt, response, ratings) in lines {
        let seq = tokenize(&tokenizer, &prompt, &response, s.chat)
            .map_err(|e| anyhow::anyhow!("{}: answer `{id}`: {e}", s.data.display()))?;
        if seq.prompt.len() + seq.completion.len() > s.max_len {
            too_long += 1;
            continue;
        }
        if rlhf_data::is_held_out(&id, s.heldout_fraction, s.seed) {
            heldout.push((seq, ratings));
        } else {
            train.push((seq, ratings));
        }
    }
    if train.is_empty() {
        bail!(
            "{}: no training answers ({} held out, {too_long} longer than rm.max_len = {})",
            s.data.display(),
            heldout.len(),
            s.max_len
        );
    }
    eprintln!(
        "rm: {} rated answers ({k} objectives), {} held out, {too_long} too long; {} epochs",
        train.len(),
        heldout.len(),
        s.epochs
    );
    let model = as_reward_model(model, k)?;
    let mse = |m: &Transformer<B::InnerBackend>| -> Result<Option<f64>> {
        if heldout.is_empty() {
            return Ok(None);
        }
        Ok(Some(ratings_mse(m, &heldout, s.batch_size)?))
    };
    let before = mse(&model.valid())?;
    let mut log = StepLog::create(&s.output_dir, "rm")?;
    let (model, r) = train_ratings_model(model, &train, settings(s), |step, total, loss, _| {
        let record = serde_json::json!({"step": step, "loss": loss, "accuracy": null});
        log.step(step, total, record, &format!("loss {loss:.4}"))
    })?;
    log.finish()?;
    let model = model.valid();
    let after = mse(&model)?;
    model.save_pretrained(&s.output_dir, Some(&f.model.path))?;
    println!(
        "{}",
        serde_json::json!({
            "objective": "armo_regression", "outputs": k,
            "steps": r.steps, "first_loss": r.first_loss, "last_loss": r.last_loss,
            "heldout_answers": heldout.len(), "heldout_mse_before": before,
            "heldout_mse_after": after, "skipped_too_long": too_long,
            "skipped_nonfinite_steps": r.skipped_nonfinite_steps, "seconds": r.seconds,
            "output_dir": s.output_dir.display().to_string(),
        })
    );
    Ok(())
}

fn pairs_on<B: AutodiffBackend>(
    f: &RmFile,
    objective: rlhf_algo::reward_model::BradleyTerryConfig,
    model: Transformer<B>,
) -> Result<()> {
    let s = &f.rm;
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
    let model = as_reward_model(model, 1)?;
    let accuracy = |m: &Transformer<B::InnerBackend>| -> Result<Option<f64>> {
        if heldout.is_empty() {
            return Ok(None);
        }
        Ok(Some(pair_accuracy(m, &heldout, s.batch_size)?))
    };
    let before = accuracy(&model.valid())?;
    let mut log = StepLog::create(&s.output_dir, "rm")?;
    let (model, r) = train_reward_model(
        model,
        &train,
        settings(s),
        objective,
        |step, total, loss, acc| {
            let record = serde_json::json!({"step": step, "loss": loss, "accuracy": acc});
            log.step(
                step,
                total,
                record,
                &format!("loss {loss:.4} accuracy {acc:.3}"),
            )
        },
    )?;
    log.finish()?;
    let model = model.valid();
    let after = accuracy(&model)?;
    model.save_pretrained(&s.output_dir, Some(&f.model.path))?;
    println!(
        "{}",
        serde_json::json!({
            "objective": "bradley_terry",
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
