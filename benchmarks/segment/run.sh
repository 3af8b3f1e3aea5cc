#!/usr/bin/env bash
# `medinfer run segment` vs MONAI's sliding window (PyTorch and onnxruntime predictors): time
# and peak memory on a 512 x 512 x 600 CT, in one run. Sets up its own venv (outside the repo).
# Usage: benchmarks/segment/run.sh [--rounds 2] [--json out.json] [--skip-time] [--skip-memory]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MEDINFER_SEGMENT_VENV:-$HOME/.cache/medinfer/seg-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, monai, onnxruntime, nibabel, nilearn, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy scipy nibabel nilearn onnx monai==1.5.1 onnxruntime==1.31.1 torch==2.9.1
fi
cd "$root"
cargo build --release -q -p medinfer-cli
target/release/medinfer runtimes install >/dev/null
exec "$venv/bin/python" benchmarks/segment/segment_bench.py --medinfer "$root/target/release/medinfer" "$@"
