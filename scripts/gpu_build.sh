#!/usr/bin/env bash
# Builds the CUDA-enabled `rlhf` for a `device` session and packs it to travel: the device tool
# carries at most 64 MiB of ignored paths, and the release binary with its line tables is
# ~185 MB (35 MB stripped without CUDA). Output: gpu-bin/rlhf.gz (carry `gpu-bin`);
# scripts/gpu_session.sh unpacks it on the device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --features cuda -p rlhf-cli
target="${CARGO_TARGET_DIR:-target}"
mkdir -p gpu-bin
strip -o gpu-bin/rlhf "$target/release/rlhf"
gzip -9 -f gpu-bin/rlhf
ls -la gpu-bin/
