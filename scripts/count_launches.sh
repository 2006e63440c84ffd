#!/usr/bin/env bash
# GPU kernel launches per training step and per decoding call, counted without a GPU: burn's
# wgpu backend runs CubeCL's kernels on Mesa's CPU Vulkan device (lavapipe), one log line per
# kernel with CubeCL's profiling on (crates/rlhf-learner/examples/launches.rs). Each phase runs
# once and twice; the difference is one steady-state repetition (the first also compiles).
#   apt-get install mesa-vulkan-drivers   # once, where there is no GPU
#   LAYERS=24 scripts/count_launches.sh [forward backward step decode infer] [--by-kernel]
set -euo pipefail
cd "$(dirname "$0")/.."
by_kernel=0
phases=()
for a in "$@"; do
  case "$a" in
    --by-kernel) by_kernel=1 ;;
    *) phases+=("$a") ;;
  esac
done
[ ${#phases[@]} -eq 0 ] && phases=(forward backward step decode infer)
cargo build --release -q -p rlhf-learner --features "${FEATURES:-wgpu}" --example launches
bin="${CARGO_TARGET_DIR:-target}/release/examples/launches"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The kernel names of one run, one per line (CubeCL's profiling lines: "| time | name | ...").
kernels() {
  CUBECL_DEBUG_LOG="$work/$1-$2.log" CUBECL_DEBUG_OPTION=profile XDG_RUNTIME_DIR="$work" \
    "$bin" "$1" "$2" "${LAYERS:-4}" 2> "$work/$1-$2.err" > /dev/null || { cat "$work/$1-$2.err" >&2; exit 1; }
  grep '^| ' "$work/$1-$2.log" | awk -F'|' '{gsub(/ /, "", $3); print $3}' > "$work/$1-$2.txt"
}
for phase in "${phases[@]}"; do
  kernels "$phase" 1
  kernels "$phase" 2
  python3 - "$phase" "$work/$phase-1.txt" "$work/$phase-2.txt" "$by_kernel" "${LAYERS:-4}" <<'PY'
import collections, sys
phase, one, two, by_kernel = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
a = collections.Counter(open(one).read().split())
b = collections.Counter(open(two).read().split())
total = sum(b.values()) - sum(a.values())
print(f"{phase}: {total} launches per repetition ({sys.argv[5]} layers)")
if by_kernel:
    for name, n in sorted(((k, b[k] - a[k]) for k in b), key=lambda x: -x[1]):
        if n:
            print(f"  {n:6d} {name}")
PY
done
