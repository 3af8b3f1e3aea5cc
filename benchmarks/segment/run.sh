#!/usr/bin/env bash
# `medinfer run segment` vs MONAI's sliding window (PyTorch and onnxruntime predictors): time
# and peak memory on a 512 x 512 x 600 CT, in one run. Sets up its own venv (outside the repo).
# Usage: benchmarks/segment/run.sh [--rounds 2] [--json out.json] [--skip-time] [--skip-memory]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="$("$root/benchmarks/segment/venv.sh")"
cd "$root"
cargo build --release -q -p medinfer-cli
target/release/medinfer runtimes install >/dev/null
exec "$python" benchmarks/segment/segment_bench.py --medinfer "$root/target/release/medinfer" "$@"
