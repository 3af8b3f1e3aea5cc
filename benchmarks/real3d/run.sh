#!/usr/bin/env bash
# INT8 of a real pretrained 3-D model (deepbrain's brain-extraction U-Net, from its PyPI wheel):
# medinfer quantize per target, with and without accuracy control, against NNCF's defaults;
# mask IoU against FP32 on realistic head volumes made from real MRI in nibabel's and nilearn's
# packages; latency on ONNX Runtime and OpenVINO in paired rounds; the kernels each engine ran.
# Usage: benchmarks/real3d/run.sh [--rounds 4] [--runs 3] [--json out.json]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${MEDINFER_HOME:-$HOME/.cache/medinfer}"
model="$("$root/benchmarks/real3d/model.sh")"
venv="$cache/real3d-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openvino, onnxruntime, nncf, onnx, nibabel, nilearn, scipy" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy scipy nibabel nilearn onnxruntime==1.31.1 openvino==2026.4.1 nncf==3.4.0 onnx
fi
cd "$root"
cargo build --release -q -p medinfer-cli
exec "$venv/bin/python" benchmarks/real3d/real3d.py --medinfer "$root/target/release/medinfer" --model "$model" "$@"
