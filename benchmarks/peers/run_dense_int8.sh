#!/usr/bin/env bash
# INT8 of a real pretrained dense-prediction model with dynamic H/W (PP-OCRv4 text detector from
# the rapidocr_onnxruntime wheel): medinfer quantize (with and without accuracy control) vs NNCF,
# IoU against FP32 and latency on ONNX Runtime and OpenVINO, side by side in one run.
# Usage: benchmarks/peers/run_dense_int8.sh [--rounds 8] [--runs 10] [--json out.json]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MEDINFER_DENSE_VENV:-$HOME/.cache/medinfer/dense-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openvino, onnxruntime, nncf, onnx, PIL" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy onnxruntime==1.31.1 openvino==2026.4.1 nncf==3.4.0 onnx pillow
fi
cd "$root"
cargo build --release -q -p medinfer-cli
exec "$venv/bin/python" benchmarks/peers/dense_int8.py --medinfer "$root/target/release/medinfer" "$@"
