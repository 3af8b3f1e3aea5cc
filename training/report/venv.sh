#!/usr/bin/env bash
# Prints the python of the report-generation venv (torch, transformers, tokenizers, optimum-onnx,
# onnxruntime), making it once outside the repo. Used by the fixture maker and the peers benchmark.
set -euo pipefail
venv="${MEDINFER_REPORT_VENV:-$HOME/.cache/medinfer/report-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, tokenizers, optimum.exporters.onnx, onnxruntime" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.9.1 transformers==4.57.1 optimum-onnx==0.1.0 onnx onnxruntime==1.31.1 pillow >&2
fi
echo "$venv/bin/python"
