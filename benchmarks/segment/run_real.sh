#!/usr/bin/env bash
# `run segment` with deepbrain's pretrained 3-D U-Net on nilearn's MNI152 template, against
# deepbrain's recipe in Python and nilearn's brain mask. Usage: run_real.sh [--backend ort]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model="$("$root/benchmarks/real3d/model.sh")"
python="$("$root/benchmarks/segment/venv.sh")"
cd "$root"
cargo build --release -q -p medinfer-cli
target/release/medinfer runtimes install >/dev/null
exec "$python" benchmarks/segment/real_brain.py --medinfer "$root/target/release/medinfer" --model "$model" "$@"
