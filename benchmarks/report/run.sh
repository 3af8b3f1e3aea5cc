#!/usr/bin/env bash
# Report generation, side by side in one run on one model export: medinfer (ONNX Runtime,
# OpenVINO fp32 and bf16) vs stock PyTorch `generate`, optimum's ONNX Runtime pipeline and
# optimum-intel's OpenVINO pipeline (fp32, bf16), each generating TOKENS tokens (end token
# ignored) RUNS times from the same pixel values.
#   benchmarks/report/run.sh [EXPORT_DIR] [--runs 100] [--tokens 24]
# Default EXPORT_DIR: the tiny parity model (crates/medinfer-generate/tests/fixtures/tiny-ved).
# A trained export without pixels0.npy (models/report) gets one: a held-out phantom radiograph
# (seed 100000) through its processor, and its PyTorch checkpoint's greedy tokens as the
# reference (benchmarks/report/prepare.py).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export_dir="$root/crates/medinfer-generate/tests/fixtures/tiny-ved"
runs=100
tokens=24
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    *) export_dir="$1"; shift ;;
  esac
done
python="$("$root/training/report/venv.sh")"
cargo build --release -q -p medinfer-cli --manifest-path "$root/Cargo.toml"
mi="$root/target/release/medinfer"
"$mi" runtimes install >/dev/null
ipython="$("$root/benchmarks/report/venv-intel.sh")"
threads="$(nproc)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
if [ ! -f "$export_dir/pixels0.npy" ]; then
  mkdir "$out/export"
  for f in "$export_dir"/*; do ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$out/export/"; done
  "$mi" phantom cxr -o "$out/img" --count 1 --first-seed 100000 >/dev/null
  "$python" "$root/benchmarks/report/prepare.py" "$export_dir" "$out/img/cxr-100000.png" "$out/export" >&2
  export_dir="$out/export"
fi
"$mi" bench-generate "$export_dir" --image "$export_dir/pixels0.npy" -B ort,openvino --runs "$runs" \
  --max-new-tokens "$tokens" --ignore-eos --threads "$threads" --json > "$out/medinfer.json"
"$mi" bench-generate "$export_dir" --image "$export_dir/pixels0.npy" -B openvino --precision bf16 --runs "$runs" \
  --max-new-tokens "$tokens" --ignore-eos --threads "$threads" --json > "$out/medinfer-bf16.json"
for p in torch ort; do
  "$python" "$root/benchmarks/report/peers.py" "$p" "$export_dir" --tokens "$tokens" --runs "$runs" \
    --threads "$threads" 2>/dev/null | tail -1 > "$out/$p.json"
done
for p in f32 bf16; do
  "$ipython" "$root/benchmarks/report/peers.py" ov "$export_dir" --ov-precision "$p" --tokens "$tokens" --runs "$runs" \
    --threads "$threads" 2>/dev/null | tail -1 > "$out/ov-$p.json"
done
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
m = json.load(open(os.path.join(d, "medinfer.json")))
m["rows"] += json.load(open(os.path.join(d, "medinfer-bf16.json")))["rows"]
t = json.load(open(os.path.join(d, "torch.json")))
o = json.load(open(os.path.join(d, "ort.json")))
print(f"CPU: {m['cpu']}")
print(f"{'who':<34} {'whole generation (ms)':>22} {'vs PyTorch':>11} {'RSS MB':>8}")
print(f"{'PyTorch ' + t['torch'] + ' generate (eager fp32)':<34} {t['mean_ms']:>13.2f} +- {t['std_ms']:<5.2f} {1.0:>10.2f}x {t['peak_rss_mb']:>8.0f}")
print(f"{'optimum ORTModelForVision2Seq':<34} {o['mean_ms']:>13.2f} +- {o['std_ms']:<5.2f} {t['mean_ms']/o['mean_ms']:>10.2f}x {o['peak_rss_mb']:>8.0f}")
for p in ("f32", "bf16"):
    v = json.load(open(os.path.join(d, f"ov-{p}.json")))
    print(f"{'optimum-intel ' + v['optimum_intel'] + ' OpenVINO ' + p:<34} {v['mean_ms']:>13.2f} +- {v['std_ms']:<5.2f} {t['mean_ms']/v['mean_ms']:>10.2f}x {v['peak_rss_mb']:>8.0f}")
for r in m["rows"]:
    s = r["total_ms"]
    print(f"{'medinfer ' + r['backend'] + ' ' + r['precision']:<34} {s['mean']:>13.2f} +- {s['std']:<5.2f} {t['mean_ms']/s['mean']:>10.2f}x {r['peak_rss_mb']:>8.0f}"
          f"   (first token {r['first_token_ms']:.2f} ms, {r['per_token_ms']:.3f} ms/token)")
print(f"{t['runs']} runs each, {t['tokens']} tokens, EOS ignored")
PY
