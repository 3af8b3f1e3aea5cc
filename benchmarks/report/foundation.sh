#!/usr/bin/env bash
# The foundation-sized report model (benchmarks/report/foundation.py: ViT-B/16 at 448 px +
# GPT-2-base decoder with cross attention, seeded) generating 128 tokens, side by side in one
# run: stock PyTorch `generate` and medinfer's configurations (engines, BF16, 8-bit weight-only
# decoder, encoder and decoder on different engines). Every configuration's greedy tokens are
# checked against PyTorch's first (reference.json). --with-intel adds optimum-intel's OpenVINO
# pipeline (fp32 and bf16, on the same ONNX files; its own venv); --main-rows runs only
# medinfer's OpenVINO fp32 / bf16 rows (the same engine as optimum-intel) and its fastest mixes;
# --weight-only-rows only the OpenVINO bf16 encoder + ONNX Runtime 8- and 4-bit decoder mixes
# (with PyTorch, as always). The 4-bit copy uses blocks of 128 (`quantize-weights --bits 4
# --block 128`); on this seeded model its tokens differ from fp32's (near-uniform logits),
# which the table reports; its accuracy is measured on the trained model (cxr-eval).
# --int4-only: PyTorch and the 4-bit mixes alone: with the BF16 encoder, and with the encoder's
# products in INT8 (`quantize-weights --encoder-int8`, calibrated on 32 phantom radiographs,
# seeds 5000-5031). --out DIR keeps every row's JSON.
#   benchmarks/report/foundation.sh [--runs 5] [--tokens 128] [--with-optimum] [--with-intel] [--main-rows] [--weight-only-rows] [--int4-only] [--out DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
runs=5; tokens=128; optimum=0; intel=0; main_rows=0; wo_rows=0; int4_only=0; keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --with-optimum) optimum=1; shift ;;
    --with-intel) intel=1; shift ;;
    --main-rows) main_rows=1; shift ;;
    --weight-only-rows) wo_rows=1; main_rows=1; shift ;;
    --int4-only) int4_only=1; wo_rows=1; main_rows=1; shift ;;
    --out) keep="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
python="$("$root/training/report/venv.sh")"
cache="${MEDINFER_CACHE:-$HOME/.cache/medinfer}"
fp32="$cache/report-foundation"
q8="$cache/report-foundation-q8"
q4="$cache/report-foundation-q4b128"
cargo build --release -q -p medinfer-cli --manifest-path "$root/Cargo.toml"
mi="$root/target/release/medinfer"
"$mi" runtimes install >/dev/null 2>&1
[ -f "$fp32/reference.json" ] || "$python" "$root/benchmarks/report/foundation.py" "$fp32" >&2
if [ ! -f "$q8/decoder_with_past_model.onnx" ]; then
  rm -rf "$q8"
  "$mi" quantize-weights "$fp32" -o "$q8" >&2
  rm -rf "$q8/hf"
fi
if [ ! -f "$q4/decoder_with_past_model.onnx" ]; then
  rm -rf "$q4"
  "$mi" quantize-weights "$fp32" -o "$q4" --bits 4 --block 128 >&2
  rm -rf "$q4/hf"
fi
q4i8="$cache/report-foundation-q4i8"
if [ ! -f "$q4i8/encoder_model.onnx" ]; then
  rm -rf "$q4i8" "$cache/report-foundation-calib"
  "$mi" phantom cxr -o "$cache/report-foundation-calib" --count 32 --first-seed 5000 >/dev/null
  "$mi" quantize-weights "$fp32" -o "$q4i8" --bits 4 --block 128 \
    --encoder-int8 "$cache/report-foundation-calib" --encoder-samples 32 >&2
  rm -rf "$q4i8/hf"
fi
out="$(mktemp -d)"; trap '[ -n "$keep" ] && mkdir -p "$keep" && cp "$out"/*.json "$keep"/; rm -rf "$out"' EXIT
want="$(python3 -c "import json,sys; print(json.load(open('$fp32/reference.json'))['cases'][0]['tokens'])")"
n=0
config() {  # label, model dir, engine, more arguments...
  local label="$1" dir="$2" engine="$3"; shift 3
  got="$("$mi" generate "$dir" "$fp32/pixels0.npy" -b "$engine" --max-new-tokens 16 --ignore-eos "$@" --json \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['reports'][0]['tokens'])")"
  [ "$got" = "$want" ] && same=yes || same=no
  "$mi" bench-generate "$dir" -B "$engine" --image "$fp32/pixels0.npy" --runs "$runs" --max-new-tokens "$tokens" \
    --ignore-eos "$@" --json | python3 -c "import json,sys; j=json.load(sys.stdin); j['label']='$label'; j['same_tokens']='$same'; print(json.dumps(j))" > "$out/m$n.json"
  n=$((n+1))
}
[ "$main_rows" = 1 ] || config "ORT fp32" "$fp32" ort
[ "$wo_rows" = 1 ] || config "OpenVINO fp32" "$fp32" openvino
[ "$wo_rows" = 1 ] || config "OpenVINO bf16" "$fp32" openvino --precision bf16
[ "$main_rows" = 1 ] || config "ORT int8-weight decoder" "$q8" ort
[ "$main_rows" = 1 ] || config "OpenVINO bf16 int8-weight decoder" "$q8" openvino --precision bf16
[ "$int4_only" = 1 ] || config "OV bf16 encoder + ORT int8-weight decoder" "$q8" ort --encoder-backend openvino --encoder-precision bf16
config "OV bf16 encoder + ORT int4-weight decoder" "$q4" ort --encoder-backend openvino --encoder-precision bf16
if [ "$wo_rows" = 1 ]; then config "OV int8 encoder + ORT int4-weight decoder" "$q4i8" ort --encoder-backend openvino --encoder-precision bf16; fi
"$python" "$root/benchmarks/report/peers.py" torch "$fp32" --tokens "$tokens" --runs "$runs" --threads "$(nproc)" 2>/dev/null | tail -1 > "$out/torch.json"
if [ "$intel" = 1 ]; then
  ipython="$("$root/benchmarks/report/venv-intel.sh")"
  for p in f32 bf16; do
    "$ipython" "$root/benchmarks/report/peers.py" ov "$fp32" --ov-precision "$p" --tokens "$tokens" --runs "$runs" \
      --threads "$(nproc)" 2>/dev/null | tail -1 > "$out/ov-$p.json"
  done
fi
if [ "$optimum" = 1 ]; then
  "$python" "$root/benchmarks/report/peers.py" ort "$fp32" --tokens "$tokens" --runs "$runs" --threads "$(nproc)" 2>/dev/null | tail -1 > "$out/ort.json"
fi
python3 - "$out" <<'PY'
import json, sys, os, glob
d = sys.argv[1]
t = json.load(open(os.path.join(d, "torch.json")))
rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(d, "m*.json")), key=lambda p: int(p.split('/m')[-1][:-5]))]
print(f"CPU: {rows[0]['cpu']}")
print(f"{'who':<44} {'whole generation (ms)':>22} {'vs PyTorch':>10} {'median':>7} {'vs PyTorch':>10} {'1st token':>10} {'ms/token':>9} {'RSS MB':>7} same tokens")
tm = t.get('median_ms', float('nan'))
print(f"{'PyTorch ' + t['torch'] + ' generate (eager fp32)':<44} {t['mean_ms']:>12.0f} +- {t['std_ms']:<6.0f} {1.0:>9.2f}x {tm:>7.0f} {1.0:>9.2f}x {'':>10} {'':>9} {t['peak_rss_mb']:>7.0f} (reference)")
if os.path.exists(os.path.join(d, "ort.json")):
    o = json.load(open(os.path.join(d, "ort.json")))
    print(f"{'optimum ORTModelForVision2Seq (fp32)':<44} {o['mean_ms']:>12.0f} +- {o['std_ms']:<6.0f} {t['mean_ms']/o['mean_ms']:>9.2f}x {'':>10} {'':>9} {o['peak_rss_mb']:>7.0f} (checked)")
for p in ("f32", "bf16"):
    f = os.path.join(d, f"ov-{p}.json")
    if os.path.exists(f):
        o = json.load(open(f))
        print(f"{'optimum-intel ' + o['optimum_intel'] + ' OVModelForVision2Seq ' + p:<44} {o['mean_ms']:>12.0f} +- {o['std_ms']:<6.0f} {t['mean_ms']/o['mean_ms']:>9.2f}x {'':>10} {'':>9} {o['peak_rss_mb']:>7.0f} (checked)")
for j in rows:
    r = j["rows"][0]; s = r["total_ms"]
    print(f"{'medinfer ' + j['label']:<44} {s['mean']:>12.0f} +- {s['std']:<6.0f} {t['mean_ms']/s['mean']:>9.2f}x {s['p50']:>7.0f} {tm/s['p50']:>9.2f}x {r['first_token_ms']:>10.0f} {r['per_token_ms']:>9.1f} {r['peak_rss_mb']:>7.0f} {j['same_tokens']}")
print(f"{t['runs']} runs each, {t['tokens']} tokens, EOS ignored; 'same tokens': the first 16 greedy tokens equal PyTorch's")
PY
