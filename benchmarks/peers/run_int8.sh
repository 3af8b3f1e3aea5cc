#!/usr/bin/env bash
# INT8 side by side (medinfer quantize vs NNCF vs onnxruntime.quantization) on a zoo model.
# Usage: benchmarks/peers/run_int8.sh MODEL [--rounds 12] [--runs 20] [--json out.json]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model="${1:?usage: run_int8.sh MODEL [int8.py options]}"; shift
venv="${MEDINFER_PEERS_VENV:-$HOME/.cache/medinfer/peers-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision, openvino, onnxruntime, nncf, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy onnxruntime==1.31.1 openvino==2026.4.1 nncf==3.4.0 onnx
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.9.1 torchvision==0.24.1
fi
cd "$root"
cargo build --release -q -p medinfer-cli
exec "$venv/bin/python" benchmarks/peers/int8.py "$model" --medinfer "$root/target/release/medinfer" "$@"
