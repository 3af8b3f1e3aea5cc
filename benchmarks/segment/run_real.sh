#!/usr/bin/env bash
# `run segment` with deepbrain's pretrained 3-D U-Net on nilearn's MNI152 template, against
# deepbrain's recipe in Python and nilearn's brain mask. Usage: run_real.sh [--backend ort]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model="$("$root/benchmarks/real3d/model.sh")"
venv="${MEDINFER_SEGMENT_VENV:-$HOME/.cache/medinfer/seg-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, monai, onnxruntime, nibabel, nilearn, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy scipy nibabel nilearn onnx monai==1.5.1 onnxruntime==1.31.1 torch==2.9.1
fi
cd "$root"
cargo build --release -q -p medinfer-cli
target/release/medinfer runtimes install >/dev/null
exec "$venv/bin/python" benchmarks/segment/real_brain.py --medinfer "$root/target/release/medinfer" --model "$model" "$@"
