#!/usr/bin/env bash
# One prepared script for a `device` session (issue 5): burn-cuda and PyTorch side by side on
# the same GPU, results under $OUT. Build and pack the binary here first:
#   scripts/gpu_build.sh          # gpu-bin/rlhf.gz, small enough to carry
# then run this script on the device machine with `gpu-bin` carried along.
#
# Stages (arguments; default: all but the fusion ones, in this order): peers (PyTorch matmul and
# HF generate at the issue's shapes), torch-qwen (PyTorch's Qwen2.5-0.5B-shaped training step,
# f32 and bf16 autocast), small, qwen-f32, qwen-bf16, qwen-bf16-ckpt (gradient checkpointing),
# small-fusion and qwen-fusion-bf16 (burn's operation fusion on). One device command may run 10 minutes at most: split the stages over
# calls, e.g. `peers torch-qwen small`, then `qwen-f32 qwen-bf16`, then the fusion ones (the
# machine stays warm for a short while between calls).
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(peers torch-qwen small qwen-f32 qwen-bf16)
# burn-cuda loads CUDA at run time: point it at the CUDA 13 lib folder holding libnvrtc.so.
nvrtc=$(find / -name 'libnvrtc.so*' -path '*13*' -not -path '*stubs*' 2>/dev/null | head -1)
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
echo "nvrtc: ${nvrtc:-not found}" | tee -a "$OUT/env.txt"
nvidia-smi >> "$OUT/env.txt" 2>&1
export CUBECL_DEBUG_LOG="$OUT/cubecl.log"
unpack() { [ -x "$1" ] || { [ -f "$1.gz" ] && gunzip -kf "$1.gz" && chmod +x "$1"; }; [ -x "$1" ] || echo "no $1: run scripts/gpu_build.sh and carry gpu-bin" | tee -a "$OUT/summary.txt"; }
bin="${RLHF_BIN:-gpu-bin/rlhf}"
fused=gpu-bin/rlhf-fusion
unpack "$bin"
# GPU memory in use, twice a second, next to the estimates `bench model` prints.
nvidia-smi --query-gpu=timestamp,memory.used --format=csv -lms 500 >> "$OUT/gpu_memory.csv" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
run() { local name=$1 limit=$2; shift 2; echo "== $name: $*" | tee -a "$OUT/summary.txt"; timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "rc=$?" | tee -a "$OUT/summary.txt"; tail -3 "$OUT/$name.err" | tee -a "$OUT/summary.txt"; }
# The issue's reference shapes: training batch 8 x 256; generation batch 8 and 64, prompt 128,
# 256 new tokens.
qwen=(bench model --device cuda:0 --size qwen0.5b --train-batch 8 --train-len 256 --gen-batch 8,64 --prompt-len 128 --new-tokens 256 --steps 3)
for stage in "${stages[@]}"; do
  case "$stage" in
    # PyTorch first: its numbers arrive even if burn stalls.
    peers)
      peers=gpu-bin/gpu_peers.py
      [ -f "$peers" ] || peers=../shared/bench/gpu_peers.py
      timeout 150 python3 "$peers" matmul generate > "$OUT/peers.txt" 2>&1
      grep RESULT "$OUT/peers.txt" | tee -a "$OUT/summary.txt" ;;
    torch-qwen)
      timeout 120 python3 scripts/torch_qwen_step.py > "$OUT/torch-qwen.txt" 2>&1
      grep RESULT "$OUT/torch-qwen.txt" | tee -a "$OUT/summary.txt" ;;
    # Small: shows JIT/autotune cost without a 0.5B model in the way.
    small) run small-cuda 90 "$bin" bench model --device cuda:0 --size small --train-batch 8 --train-len 256 --gen-batch 8 --prompt-len 32 --new-tokens 32 --steps 3 ;;
    qwen-f32) CUBECL_AUTOTUNE_LEVEL=minimal run qwen-cuda-f32 150 "$bin" "${qwen[@]}" --precision f32 ;;
    qwen-bf16) CUBECL_AUTOTUNE_LEVEL=minimal run qwen-cuda-bf16 150 "$bin" "${qwen[@]}" --precision bf16 ;;
    # Layer-level gradient checkpointing: memory (gpu_memory.csv) and step time against qwen-bf16.
    qwen-bf16-ckpt) CUBECL_AUTOTUNE_LEVEL=minimal run qwen-cuda-bf16-ckpt 150 "$bin" bench model --device cuda:0 --size qwen0.5b --train-batch 8 --train-len 256 --gen-batch 1 --prompt-len 4 --new-tokens 2 --steps 3 --precision bf16 --checkpointing ;;
    small-fusion) unpack "$fused"; run small-cuda-fusion 90 "$fused" bench model --device cuda:0 --size small --train-batch 8 --train-len 256 --gen-batch 8 --prompt-len 32 --new-tokens 32 --steps 3 ;;
    qwen-fusion-bf16) unpack "$fused"; CUBECL_AUTOTUNE_LEVEL=minimal run qwen-cuda-fusion-bf16 150 "$fused" "${qwen[@]}" --precision bf16 ;;
    *) echo "unknown stage $stage" | tee -a "$OUT/summary.txt" ;;
  esac
done
# cubecl's autotune results (kept under target/ of the device copy between calls of a session).
cache=$(find target -maxdepth 4 -iname '*autotune*' 2>/dev/null | head -1)
if [ -n "$cache" ]; then tar czf "$OUT/autotune-cache.tgz" "$cache"; fi
