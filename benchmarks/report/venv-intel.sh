#!/usr/bin/env bash
# Prints the python of optimum-intel's venv (optimum-intel with OpenVINO, torch, transformers),
# made once outside the repo: the OpenVINO peer of the report benchmarks (peers.py ov). Its own
# venv because optimum-intel pins optimum / openvino versions the report venv does not use.
set -euo pipefail
venv="${MEDINFER_INTEL_VENV:-$HOME/.cache/medinfer/venv-optimum-intel}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, optimum.intel, openvino" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "optimum-intel[openvino]==2.2.0" torch==2.9.1 transformers==4.57.1 pillow >&2
fi
echo "$venv/bin/python"
