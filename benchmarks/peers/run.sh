#!/usr/bin/env bash
# Sets up the peers' Python environment (once, outside the repo) and runs peers.py on a zoo model.
# Usage: benchmarks/peers/run.sh MODEL [--runs 100] [--warmup 10] [--json out.json]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model="${1:?usage: run.sh MODEL [peers.py options]}"; shift
venv="${MEDINFER_PEERS_VENV:-$HOME/.cache/medinfer/peers-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision, openvino, onnxruntime" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy onnxruntime==1.31.1 openvino==2026.4.1
  # Stock PyTorch as a user gets it from PyPI (the CUDA build: it will not import without its
  # nvidia-* packages, although inference here runs on the CPU only).
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.9.1 torchvision==0.24.1
fi
cd "$root"
cargo build --release -q -p medinfer-cli
onnx="$(mktemp -d)/$model.onnx"
target/release/medinfer zoo build "$model" -o "$onnx"
exec "$venv/bin/python" benchmarks/peers/peers.py "$model" --onnx "$onnx" --medinfer "$root/target/release/medinfer" "$@"
