#!/usr/bin/env bash
# Prints the path of deepbrain's brain-extraction U-Net as ONNX, converting it once from the
# deepbrain wheel on PyPI (TensorFlow frozen graph -> tf2onnx, in its own venv).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${MEDINFER_HOME:-$HOME/.cache/medinfer}"
model="$cache/models/deepbrain-extractor.onnx"
if [ ! -f "$model" ]; then
  tfv="$cache/tf-venv"
  if [ ! -x "$tfv/bin/python" ] || ! "$tfv/bin/python" -c "import tensorflow, tf2onnx" 2>/dev/null; then
    python3 -m venv "$tfv"
    "$tfv/bin/pip" install -q --disable-pip-version-check tensorflow-cpu==2.21.0 tf2onnx==1.17.0 >&2
  fi
  mkdir -p "$cache/models"
  "$tfv/bin/python" "$root/benchmarks/real3d/convert_deepbrain.py" "$model.part" >&2 2>/dev/null
  mv "$model.part" "$model"
fi
echo "$model"
