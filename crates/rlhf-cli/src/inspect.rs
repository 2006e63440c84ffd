//! `rlhf generate`, `rlhf logprobs`, `rlhf score`: run a checkpoint the way the trainer does.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use clap::Args;
use rlhf_model::load::host_vec;
use rlhf_model::{
    ChatMessage, DeviceSpec, PaddingSide, SamplingParams, TokenBatch, Tokenizer, Transformer,
};
use serde_json::{Value, json};

/// Runs `$body` with `B` bound to the backend of `$device` and `device` to its device value.
macro_rules! with_backend {
    ($spec:expr, |$device:ident: $b:ident| $body:expr) => {{
        let spec: rlhf_model::DeviceSpec = $spec;
        spec.check_supported().map_err(anyhow::Error::msg)?;
        match spec {
            rlhf_model::DeviceSpec::Cpu => {
                type $b = rlhf_model::Cpu;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            rlhf_model::DeviceSpec::Cuda(n) => {
                type $b = rlhf_model::backend::Cuda;
                let $device = burn::backend::cuda::CudaDevice::new(n);
                $body
            }
            #[cfg(not(feature = "cuda"))]
            rlhf_model::DeviceSpec::Cuda(_) => unreachable!("rejected by check_supported"),
        }
    }};
}
pub(crate) use with_backend;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as one user message through the chat template (with the generation prompt).
    #[arg(long)]
    chat: bool,
    /// Maximum new tokens [default: generation_config.json `max_new_tokens`, else 128].
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 means greedy [default: greedy unless generation_config.json sets do_sample].
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling threshold in (0, 1] [default: generation_config.json, else 1 = off].
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the K most likely tokens, 0 = off [default: generation_config.json, else 0].
    #[arg(long)]
    top_k: Option<usize>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Print exactly one JSON object: prompt_ids, completion_ids, completion_logprobs, text, finish_reason.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct LogprobsArgs {
    /// Hugging Face checkpoint folder.
    #[arg(long)]
    model: PathBuf,
    /// Text, tokenized as `tokenizer(text)` in transformers.
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,
    /// Token ids, comma-separated (e.g. 1,2,3).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Print one JSON object: ids, token_logprobs (one fewer than ids).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Hugging Face reward-model folder (a *ForSequenceClassification checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// A text to score (repeat for several), tokenized as `tokenizer(text)` in transformers.
    #[arg(long, required = true)]
    text: Vec<String>,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Print one JSON object: scores.
    #[arg(long)]
    json: bool,
}

fn load_tokenizer(dir: &std::path::Path) -> Result<Tokenizer> {
    Ok(Tokenizer::from_dir(dir)?)
}

/// A field of generation_config.json, if present.
fn gen_field(model_cfg: &Option<Value>, key: &str) -> Option<Value> {
    model_cfg
        .as_ref()
        .and_then(|g| g.get(key))
        .filter(|v| !v.is_null())
        .cloned()
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    with_backend!(args.device, |device: B| generate_on::<B>(&args, &device))
}

fn generate_on<B: Backend>(args: &GenerateArgs, device: &B::Device) -> Result<()> {
    let tokenizer = load_tokenizer(&args.model)?;
    let model = Transformer::<B>::load(&args.model, device)?;
    let prompt_ids = if args.chat {
        tokenizer.encode_chat(&[ChatMessage::new("user", args.prompt.clone())], true)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    if prompt_ids.is_empty() {
        bail!("--prompt: the prompt is empty after tokenization");
    }
    let g = &model.config.generation;
    let do_sample = gen_field(g, "do_sample")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let temperature = match args.temperature {
        Some(t) => t,
        None if do_sample => gen_field(g, "temperature")
            .and_then(|v| v.as_f64())
            .unwrap_or(1.0) as f32,
        None => 0.0,
    };
    let top_k = args
        .top_k
        .unwrap_or_else(|| gen_field(g, "top_k").and_then(|v| v.as_u64()).unwrap_or(0) as usize);
    let top_p = args.top_p.unwrap_or_else(|| {
        gen_field(g, "top_p")
            .and_then(|v| v.as_f64())
            .unwrap_or(1.0) as f32
    });
    let max_new_tokens = args.max_new_tokens.unwrap_or_else(|| {
        gen_field(g, "max_new_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(128) as usize
    });
    let mut stop_ids = model.config.eos_token_ids.clone();
    if let Some(id) = tokenizer.eos_id()
        && !stop_ids.contains(&id)
    {
        stop_ids.push(id);
    }
    if args.ignore_eos {
        stop_ids.clear();
    }
    let params = SamplingParams {
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        stop_ids,
        seed: args.seed,
    };
    params.validate().context("sampling settings")?;
    let start = Instant::now();
    let out = model
        .generate(std::slice::from_ref(&prompt_ids), &params)?
        .pop()
        .context("generation returned no sequence")?;
    let secs = start.elapsed().as_secs_f64();
    let text = tokenizer.decode(&out.completion_ids, true)?;
    if args.json {
        let obj = json!({
            "prompt_ids": out.prompt_ids,
            "completion_ids": out.completion_ids,
            "completion_logprobs": out.logprobs,
            "text": text,
            "finish_reason": out.finish_reason.as_str(),
        });
        println!("{obj}");
    } else {
        println!("{text}");
        eprintln!(
            "[{} prompt + {} new tokens, finish: {}, {:.2}s, {:.1} tokens/s, sum log-prob {:.4}]",
            out.prompt_ids.len(),
            out.completion_ids.len(),
            out.finish_reason.as_str(),
            secs,
            out.completion_ids.len() as f64 / secs.max(1e-9),
            out.logprobs.iter().map(|&x| f64::from(x)).sum::<f64>()
        );
    }
    Ok(())
}

pub fn logprobs(args: LogprobsArgs) -> Result<()> {
    with_backend!(args.device, |device: B| logprobs_on::<B>(&args, &device))
}

fn logprobs_on<B: Backend>(args: &LogprobsArgs, device: &B::Device) -> Result<()> {
    let model = Transformer::<B>::load(&args.model, device)?;
    let tokenizer = match (&args.text, Tokenizer::from_dir(&args.model)) {
        (Some(_), Err(e)) => return Err(e.into()),
        (_, t) => t.ok(),
    };
    let ids = match (&args.ids, &args.text, &tokenizer) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(text), Some(tok)) => tok.encode(text, true)?,
        _ => bail!("give --text or --ids"),
    };
    if ids.len() < 2 {
        bail!(
            "log-probs need at least two tokens, got {} (ids {ids:?})",
            ids.len()
        );
    }
    let batch = TokenBatch::unpadded(ids.clone(), 1, ids.len())?;
    let lps = host_vec(model.token_logprobs(&batch)?.into_data())?;
    if args.json {
        println!("{}", json!({"ids": ids, "token_logprobs": lps}));
        return Ok(());
    }
    println!("{:>6}  {:>8}  {:>10}  token", "pos", "id", "logprob");
    for (t, id) in ids.iter().enumerate() {
        let piece = tokenizer
            .as_ref()
            .and_then(|tok| tok.decode(&[*id], false).ok())
            .unwrap_or_default();
        let lp = if t == 0 {
            "-".to_string()
        } else {
            format!("{:.5}", lps[t - 1])
        };
        println!("{t:>6}  {id:>8}  {lp:>10}  {piece:?}");
    }
    let total: f64 = lps.iter().map(|&x| f64::from(x)).sum();
    println!(
        "sum {total:.5}, mean {:.5} over {} predicted tokens",
        total / lps.len() as f64,
        lps.len()
    );
    Ok(())
}

pub fn score(args: ScoreArgs) -> Result<()> {
    with_backend!(args.device, |device: B| score_on::<B>(&args, &device))
}

fn score_on<B: Backend>(args: &ScoreArgs, device: &B::Device) -> Result<()> {
    let model = Transformer::<B>::load(&args.model, device)?;
    if model.score.is_none() {
        bail!(
            "{}: `{}` is not a reward model (expected a *ForSequenceClassification architecture)",
            args.model.join("config.json").display(),
            model.config.architecture.name()
        );
    }
    let tokenizer = load_tokenizer(&args.model)?;
    let seqs = args
        .text
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ids = tokenizer.encode(t, true)?;
            if ids.is_empty() {
                bail!("--text #{}: empty after tokenization", i + 1);
            }
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    let pad = model
        .config
        .pad_token_id
        .or(tokenizer.pad_id())
        .unwrap_or(0);
    let batch = TokenBatch::pad(&seqs, pad, PaddingSide::Right)?;
    let scores = host_vec(model.scores(&batch)?.into_data())?;
    let labels = model.config.num_labels;
    let rows: Vec<Value> = scores
        .chunks(labels)
        .map(|c| if labels == 1 { json!(c[0]) } else { json!(c) })
        .collect();
    if args.json {
        println!("{}", json!({ "scores": rows }));
    } else {
        for (text, s) in args.text.iter().zip(&rows) {
            println!("{s}\t{text:?}");
        }
    }
    Ok(())
}
