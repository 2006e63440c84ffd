#!/usr/bin/env bash
# One prepared script for a `device` session (issue 5): burn-cuda and PyTorch side by side on
# the same GPU. Build and pack the binary here first:
#   scripts/gpu_build.sh          # gpu-bin/rlhf.gz (and gpu_peers.py), small enough to carry
# then on the device machine, with `gpu-bin` carried along:
#   GPU_BUDGET_S=500 scripts/gpu_session.sh [stage ...]
#
# The whole run stays inside GPU_BUDGET_S seconds (default 500; one device command may run 600):
# each stage gets its own limit, cut to what is left, and a stage that would get under 25 s is
# skipped. Results come back as $OUT/summary.txt and $OUT/results.tgz (every stage's stdout and
# stderr, nvidia-smi, GPU memory over time), repacked after every stage so that a run stopped
# from outside still returns what it finished. The device tool returns at most 8 files.
#
# Stages (default: the next questions after the 2026-11-30 sessions, docs/benchmarks.md:
# torch-qwen train-kernels gen-kernels hf-generate profile profile-gen cache burn-matmul dpo):
#   torch-qwen        PyTorch's Qwen2.5-0.5B-shaped training step, f32 and bf16 autocast
#                     (scripts/torch_qwen_step.py, batch 8 x 256)
#   qwen-bf16-train   ours, same model and batch, --precision bf16 (first step = JIT + autotune)
#   train-kernels     qwen-bf16-train with the fused kernels in the autodiff graph (the default)
#                     and with RLHF_GPU_KERNELS=off (burn's composite operations and their
#                     derived backward passes)
#   cache             ours, one bf16 training step twice with one fresh RLHF_GPU_CACHE folder:
#                     the first step cold (kernels compiled, autotuned) and warm (read back)
#   qwen-bf16-gen     ours, generation at batch 8 and 64, prompt 128, 256 new tokens, bf16
#   gen-kernels       ours, qwen-bf16-gen with the fused inference kernels (rlhf_model::cube, the
#                     default) and with RLHF_GPU_KERNELS=off (the composite operations)
#   hf-generate       Hugging Face generate at the same shapes (gpu_peers.py generate)
#   qwen-f32-train    ours, --precision f32
#   profile           ours, one bf16 training step with cubecl's per-kernel profiling on (every
#                     launch synchronised and timed: slow, never mixed with the timed stages)
#   dpo               the learner's whole DPO update (policy and reference log-probs, loss,
#                     clip, AdamW) on tests/fixtures/hf-tiny/tiny-qwen2, f32 and bf16, pairs/s
#   profile-gen       ours, decoding (batch 64, 16 new tokens) with the per-kernel profiling on
#   burn-matmul       ours, `rlhf bench matmul` bf16 at the model's shapes, autotune minimal and
#                     balanced (what cubecl's matmul kernels reach; compare with `matmul`)
#   autotune          ours, bf16 training and generation with CUBECL_AUTOTUNE_LEVEL=balanced
#   matmul            PyTorch matmul ceiling (gpu_peers.py matmul)
#   batch32           PyTorch's and our bf16 training step at batch 32 x 256 (how each scales)
#   qwen-bf16-ckpt    ours, bf16 training with gradient checkpointing (memory vs step time)
#   small             ours, a small model (JIT/autotune cost alone)
#   qwen-fusion-bf16  ours with burn's fusion, training (gpu-bin/rlhf-fusion.xz)
#   qwen-fusion-bf16-gen  the same, generation
#   qwen-fusion-f32-gen   fusion, generation in f32 (decoding with fusion ran on wgpu/lavapipe
#                     in f32; on the H200 it crashed in bf16)
# Never set CUBECL_DEBUG_LOG for a timed stage: it turns on cubecl's kernel profiling, which
# synchronises after every kernel launch.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"
work=/tmp/gpu-work
mkdir -p "$OUT" "$work"
budget="${GPU_BUDGET_S:-500}"
t0=$(date +%s)
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(torch-qwen train-kernels gen-kernels hf-generate profile profile-gen cache burn-matmul dpo)
export PYTHONUNBUFFERED=1
say() { echo "$*" | tee -a "$work/summary.txt"; }
pack() { cp "$work/summary.txt" "$OUT/summary.txt"; tar czf "$OUT/results.tgz" -C "$work" . 2>/dev/null; }

# burn-cuda loads CUDA at run time: point it at the CUDA 13 lib folder holding libnvrtc.so.
nvrtc=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' -not -path '*stubs*' 2>/dev/null | grep 13 | head -1)
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
say "nvrtc: ${nvrtc:-not found}; budget ${budget}s; stages: ${stages[*]}"
nvidia-smi > "$work/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu,clocks.sm --format=csv -lms 500 > "$work/gpu_memory.csv" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null; pack' EXIT

unpack() {
  # xz, or Python's lzma where the image has no xz.
  [ -x "$1" ] || { [ -f "$1.xz" ] && { xz -dkf "$1.xz" 2>/dev/null || python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1.xz" "$1"; } && chmod +x "$1"; }
  [ -x "$1" ] || { [ -f "$1.gz" ] && gunzip -kf "$1.gz" && chmod +x "$1"; }
  [ -x "$1" ] || say "no $1: run scripts/gpu_build.sh and carry gpu-bin"
}
bin="${RLHF_BIN:-gpu-bin/rlhf}"
unpack "$bin"
peers=gpu-bin/gpu_peers.py
[ -f "$peers" ] || peers=../shared/bench/gpu_peers.py

# run NAME LIMIT CMD...: stdout to NAME.out, stderr to NAME.err, the limit cut to the budget.
run() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - ($(date +%s) - t0) - 10))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 25 ]; then say "== $name: skipped, ${left}s of budget left"; return; fi
  say "== $name (limit ${limit}s): $*"
  local start=$(date +%s)
  timeout "$limit" "$@" > "$work/$name.out" 2> "$work/$name.err"
  say "rc=$? after $(($(date +%s) - start))s"
  grep -h RESULT "$work/$name.out" "$work/$name.err" | tee -a "$work/summary.txt"
  grep -hE '^(model|generate|train|weight sync|memory|matmul|dpo)' "$work/$name.err" | tail -12 | tee -a "$work/summary.txt"
  grep -hiE 'error|panic' "$work/$name.err" | head -3 | tee -a "$work/summary.txt"
  pack
}

# The issue's shapes: training batch 8 x 256; generation batch 8 and 64, prompt 128, 256 new.
qwen=(bench model --device cuda:0 --size qwen0.5b)
train=(--train-batch 8 --train-len 256 --steps 3 --no-generate)
gen=(--gen-batch 8,64 --prompt-len 128 --new-tokens 256 --no-train)
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
# No kernel cache shared between stages (each stage's first step pays its compilation, as in
# the earlier sessions); the `cache` stage measures the cache itself.
export RLHF_GPU_CACHE=off
for stage in "${stages[@]}"; do
  case "$stage" in
    torch-qwen) run torch-qwen 90 python3 scripts/torch_qwen_step.py --steps 5 ;;
    qwen-bf16-train) run qwen-bf16-train 180 "$bin" "${qwen[@]}" "${train[@]}" --precision bf16 ;;
    train-kernels)
      run qwen-bf16-train 180 "$bin" "${qwen[@]}" "${train[@]}" --precision bf16
      RLHF_GPU_KERNELS=off run qwen-bf16-train-composite 150 "$bin" "${qwen[@]}" "${train[@]}" --precision bf16 ;;
    cache)
      rm -rf /tmp/gpu-kernel-cache
      RLHF_GPU_CACHE=/tmp/gpu-kernel-cache run cache-cold 150 "$bin" "${qwen[@]}" --train-batch 8 --train-len 256 --steps 1 --no-generate --precision bf16
      RLHF_GPU_CACHE=/tmp/gpu-kernel-cache run cache-warm 120 "$bin" "${qwen[@]}" --train-batch 8 --train-len 256 --steps 1 --no-generate --precision bf16
      say "kernel cache: $(du -sh /tmp/gpu-kernel-cache 2>&1 | cut -f1), $(find /tmp/gpu-kernel-cache -type f 2>/dev/null | wc -l) files" ;;
    qwen-bf16-gen) run qwen-bf16-gen 150 "$bin" "${qwen[@]}" "${gen[@]}" --precision bf16 ;;
    gen-kernels)
      run qwen-bf16-gen 150 "$bin" "${qwen[@]}" "${gen[@]}" --precision bf16
      RLHF_GPU_KERNELS=off run qwen-bf16-gen-composite 150 "$bin" "${qwen[@]}" "${gen[@]}" --precision bf16 ;;
    hf-generate) run hf-generate 90 python3 "$peers" generate ;;
    qwen-f32-train) run qwen-f32-train 120 "$bin" "${qwen[@]}" "${train[@]}" --precision f32 ;;
    profile) CUBECL_DEBUG_LOG="$work/profile.log" CUBECL_DEBUG_OPTION=profile \
      run profile 90 "$bin" "${qwen[@]}" --train-batch 8 --train-len 256 --steps 1 --no-generate --precision bf16
      # Two steps (warm-up and timed) plus autotuning: compare with scripts/count_launches.sh.
      say "profile: $(grep -c '^| ' "$work/profile.log" 2>/dev/null) kernel launches logged" ;;
    profile-gen) CUBECL_DEBUG_LOG="$work/profile-gen.log" CUBECL_DEBUG_OPTION=profile \
      run profile-gen 90 "$bin" "${qwen[@]}" --gen-batch 64 --prompt-len 128 --new-tokens 16 --no-train --precision bf16 ;;
    dpo)
      run dpo-f32 60 "$bin" bench dpo --model tests/fixtures/hf-tiny/tiny-qwen2 --device cuda:0 --batch 8 --steps 12
      run dpo-bf16 60 "$bin" bench dpo --model tests/fixtures/hf-tiny/tiny-qwen2 --device cuda:0 --batch 8 --steps 12 --precision bf16 ;;
    burn-matmul)
      CUBECL_AUTOTUNE_LEVEL=minimal run burn-matmul-minimal 90 "$bin" bench matmul --device cuda:0 --precision bf16
      CUBECL_AUTOTUNE_LEVEL=balanced run burn-matmul-balanced 120 "$bin" bench matmul --device cuda:0 --precision bf16 ;;
    autotune)
      CUBECL_AUTOTUNE_LEVEL=balanced run qwen-bf16-train-balanced 180 "$bin" "${qwen[@]}" "${train[@]}" --precision bf16
      CUBECL_AUTOTUNE_LEVEL=balanced run qwen-bf16-gen-balanced 150 "$bin" "${qwen[@]}" "${gen[@]}" --precision bf16 ;;
    matmul) run matmul 60 python3 "$peers" matmul ;;
    qwen-bf16-ckpt) run qwen-bf16-ckpt 150 "$bin" "${qwen[@]}" "${train[@]}" --precision bf16 --checkpointing ;;
    small) run small 90 "$bin" bench model --device cuda:0 --size small --train-batch 8 --train-len 256 --gen-batch 8 --prompt-len 32 --new-tokens 32 --steps 3 ;;
    batch32)
      run torch-qwen-b32 90 python3 scripts/torch_qwen_step.py --steps 5 --batch 32
      run qwen-bf16-train-b32 150 "$bin" "${qwen[@]}" --train-batch 32 --train-len 256 --steps 3 --no-generate --precision bf16 ;;
    qwen-fusion-bf16-gen) unpack gpu-bin/rlhf-fusion; run qwen-fusion-bf16-gen 150 gpu-bin/rlhf-fusion "${qwen[@]}" "${gen[@]}" --precision bf16 ;;
    qwen-fusion-f32-gen) unpack gpu-bin/rlhf-fusion; run qwen-fusion-f32-gen 150 gpu-bin/rlhf-fusion "${qwen[@]}" "${gen[@]}" --precision f32 ;;
    qwen-fusion-bf16) unpack gpu-bin/rlhf-fusion; run qwen-fusion-bf16 180 gpu-bin/rlhf-fusion "${qwen[@]}" "${train[@]}" --precision bf16 ;;
    *) say "unknown stage $stage" ;;
  esac
done
say "done after $(($(date +%s) - t0))s"
