//! `rlhf bench model`: generation tokens/s and training-step tokens/s (forward + backward +
//! AdamW) of the decoder on random weights, and the memory each holds (the estimate of
//! `rlhf_model::memory`, next to the measured peak growth of the resident set on the CPU).
//! Benchmarks, not tests: results go to docs/benchmarks.md with the machine and the command.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use clap::{Args, Subcommand, ValueEnum};
use rlhf_model::memory::{self, MemoryEstimate, human};
use rlhf_model::{
    Architecture, DeviceSpec, ModelConfig, Precision, SamplingParams, TokenBatch, Transformer,
    masked_mean, target_mask,
};
use serde_json::json;

use crate::inspect::with_backend;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decoder throughput (random weights or a checkpoint): generation and one training step.
    Model(ModelBenchArgs),
    /// The learner's DPO update (policy + reference log-probs, loss, backward, AdamW) in pairs/s.
    Dpo(DpoBenchArgs),
    /// Matrix products at the model's shapes, in TFLOP/s: what the backend's matmul kernels reach.
    Matmul(MatmulBenchArgs),
}

#[derive(Debug, Args)]
pub struct MatmulBenchArgs {
    /// Shapes `MxKxN` (A is M × K, B is K × N); a trailing `t` gives B as an N × K matrix
    /// transposed, as a tied head multiplies by the embedding matrix. Default: Qwen2.5-0.5B's
    /// MLP and head at training (2048 rows) and decoding (64 rows) sizes, and a square 8192.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2048x896x4864,2048x4864x896,2048x896x151936t,64x896x4864,64x896x151936t,151936x896x64,8192x8192x8192"
    )]
    shapes: Vec<String>,
    /// Timed products per shape (after two warm-up products: JIT compilation and autotuning).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Operand format: `f32` or `bf16` (needs a GPU).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// A `MxKxN[t]` shape of `bench matmul`.
fn parse_shape(text: &str) -> Result<(usize, usize, usize, bool)> {
    let (dims, transposed) = match text.strip_suffix('t') {
        Some(d) => (d, true),
        None => (text, false),
    };
    let parts: Vec<usize> = dims
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--shapes: `{text}` is not MxKxN[t] (e.g. 64x896x4864t)"))?;
    match parts[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n, transposed)),
        _ => bail!("--shapes: `{text}` is not MxKxN[t] with positive sizes (e.g. 64x896x4864t)"),
    }
}

#[derive(Debug, Args)]
pub struct DpoBenchArgs {
    /// Hugging Face checkpoint folder.
    #[arg(long)]
    model: std::path::PathBuf,
    /// Pairs per optimizer step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Optimizer steps timed (after one warm-up step).
    #[arg(long, default_value_t = 12)]
    steps: usize,
    #[arg(long, default_value_t = 12)]
    prompt_len: usize,
    #[arg(long, default_value_t = 24)]
    completion_len: usize,
    /// Data-parallel replicas on the device (1 = none): each step split over this many threads.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Compute precision: `f32`, or `bf16` (f32 master weights, bf16 reference; needs a GPU).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// Model shapes for benchmarks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Size {
    /// The shape of tests/fixtures/hf-tiny/tiny-llama3 (0.1M parameters).
    Tiny,
    /// The shape of the 0.5M-parameter GPT in ../shared/bench/cpu_peers.py: hidden 128,
    /// 2 layers, 4 heads, MLP 512, vocab 512.
    Small,
    /// About 25M parameters: hidden 512, 6 layers, 8 heads / 4 KV heads, vocab 16384, tied.
    #[value(name = "25m")]
    M25,
    /// Qwen2.5-0.5B-shaped (random weights): hidden 896, 24 layers, 14 / 2 heads, MLP 4864,
    /// vocab 151936, tied — the GPU issue's reference shape.
    #[value(name = "qwen0.5b")]
    Qwen05b,
}

#[derive(Debug, Args)]
pub struct ModelBenchArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    size: Size,
    /// Load this checkpoint instead of random weights of `--size`.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Training batch size (sequences).
    #[arg(long, default_value_t = 4)]
    train_batch: usize,
    /// Training sequence length.
    #[arg(long, default_value_t = 128)]
    train_len: usize,
    /// Training steps timed (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Generation batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    gen_batch: Vec<usize>,
    /// Prompt length for generation.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Train with gradient checkpointing (`learner.gradient_checkpointing`): keep each decoder
    /// layer's input and no logits, recompute head and layers in the backward pass.
    #[arg(long)]
    checkpointing: bool,
    /// Skip generation (time the training step only).
    #[arg(long)]
    no_generate: bool,
    /// Skip training and weight sync (time generation only).
    #[arg(long, conflicts_with = "no_generate")]
    no_train: bool,
    /// Compute precision: `f32`, or `bf16` (f32 master weights cast at each use for training,
    /// bf16-stored weights for generation; needs a GPU).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

fn config(size: Size) -> ModelConfig {
    let arch = Architecture::LlamaForCausalLM;
    let mut c = match size {
        Size::Tiny => ModelConfig::synthetic(arch, 512, 64, 2, 4, 2, 176),
        Size::Small => ModelConfig::synthetic(arch, 512, 128, 2, 4, 4, 512),
        Size::M25 => ModelConfig::synthetic(arch, 16384, 512, 6, 8, 4, 1408),
        Size::Qwen05b => {
            ModelConfig::synthetic(Architecture::Qwen2ForCausalLM, 151936, 896, 24, 14, 2, 4864)
        }
    };
    if let Size::M25 | Size::Qwen05b = size {
        c.tie_word_embeddings = true;
    }
    c
}

/// Deterministic pseudo-random token ids.
fn tokens(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ salt;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Model(args) => {
            if args.steps == 0 || args.train_batch == 0 || args.train_len < 2 {
                bail!("--steps and --train-batch must be positive, --train-len at least 2");
            }
            with_backend!(args.device, |device: B| model_bench::<
                burn::backend::Autodiff<B>,
            >(&args, &device))
        }
        BenchCommand::Dpo(args) => {
            if args.batch == 0 || args.steps == 0 || args.replicas == 0 {
                bail!("--batch, --steps and --replicas must be positive");
            }
            args.precision
                .check_device(args.device)
                .map_err(anyhow::Error::msg)?;
            with_backend!(args.device, |device: B| dpo_bench::<
                burn::backend::Autodiff<B>,
            >(&args, &device))
        }
        BenchCommand::Matmul(args) => {
            if args.iters == 0 {
                bail!("--iters must be positive");
            }
            args.precision
                .check_device(args.device)
                .map_err(anyhow::Error::msg)?;
            let shapes = args
                .shapes
                .iter()
                .map(|s| parse_shape(s))
                .collect::<Result<Vec<_>>>()?;
            with_backend!(args.device, |device: B| matmul_bench::<B>(
                &args, &shapes, &device
            ))
        }
    }
}

fn matmul_bench<B: Backend>(
    args: &MatmulBenchArgs,
    shapes: &[(usize, usize, usize, bool)],
    device: &B::Device,
) -> Result<()> {
    use burn::tensor::Distribution;
    let dtype = args.precision.dtype();
    let mut results = vec![];
    for &(m, k, n, transposed) in shapes {
        let a = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), device).cast(dtype);
        let b_shape = if transposed { [n, k] } else { [k, n] };
        let b = Tensor::<B, 2>::random(b_shape, Distribution::Normal(0.0, 1.0), device).cast(dtype);
        let product = || {
            let rhs = if transposed {
                b.clone().transpose()
            } else {
                b.clone()
            };
            a.clone().matmul(rhs)
        };
        // Reading one element back waits for the queued work (a GPU runs it asynchronously).
        let wait = |t: Tensor<B, 2>| t.slice([0..1, 0..1]).into_data();
        let warm = Instant::now();
        for _ in 0..2 {
            wait(product());
        }
        let warmup = warm.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut last = None;
        for _ in 0..args.iters {
            last = Some(product());
        }
        if let Some(t) = last {
            wait(t);
        }
        let secs = start.elapsed().as_secs_f64() / args.iters as f64;
        let tflops = 2.0 * (m * k * n) as f64 / secs / 1e12;
        let shape = format!("{m}x{k}x{n}{}", if transposed { "t" } else { "" });
        eprintln!(
            "matmul {shape} ({}): {:.3} ms = {tflops:.2} TFLOP/s (warm-up {warmup:.2}s)",
            args.precision,
            secs * 1e3
        );
        results.push(
            json!({"shape": shape, "m": m, "k": k, "n": n, "transposed": transposed,
            "seconds": secs, "tflops": tflops, "warmup_seconds": warmup}),
        );
    }
    println!(
        "{}",
        json!({"device": args.device.to_string(), "precision": args.precision.to_string(),
            "backend": std::any::type_name::<B>(), "iters": args.iters, "matmul": results})
    );
    Ok(())
}

fn model_bench<B: AutodiffBackend>(args: &ModelBenchArgs, device: &B::Device) -> Result<()> {
    let model = match &args.model {
        Some(dir) => Transformer::<B>::load(dir, device)?,
        None => Transformer::<B>::random(config(args.size), 1, device),
    };
    let precision = args.precision;
    let model = model.with_precision(precision)?;
    let vocab = model.config.vocab_size;
    let params = model.config.num_parameters();
    eprintln!("model: {} ({precision})", model.config.describe());

    // Generation (inference backend, no autodiff graph), from weights stored in the precision.
    let infer = model.valid().cast_weights(precision)?;
    let mut gen_results = vec![];
    let gen_batches: &[usize] = if args.no_generate {
        &[]
    } else {
        &args.gen_batch
    };
    for &b in gen_batches {
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|i| tokens(args.prompt_len, vocab, i as u64))
            .collect();
        let sp = SamplingParams {
            max_new_tokens: args.new_tokens,
            temperature: 1.0,
            seed: 1,
            ..Default::default()
        };
        // A short call first: on a GPU it pays the kernels' JIT compilation and autotuning,
        // which the timed call then reuses (reported apart: compile time vs run time).
        let warm = Instant::now();
        infer.generate(
            &prompts,
            &SamplingParams {
                max_new_tokens: args.new_tokens.min(8),
                ..sp.clone()
            },
        )?;
        let warmup = warm.elapsed().as_secs_f64();
        eprintln!(
            "generate: batch {b}, warm-up call of {} tokens took {warmup:.2}s",
            args.new_tokens.min(8)
        );
        let estimate = memory::generation(
            &model.config,
            b,
            args.prompt_len,
            args.new_tokens,
            precision,
        );
        let rss = PeakRss::start();
        let fused_before = fused_launches();
        let start = Instant::now();
        let out = infer.generate(&prompts, &sp)?;
        let secs = start.elapsed().as_secs_f64();
        let fused = fused_launches() - fused_before;
        let growth = rss.growth();
        let new: usize = out.iter().map(|c| c.completion_ids.len()).sum();
        gen_results.push(json!({"batch": b, "new_tokens": new, "seconds": secs, "new_tokens_per_s": new as f64 / secs, "warmup_seconds": warmup,
            "fused_kernel_launches": fused, "memory_peak_estimate_bytes": estimate.peak(), "memory_transient_estimate_bytes": estimate.transient(), "measured_peak_growth_bytes": growth}));
        eprintln!(
            "generate: batch {b}, {new} new tokens in {secs:.2}s = {:.0} new tokens/s (warm-up call of {} tokens: {warmup:.2}s; {fused} fused kernel launches)",
            new as f64 / secs,
            args.new_tokens.min(8)
        );
        report_memory(&estimate, growth);
    }
    drop(infer);
    let mut report = json!({
        "model": format!("{:?}", args.size).to_lowercase(),
        "parameters": params,
        "device": args.device.to_string(),
        "checkpointing": args.checkpointing,
        "precision": precision.to_string(),
        "backend": std::any::type_name::<<B as AutodiffBackend>::InnerBackend>(),
        "generate": gen_results,
    });
    if args.no_train {
        println!("{report}");
        return Ok(());
    }

    // Training: next-token NLL, backward, AdamW.
    let (bsz, len) = (args.train_batch, args.train_len);
    let batch = TokenBatch::unpadded(tokens(bsz * len, vocab, 99), bsz, len)?;
    let mask =
        Tensor::<B, 2>::from_data(TensorData::new(target_mask(&batch), [bsz, len - 1]), device);
    // The learner's optimizer (burn's AdamW defaults, weight decay 1e-4).
    let mut optim = rlhf_learner::adamw::FlatAdamW::<B>::new(1e-4);
    let mut model = model;
    let mut times = vec![];
    // The policy alone (the reference of DPO-style objectives would add its weights).
    let estimate = memory::training(
        &model.config,
        bsz,
        len,
        false,
        precision,
        args.checkpointing,
    );
    let mut growth = None;
    let mut first_step = 0.0;
    let mut fused_timed = 0;
    for step in 0..=args.steps {
        let fused_before = fused_launches();
        let rss = PeakRss::start();
        let start = Instant::now();
        let (lp, checkpoints) = model.token_logprobs_for_training(&batch, args.checkpointing)?;
        let loss = masked_mean(lp, mask.clone()).mean().neg();
        let mut grads = loss.backward();
        let grads = model.param_gradients(checkpoints, &mut grads)?;
        model = optim.step(1e-4, model, grads)?;
        wait_for(&model);
        let secs = start.elapsed().as_secs_f64();
        // One line per step: a run stopped at a time limit still tells how far it got.
        eprintln!("train: step {step} took {secs:.3}s");
        if step > 0 {
            times.push(secs);
            fused_timed += fused_launches() - fused_before;
        } else {
            // The warm-up step: on a GPU it includes JIT compilation and autotuning.
            first_step = secs;
        }
        if step == 1 {
            // The first timed step: AdamW's moments already exist, as the estimate assumes.
            growth = rss.growth();
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    // The median too: on a GPU the first timed step can still pay for autotuning and memory
    // pool growth, which a mean over few steps carries.
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tps = (bsz * len) as f64 / mean;
    // Model FLOPs of a training step: 6 · parameters · tokens (attention excluded).
    let tflops = 6.0 * params as f64 * tps / 1e12;
    let fused_per_step = fused_timed / times.len().max(1) as u64;
    eprintln!(
        "train: batch {bsz} x {len}, {mean:.3}s/step = {tps:.0} tokens/s (forward + backward + AdamW), {tflops:.4} model TFLOP/s; median step {median:.3}s = {:.0} tokens/s; first (warm-up) step {first_step:.2}s; {fused_per_step} fused kernel launches per step",
        (bsz * len) as f64 / median
    );
    report_memory(&estimate, growth);

    // Weight sync as `rlhf run` does it, staged through host memory: the learner serializes
    // and hashes a version, a worker builds a model from the bytes and keeps its precision.
    let policy = model.valid();
    let start = Instant::now();
    let published = rlhf_learner::publish(&policy)?;
    let publish_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let worker = Transformer::<B::InnerBackend>::from_safetensors_bytes(
        policy.config.clone(),
        &published.payload,
        std::path::Path::new("<bench payload>"),
        device,
    )?
    .cast_weights(precision)?;
    wait_for(&worker);
    let load_secs = start.elapsed().as_secs_f64();
    let payload = published.payload.len();
    eprintln!(
        "weight sync: {} payload; publish (serialize + SHA-256) {publish_secs:.2}s, worker load {load_secs:.2}s",
        human(payload as u64)
    );
    report["train"] = json!({"batch": bsz, "len": len, "seconds_per_step": mean, "median_seconds_per_step": median, "first_step_seconds": first_step, "tokens_per_s": tps, "model_tflops": tflops, "fused_kernel_launches_per_step": fused_per_step,
        "memory_peak_estimate_bytes": estimate.peak(), "memory_transient_estimate_bytes": estimate.transient(), "measured_peak_growth_bytes": growth});
    report["weight_sync"] = json!({"payload_bytes": payload, "publish_seconds": publish_secs, "load_seconds": load_secs});
    println!("{report}");
    Ok(())
}

/// Waits for the work queued on the model's device (a GPU runs it asynchronously) by reading
/// one weight back, so that a clock stopped next measures it.
fn wait_for<B: Backend>(model: &Transformer<B>) {
    let _ = model
        .embed_tokens
        .weight
        .val()
        .slice([0..1, 0..1])
        .into_data();
}

/// Prints an estimate and, next to it, the measured peak growth of the resident set during the
/// call, which compares with the estimate's transient part (the resident part was already there).
fn report_memory(estimate: &MemoryEstimate, growth: Option<u64>) {
    eprintln!("  memory estimate: {estimate}");
    if let Some(growth) = growth {
        eprintln!(
            "  measured peak growth of the resident set: {} (estimated transient part: {})",
            human(growth),
            human(estimate.transient())
        );
    }
}

/// The resident set's peak growth over a call, on Linux (`/proc/self/status`; the peak is reset
/// through `/proc/self/clear_refs`). Meaningful for the CPU backend only: GPU memory is not
/// resident host memory. `None` where the kernel does not offer it.
struct PeakRss {
    before: Option<u64>,
}

impl PeakRss {
    fn start() -> Self {
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        Self {
            before: if reset { status_kib("VmRSS") } else { None },
        }
    }

    fn growth(&self) -> Option<u64> {
        let before = self.before?;
        Some(status_kib("VmHWM")?.saturating_sub(before) * 1024)
    }
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Times the learner's DPO update on synthetic pairs (the shape of TRL's DPO step in
/// ../shared/bench/cpu_peers.py: 8 pairs, 12 prompt + 24 completion tokens).
fn dpo_bench<B: AutodiffBackend>(args: &DpoBenchArgs, device: &B::Device) -> Result<()> {
    use rlhf_learner::{OptimSettings, Seq, TrainState, Unit};
    let policy = Transformer::<B>::load(&args.model, device)?.with_precision(args.precision)?;
    let reference = policy.valid().cast_weights(args.precision)?;
    let vocab = policy.config.vocab_size;
    let settings = OptimSettings {
        lr: 1e-4,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        batch_units: args.batch,
        epochs: 1,
    };
    let objective = rlhf_algo::Objective::Dpo(Default::default());
    let mut state = TrainState::new(policy, reference, objective, settings);
    if args.replicas > 1 {
        state = state.with_data_parallel(vec![device.clone(); args.replicas - 1])?;
    }
    let seq = |salt: u64| Seq {
        prompt: tokens(args.prompt_len, vocab, salt),
        completion: tokens(args.completion_len, vocab, salt + 7),
        reward: 0.0,
    };
    let units: Vec<Unit> = (0..args.batch as u64)
        .map(|i| Unit::Pair(seq(3 * i), seq(3 * i + 1), 1.0))
        .collect();
    state.update(&units)?;
    let start = Instant::now();
    for _ in 0..args.steps {
        state.update(&units)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let pairs = (args.batch * args.steps) as f64;
    eprintln!(
        "dpo: {} steps of {} pairs ({} + {} tokens, {} replica(s)) in {secs:.2}s = {:.1} pairs/s",
        args.steps,
        args.batch,
        args.prompt_len,
        args.completion_len,
        args.replicas,
        pairs / secs
    );
    println!(
        "{}",
        json!({"pairs_per_s": pairs / secs, "seconds": secs, "steps": args.steps, "batch": args.batch, "replicas": args.replicas,
            "device": args.device.to_string(), "precision": args.precision.to_string()})
    );
    Ok(())
}

/// Fused GPU kernels launched by this process so far (`rlhf_model::cube`; none on the CPU).
fn fused_launches() -> u64 {
    #[cfg(feature = "cuda")]
    let n = rlhf_model::cube::launches();
    #[cfg(not(feature = "cuda"))]
    let n = 0;
    n
}
