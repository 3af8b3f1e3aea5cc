#!/usr/bin/env bash
# The cardiac exam (10 slices x 25 phases, INT8 on OpenVINO), before and after, in one run: two
# medinfer binaries' `bench-pipeline cardiac` in alternating rounds (the order flips every
# round), so host noise hits both. Prints the per-stage medians over rounds of each binary's
# per-round median, and the per-round total ratio old/new.
# Usage: benchmarks/hotpath/exam.sh OLD_BINARY NEW_BINARY [ROUNDS] [RUNS_PER_ROUND]
set -euo pipefail
old=$(realpath "$1"); new=$(realpath "$2"); rounds=${3:-4}; runs=${4:-5}
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  pair=("$old" "$new"); [ $((r % 2)) -eq 0 ] && pair=("$new" "$old")
  for b in "${pair[@]}"; do
    tag=$([ "$b" == "$old" ] && echo old || echo new)
    "$b" bench-pipeline cardiac --backend openvino --precision int8 --runs "$runs" --json \
      2>/dev/null > "$out/$tag-$r.json"
  done
done
python3 - "$out" "$rounds" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" <<'PY'
import json, os, statistics as st, sys
out, rounds, cpu = sys.argv[1], int(sys.argv[2]), sys.argv[3].strip()
def med(tag):
    return [json.load(open(os.path.join(out, f"{tag}-{r}.json")))["results"][0]["median"]
            for r in range(1, rounds + 1)]
o, n = med("old"), med("new")
stages = [k for k in o[0] if k.endswith("_ms")]
print(f"CPU: {cpu}; {rounds} rounds; medians over rounds (ms)")
print(f"{'stage':<16} {'old':>8} {'new':>8}")
for k in stages:
    print(f"{k:<16} {st.median(x[k] for x in o):8.1f} {st.median(x[k] for x in n):8.1f}")
ratios = [a["total_ms"] / b["total_ms"] for a, b in zip(o, n)]
print(f"total old/new per round: median {st.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
PY
