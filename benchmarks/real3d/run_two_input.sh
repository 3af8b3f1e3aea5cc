#!/usr/bin/env bash
# A two-input model (image + clinical vector) through medinfer's INT8 recipe: accuracy, speed on
# ONNX Runtime and OpenVINO, kernels each ran. Usage: run_two_input.sh [--rounds 3] [--json F]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="$("$root/benchmarks/segment/venv.sh")"
"$python" -c "import openvino" 2>/dev/null || "$python" -m pip install -q --disable-pip-version-check openvino==2026.4.1
cd "$root"
cargo build --release -q -p medinfer-cli
target/release/medinfer runtimes install >/dev/null
exec "$python" benchmarks/real3d/two_input.py --medinfer "$root/target/release/medinfer" "$@"
