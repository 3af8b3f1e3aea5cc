#!/usr/bin/env bash
# Hot-path copies, before and after, in one run: two medinfer binaries timed in alternating
# rounds (the order flips every round) on the same models and engines, so host noise hits both.
# Usage: benchmarks/hotpath/run.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Prints per-configuration medians of the per-round means and the per-round ratios old/new.
set -euo pipefail
old=$(realpath "$1"); new=$(realpath "$2"); rounds=${3:-4}
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
configs=(
  "unet-cardiac --backend openvino --batch 8 --mode throughput"
  "unet-cardiac --backend ort --batch 8 --mode throughput"
  "densenet121-cxr --backend openvino --mode latency"
)
for r in $(seq 1 "$rounds"); do
  for c in "${!configs[@]}"; do
    pair=("$old" "$new"); [ $((r % 2)) -eq 0 ] && pair=("$new" "$old")
    for b in "${pair[@]}"; do
      tag=$([ "$b" == "$old" ] && echo old || echo new)
      # shellcheck disable=SC2086
      "$b" bench ${configs[$c]} --runs 30 --warmup 3 --json 2>/dev/null \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; print(r["latency_ms"]["mean"], r["throughput_per_s"])' \
        > "$out/$c-$tag-$r"
    done
  done
  "$old" bench-pipeline cardiac --backend openvino --precision int8 --runs 5 --json 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]["median"]; print(r["segment_ms"], r["total_ms"])' > "$out/p-old-$r"
  "$new" bench-pipeline cardiac --backend openvino --precision int8 --runs 5 --json 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]["median"]; print(r["segment_ms"], r["total_ms"])' > "$out/p-new-$r"
done
python3 - "$out" "$rounds" "${configs[@]}" <<'PY'
import os, statistics as st, sys
out, rounds, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def read(name):
    return [float(x) for x in open(os.path.join(out, name)).read().split()]
print(f"{'configuration':<62} {'old ms':>8} {'new ms':>8} {'old/new (per-round range)':>28}")
for c, cfg in enumerate(configs):
    o = [read(f"{c}-old-{r}")[0] for r in range(1, rounds + 1)]
    n = [read(f"{c}-new-{r}")[0] for r in range(1, rounds + 1)]
    ratios = [a / b for a, b in zip(o, n)]
    print(f"bench {cfg:<56} {st.median(o):8.2f} {st.median(n):8.2f} {st.median(ratios):8.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
for k, what in [(0, "segment"), (1, "total")]:
    o = [read(f"p-old-{r}")[k] for r in range(1, rounds + 1)]
    n = [read(f"p-new-{r}")[k] for r in range(1, rounds + 1)]
    ratios = [a / b for a, b in zip(o, n)]
    print(f"bench-pipeline cardiac openvino int8, {what + ' stage':<30} {st.median(o):8.1f} {st.median(n):8.1f} {st.median(ratios):8.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
PY
