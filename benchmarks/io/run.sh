#!/usr/bin/env bash
# Image I/O benchmark: medinfer (1 core and all cores) next to the usual Python route, on the
# same files, in one run. Usage: benchmarks/io/run.sh [RUNS]   (default 10)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
runs="${1:-10}"
venv="${MEDINFER_PEERS_VENV:-$HOME/.cache/medinfer/peers-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pydicom, PIL, skimage" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check numpy pydicom pillow scikit-image
fi
data="${MEDINFER_IO_DATA:-$HOME/.cache/medinfer/io-bench}"
[ -f "$data/cxr.png" ] && [ -d "$data/ct" ] || "$venv/bin/python" "$root/benchmarks/io/make_data.py" "$data"
cd "$root"
cargo build --release -q -p medinfer-cli
m=target/release/medinfer
for task in cxr ct; do
  p="$data/cxr.png"; [ "$task" = ct ] && p="$data/ct"
  echo "== $task: medinfer, all cores";  "$m" bench-io "$task" "$p" --runs "$runs" --json
  echo "== $task: medinfer, 1 core";     taskset -c 0 "$m" bench-io "$task" "$p" --runs "$runs" --json
  echo "== $task: Python route";         "$venv/bin/python" benchmarks/io/python_route.py "$task" "$p" --runs "$runs"
done
