#!/usr/bin/env bash
# The whole `medinfer run cardiac` command as a user types it (process start, model load,
# read, pipeline, outputs written), INT8 on OpenVINO, on the phantom exam of seed 7 (10 slices x
# 30 phases, 27 MB .nii.gz): two binaries in alternating order, wall time per run, medians and
# the per-round ratio old/new. The issue-26 goal is a whole run under 0.6 s on 2 cores.
# Usage: benchmarks/hotpath/exam_cli.sh OLD_BINARY NEW_BINARY [ROUNDS]
set -euo pipefail
old=$(realpath "$1"); new=$(realpath "$2"); rounds=${3:-10}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$new" phantom cardiac -o "$work/exam" --seed 7 >/dev/null
python3 - "$old" "$new" "$rounds" "$work" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" <<'PY'
import statistics as st, subprocess, sys, time
old, new, rounds, work, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].strip()
def once(b):
    t = time.perf_counter()
    subprocess.run([b, "run", "cardiac", f"{work}/exam/cine.nii.gz", "-o", f"{work}/out",
                    "-b", "openvino", "--precision", "int8"], check=True, capture_output=True)
    return time.perf_counter() - t
for b in (old, new):
    once(b)  # warm the page cache and the model cache
w = {old: [], new: []}
for r in range(rounds):
    for b in ((old, new) if r % 2 == 0 else (new, old)):
        w[b].append(once(b))
ratios = [a / b for a, b in zip(w[old], w[new])]
print(f"CPU: {cpu}; {rounds} rounds, whole `run cardiac` wall (s)")
for name, b in (("old", old), ("new", new)):
    v = w[b]
    print(f"{name}: median {st.median(v):.3f}  min {min(v):.3f}  max {max(v):.3f}  under 0.6 s: {sum(x < 0.6 for x in v)}/{len(v)}")
print(f"old/new per round: median {st.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
PY
