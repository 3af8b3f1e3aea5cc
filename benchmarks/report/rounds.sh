#!/usr/bin/env bash
# The foundation-sized report benchmark in interleaved rounds: each round runs PyTorch
# `generate` and medinfer's two 4-bit configurations (OV bf16 or int8 encoder + ORT 4-bit
# decoder) for --runs-per-round whole generations each, the order alternating between rounds,
# so that a host whose load drifts over the minutes of a run slows every side alike. Reports the
# pooled mean +- std per side (rounds x runs-per-round generations) and the per-round ratio to
# PyTorch (median and range): the figure to quote on a shared machine. Run
# benchmarks/report/foundation.sh --int4-only once first (it makes the model copies).
#   benchmarks/report/rounds.sh [--rounds 10] [--runs-per-round 10] [--tokens 128] [--out DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
rounds=10; per=10; tokens=128; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --runs-per-round) per="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --out) keep="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
python="$("$root/training/report/venv.sh")"
cache="${MEDINFER_CACHE:-$HOME/.cache/medinfer}"
fp32="$cache/report-foundation"; q4="$cache/report-foundation-q4b128"; q4i8="$cache/report-foundation-q4i8"
for d in "$fp32" "$q4" "$q4i8"; do
  [ -f "$d/encoder_model.onnx" ] || { echo "$d is missing: run benchmarks/report/foundation.sh --int4-only first" >&2; exit 1; }
done
cargo build --release -q -p medinfer-cli --manifest-path "$root/Cargo.toml"
mi="$root/target/release/medinfer"
out="$(mktemp -d)"; trap '[ -n "$keep" ] && mkdir -p "$keep" && cp "$out"/*.json "$keep"/; rm -rf "$out"' EXIT
mrow() {  # file, dir
  "$mi" bench-generate "$2" -B ort --encoder-backend openvino --encoder-precision bf16 --image "$fp32/pixels0.npy" \
    --runs "$per" --max-new-tokens "$tokens" --ignore-eos --json > "$out/$1.json"
}
trow() {
  "$python" "$root/benchmarks/report/peers.py" torch "$fp32" --tokens "$tokens" --runs "$per" --threads "$(nproc)" \
    2>/dev/null | tail -1 > "$out/$1.json"
}
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then trow "torch-$r"; mrow "bf16-$r" "$q4"; mrow "int8-$r" "$q4i8"
  else mrow "int8-$r" "$q4i8"; mrow "bf16-$r" "$q4"; trow "torch-$r"; fi
  echo "round $r of $rounds done" >&2
done
python3 - "$out" "$rounds" <<'PY'
import json, sys, os, statistics as st
d, rounds = sys.argv[1], int(sys.argv[2])
def load(n): return json.load(open(os.path.join(d, n + ".json")))
def mean_std(k):  # per round (mean, std, runs) -> pooled
    rs = []
    for r in range(1, rounds + 1):
        j = load(f"{k}-{r}")
        if k == "torch":
            rs.append((j["mean_ms"], j["std_ms"], j["runs"]))
        else:
            t = j["rows"][0]["total_ms"]; rs.append((t["mean"], t["std"], j["rows"][0]["runs"]))
    n = sum(x[2] for x in rs)
    m = sum(x[0] * x[2] for x in rs) / n
    var = sum((x[1] ** 2 + x[0] ** 2) * x[2] for x in rs) / n - m * m
    return m, max(var, 0) ** 0.5, [x[0] for x in rs], n
t = mean_std("torch")
cpu = load("bf16-1")["cpu"]
print(f"CPU: {cpu}")
print(f"{'who':<46} {'whole generation (ms)':>22} {'vs PyTorch':>10} {'per-round ratio: median (min-max)':>36}")
print(f"{'PyTorch ' + load('torch-1')['torch'] + ' generate (eager fp32)':<46} {t[0]:>12.0f} +- {t[1]:<6.0f} {1.0:>9.2f}x")
for k, label in (("bf16", "OV bf16 encoder + ORT 4-bit decoder"), ("int8", "OV int8 encoder + ORT 4-bit decoder")):
    m = mean_std(k)
    ratios = [a / b for a, b in zip(t[2], m[2])]
    print(f"{'medinfer ' + label:<46} {m[0]:>12.0f} +- {m[1]:<6.0f} {t[0] / m[0]:>9.2f}x {st.median(ratios):>14.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
print(f"{rounds} rounds x {t[3] // rounds} runs per side, {load('bf16-1')['rows'][0]['new_tokens']} tokens, EOS ignored, order alternating per round")
PY
