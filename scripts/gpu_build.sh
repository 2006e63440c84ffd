#!/usr/bin/env bash
# Builds the CUDA-enabled `rlhf` for a `device` session and packs it to travel: the device tool
# carries at most 64 MiB of ignored paths, and the release binary with its line tables is
# ~185 MB (35 MB stripped without CUDA). Output: gpu-bin/rlhf.gz and gpu-bin/rlhf-fusion.gz
# (burn's operation fusion on), and a copy of ../shared/bench/gpu_peers.py (the `../shared`
# beside the checkout does not travel to the device machine). The working tree (~9 MB) and
# what is carried share a 64 MiB limit: carry `gpu-bin/rlhf.gz` and `gpu-bin/gpu_peers.py` in
# one call and `gpu-bin/rlhf-fusion.gz` in another (what a call unpacked stays while the machine
# is warm). scripts/gpu_session.sh unpacks them there.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
mkdir -p gpu-bin
for variant in cuda cuda-fusion; do
  cargo build --release --locked --features "$variant" -p rlhf-cli
  name=rlhf
  [ "$variant" = cuda-fusion ] && name=rlhf-fusion
  strip -o "gpu-bin/$name" "$target/release/rlhf"
  gzip -9 -f "gpu-bin/$name"
done
cp ../shared/bench/gpu_peers.py gpu-bin/ 2>/dev/null || echo "no ../shared/bench/gpu_peers.py: the peers stage will be skipped" >&2
ls -la gpu-bin/
