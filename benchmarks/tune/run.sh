#!/usr/bin/env bash
# The tune's exhaustive check (issue 24): for each model and objective, `medinfer tune` (screening
# + successive halving) and `medinfer tune --exhaustive` (every candidate within the budget in
# paired rounds, in waves, each round with OpenVINO's INT8 defaults as the anchor) on the same
# data, then compare.py: the tuned choice's speed over the exhaustive best, and over the anchor,
# both read from the exhaustive run's paired rounds.
#
# Usage: benchmarks/tune/run.sh [MODEL...] [-- OBJECTIVES]   (default: densenet121-cxr cardiac)
#   MODEL: a zoo name (seeded weights, zoo samples, metric cosine) or `cardiac` (the shipped
#   trained model on phantom heart patches, metric dice).
# Writes benchmarks/tune/out/MODEL-OBJECTIVE/{tuned,exhaustive}/ and prints one JSON line each.
# EXHAUSTIVE_BUDGET (default 30m): the exhaustive search's budget (its slices are sized to fill
# it). FINALISTS (default 5) and FINAL_ROUNDS (default 40): the best of the search's waves that
# run its final wave together with the tune's choice, and that wave's rounds; FINAL_LOADS
# (default 4): the fresh loads that wave's rounds are split over. KEEP_EXHAUSTIVE=1:
# keep MODEL-OBJECTIVE/exhaustive from an earlier run (same machine) and only tune again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --release -q -p medinfer-cli
M="$root/target/release/medinfer"
"$M" runtimes install >/dev/null
models=(); objectives=(latency throughput)
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; objectives=("$@"); break; fi
  models+=("$1"); shift
done
[ ${#models[@]} -gt 0 ] || models=(densenet121-cxr cardiac)
out="$root/benchmarks/tune/out"
mkdir -p "$out"
for m in "${models[@]}"; do
  data="$out/data-$m"
  if [ "$m" = cardiac ]; then
    model="$root/models/cardiac/cardiac-unet.onnx"; metric=dice
    if [ ! -d "$data/valid" ]; then
      "$M" phantom cardiac-training -o "$data/c" --exams 20 --first-seed 500000 >/dev/null
      "$M" phantom cardiac-training -o "$data/v" --exams 10 --first-seed 600000 >/dev/null
      mkdir -p "$data/calib" "$data/valid"
      mv "$data/c/x.npy" "$data/calib/"; mv "$data/v/x.npy" "$data/valid/"
    fi
  else
    model="$data/model.onnx"; metric=cosine
    if [ ! -d "$data/valid" ]; then
      mkdir -p "$data"
      "$M" zoo build "$m" -o "$model" >/dev/null
      "$M" zoo samples "$m" -o "$data/calib" -n 100 --seed 1 2>/dev/null
      "$M" zoo samples "$m" -o "$data/valid" -n 50 --seed 2 2>/dev/null
    fi
  fi
  for obj in "${objectives[@]}"; do
    d="$out/$m-$obj"
    if [ "${KEEP_EXHAUSTIVE:-0}" = 1 ] && [ -f "$d/exhaustive/tune.json" ]; then
      rm -rf "$d/tuned"
    else
      rm -rf "$d"; mkdir -p "$d"
    fi
    common=("$model" --calib "$data/calib" --validate "$data/valid" --validate-samples 50
            --metric "$metric" --max-drop 0.01 --objective "$obj")
    /usr/bin/time -f %e -o "$d/tuned.time" "$M" tune "${common[@]}" -o "$d/tuned" > "$d/tuned.md"
    if [ ! -f "$d/exhaustive/tune.json" ]; then
      # The tune's choice joins the search's final wave, so that it and the search's best are
      # timed in the same (many) rounds.
      choice="$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1])); print(t["candidates"][t["chosen"]]["label"])' "$d/tuned/tune.json")"
      "$M" tune "${common[@]}" --exhaustive --rounds 8 --budget "${EXHAUSTIVE_BUDGET:-30m}" \
        --finalists "${FINALISTS:-5}" --final-rounds "${FINAL_ROUNDS:-40}" --final-loads "${FINAL_LOADS:-4}" \
        --final-with "$choice" -o "$d/exhaustive" > "$d/exhaustive.md"
    fi
    python3 benchmarks/tune/compare.py "$d" "$m" "$obj"
  done
done
