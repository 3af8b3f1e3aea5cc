#!/usr/bin/env bash
# Fresh loads, alternating: each configuration benchmarked K times, each time in a new
# `medinfer bench` process (a new load and compile), in turn with the others. Tells apart a
# configuration's speed from the luck of one load: the tune and its exhaustive check each time
# a configuration in one or two loads, and their rankings of near-equal configurations differ
# by about the per-load spread this measures (issue 24, resnet50-fmri throughput, 2026-12-06).
#
# Usage: benchmarks/tune/loads.sh K NAME=MODEL:BACKEND:PRECISION:STREAMS:THREADS:BATCH ... [-- BENCH_FLAGS]
#   e.g. benchmarks/tune/loads.sh 5 ovbf16=out/x/exhaustive/1/model.onnx:openvino:bf16:2:1:8 \
#          portfp32=out/x/tuned/1/model.onnx:openvino:fp32:2:1:8 -- --runs 600 --warmup 30
# Prints one line per load (round, name, items/s), then each configuration's mean, standard
# deviation, range and coefficient of variation over its loads.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
M="$root/target/release/medinfer"
k="$1"; shift
cfgs=(); extra=(--runs 600 --warmup 30)
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  cfgs+=("$1"); shift
done
log="$(mktemp)"; trap 'rm -f "$log"' EXIT
for r in $(seq 1 "$k"); do
  for c in "${cfgs[@]}"; do
    name="${c%%=*}"; IFS=: read -r model backend prec streams threads batch <<<"${c#*=}"
    t=$("$M" bench "$model" -b "$backend" --precision "$prec" --mode throughput --streams "$streams" \
         --threads "$threads" --batch "$batch" "${extra[@]}" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["throughput_per_s"])')
    echo "$r $name $t" | tee -a "$log"
  done
done
python3 - "$log" <<'PY'
import collections, statistics as st, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    _, n, v = line.split()
    d[n].append(float(v))
for n, v in d.items():
    sd = st.stdev(v) if len(v) > 1 else 0.0
    print(f"{n}: mean {st.mean(v):.1f} items/s, sd {sd:.1f} (cv {100 * sd / st.mean(v):.1f}%), "
          f"range {min(v):.1f}-{max(v):.1f}, {len(v)} loads")
PY
