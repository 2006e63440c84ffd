#!/usr/bin/env bash
# One prepared script for a `device` session (issue 5): burn-cuda and PyTorch side by side on
# the same GPU, results under $OUT. Build the binary here first:
#   cargo build --release --features cuda -p rlhf-cli
# then run this script on the device machine with target/release/rlhf carried along.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
# burn-cuda loads CUDA at run time: point it at the CUDA 13 lib folder holding libnvrtc.so.
nvrtc=$(find / -name 'libnvrtc.so*' -path '*13*' -not -path '*stubs*' 2>/dev/null | head -1)
[ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
echo "nvrtc: ${nvrtc:-not found}" | tee "$OUT/env.txt"
nvidia-smi >> "$OUT/env.txt" 2>&1
export CUBECL_DEBUG_LOG="$OUT/cubecl.log"
bin=target/release/rlhf
# GPU memory in use, twice a second, next to the estimates `bench model` prints.
nvidia-smi --query-gpu=timestamp,memory.used --format=csv -lms 500 > "$OUT/gpu_memory.csv" 2>&1 &
smi=$!
trap 'kill $smi 2>/dev/null' EXIT
run() { local name=$1 limit=$2; shift 2; echo "== $name: $*" | tee -a "$OUT/summary.txt"; timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"; echo "rc=$?" | tee -a "$OUT/summary.txt"; tail -3 "$OUT/$name.err" | tee -a "$OUT/summary.txt"; }
# Small first: shows JIT/autotune cost without a 0.5B model in the way.
run tiny-cuda 120 "$bin" bench model --device cuda:0 --size small --train-batch 8 --train-len 256 --gen-batch 8 --prompt-len 32 --new-tokens 32 --steps 3
CUBECL_AUTOTUNE_LEVEL=minimal run qwen-cuda-minimal 240 "$bin" bench model --device cuda:0 --size qwen0.5b --train-batch 8 --train-len 256 --gen-batch 8,64 --prompt-len 128 --new-tokens 256 --steps 3
timeout 240 python3 ../shared/bench/gpu_peers.py train generate > "$OUT/peers.txt" 2>&1
grep RESULT "$OUT/peers.txt" | tee -a "$OUT/summary.txt"
