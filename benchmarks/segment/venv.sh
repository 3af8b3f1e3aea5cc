#!/usr/bin/env bash
# Prints the python of the segment benchmarks' venv (MONAI, torch, onnxruntime, nibabel,
# nilearn), making it once outside the repo.
set -euo pipefail
venv="${MEDINFER_SEGMENT_VENV:-$HOME/.cache/medinfer/seg-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, monai, onnxruntime, nibabel, nilearn, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy scipy nibabel nilearn onnx monai==1.5.1 onnxruntime==1.31.1 torch==2.9.1 >&2
fi
echo "$venv/bin/python"
