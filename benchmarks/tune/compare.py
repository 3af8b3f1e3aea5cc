"""The tuned choice against the exhaustive search (benchmarks/tune/run.sh): one JSON line.

Both speeds come from the exhaustive run, where every candidate was timed in paired rounds with
the anchor (OpenVINO's INT8 defaults): `vs_anchor` is the median of a candidate's per-round speed
over the anchor's (for the best of all waves, from the final wave they ran together). within_3pct: tuned / best >= 0.97. never_slower_than_ov_int8_defaults:
tuned / anchor >= 1 (within the rounds' noise, reported as is).
"""
import json
import re
import statistics
import sys

d, model, objective = sys.argv[1], sys.argv[2], sys.argv[3]
tuned = json.load(open(f"{d}/tuned/tune.json"))
exh = json.load(open(f"{d}/exhaustive/tune.json"))
choice = tuned["candidates"][tuned["chosen"]]["label"]
by_label = {c["label"]: c for c in exh["candidates"]}
# The exhaustive search's own choice: the best of its final wave (the best of all waves timed
# together again) where it had one, else the best median ratio over the anchor.
best = exh["candidates"][exh["chosen"]]
anchor = exh["candidates"][exh["anchor"]]["label"]
mine = by_label.get(choice, {}).get("vs_anchor")
row = {
    "model": model,
    "objective": objective,
    "cpu": tuned["cpu"],
    "tuned_choice": choice,
    "tune_seconds": float(open(f"{d}/tuned.time").read().split()[-1]),
    "candidates": len(tuned["candidates"]),
    "exhaustive_best": best["label"],
    "anchor": anchor,
    "tuned_over_best": None if mine is None else mine / best["vs_anchor"],
    "tuned_over_ov_int8_defaults": mine,
    "best_latency_ms": best.get("latency_ms"),
    "best_throughput_per_s": best.get("throughput_per_s"),
}
# Where the tune's choice ran the search's final wave (run.sh names it with --final-with), it and
# the best were timed in the same final rounds: their per-round ratios, directly.
final_n = None
for n in exh.get("notes", []):
    m = re.search(r"final wave of (\d+) rounds", n)
    if m:
        final_n = int(m.group(1))
t_rounds = by_label.get(choice, {}).get("rounds", [])
if final_n and len(t_rounds) >= final_n and len(best["rounds"]) >= final_n:
    pr = sorted(a / b for a, b in zip(t_rounds[-final_n:], best["rounds"][-final_n:]))
    q = statistics.quantiles(pr, n=4) if len(pr) >= 4 else [pr[0], statistics.median(pr), pr[-1]]
    row["final_rounds"] = final_n
    row["tuned_over_best_per_round"] = {
        "median": statistics.median(pr), "q1": q[0], "q3": q[2], "min": pr[0], "max": pr[-1]}
row["within_3pct"] = row["tuned_over_best"] is not None and row["tuned_over_best"] >= 0.97
row["never_slower_than_ov_int8_defaults"] = mine is not None and mine >= 1.0
print(json.dumps(row))
with open(f"{d}/compare.json", "w") as f:
    json.dump(row, f, indent=2)
