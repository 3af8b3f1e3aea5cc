#!/usr/bin/env bash
# HTTP serving throughput: medinfer serve vs medinfer bench vs FastAPI + onnxruntime, one run.
# Usage: benchmarks/server/run.sh [--model resnet18-ct] [--seconds 20] [--concurrency 8,16] [--deploy DIR] [--json out.json]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MEDINFER_SERVER_VENV:-$HOME/.cache/medinfer/server-bench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import fastapi, uvicorn, onnxruntime, numpy, openvino" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check fastapi==0.122.0 uvicorn==0.38.0 numpy==2.4.6 onnxruntime==1.31.1 openvino==2026.4.1
fi
kvenv="${MEDINFER_KSERVE_VENV:-$HOME/.cache/medinfer/server-bench-kserve-venv}"
if [ ! -x "$kvenv/bin/python" ] || ! "$kvenv/bin/python" -c "import kserve, onnxruntime" 2>/dev/null; then
  python3 -m venv "$kvenv"
  "$kvenv/bin/pip" install -q --disable-pip-version-check kserve==0.21.0 numpy==2.4.6 onnxruntime==1.31.1 openvino==2026.4.1
fi
oha="${OHA:-$(command -v oha || true)}"
if [ -z "$oha" ]; then
  cargo install oha --locked --root "$HOME/.cache/medinfer/oha"
  oha="$HOME/.cache/medinfer/oha/bin/oha"
fi
cd "$root"
cargo build --release -q -p medinfer-cli
exec "$venv/bin/python" benchmarks/server/bench.py --medinfer "$root/target/release/medinfer" --oha "$oha" --kserve-python "$kvenv/bin/python" "$@"
