#!/usr/bin/env bash
# Builds the CUDA-enabled `rlhf` for a `device` session and packs it to travel: the device tool
# carries at most 64 MiB (working tree ~10 MB plus what `carry` names). Output: gpu-bin/rlhf.xz
# (`--features cuda`) and gpu-bin/rlhf-fusion.xz (`--features cuda-fusion`: burn's operation
# fusion on), each stripped (~110 MB) and xz-packed (~16-19 MB), and a copy of
# ../shared/bench/gpu_peers.py (the `../shared` beside the checkout does not travel). Carry
# `gpu-bin` whole; scripts/gpu_session.sh unpacks the binaries there. On the 2-core dev machine
# each variant takes 10-16 minutes to build from scratch (the feature sets share no burn crates).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
mkdir -p gpu-bin
for variant in cuda cuda-fusion; do
  cargo build --release --locked --features "$variant" -p rlhf-cli
  name=rlhf
  [ "$variant" = cuda-fusion ] && name=rlhf-fusion
  strip -o "gpu-bin/$name" "$target/release/rlhf"
  xz -9 -f "gpu-bin/$name"
done
cp ../shared/bench/gpu_peers.py gpu-bin/ 2>/dev/null || echo "no ../shared/bench/gpu_peers.py: the hf-generate and matmul stages will fail" >&2
ls -la gpu-bin/
