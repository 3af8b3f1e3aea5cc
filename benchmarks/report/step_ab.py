#!/usr/bin/env python3
"""Side-by-side timing of two per-token decoder steps, in one process, call for call.

Each folder holds what `MEDINFER_KEEP_HOIST=DIR medinfer generate ...` (or bench-generate)
writes: `precompute.onnx` (run once on seeded encoder states) and `step.onnx` (the per-token
call). Both steps get the same inputs (seeded past of --past positions) and are timed in
alternating order, so a noisy host slows both alike; the per-pair ratio is the figure to
quote. The logits of the two are compared first: a rewrite that changes results fails here.

    python3 benchmarks/report/step_ab.py BEFORE_DIR AFTER_DIR [--past 64] [--calls 300]

Needs numpy and onnxruntime (training/report/venv.sh makes a venv with both).
"""
import argparse
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # As medinfer runs it: spinning threads on a small shared machine cost more than they save.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def prepare(folder, past, threads):
    rng = np.random.default_rng(1)
    pre = session(f"{folder}/precompute.onnx", threads)
    step = session(f"{folder}/step.onnx", threads)
    enc_spec = next(i for i in pre.get_inputs() if i.name == "encoder_hidden_states")
    enc_len, hidden = enc_spec.shape[1], enc_spec.shape[2]
    if not isinstance(enc_len, int):
        enc_len = 785
    states = rng.standard_normal((1, enc_len, hidden)).astype(np.float32)
    feed = {}
    for i in pre.get_inputs():
        feed[i.name] = states if i.name == "encoder_hidden_states" else np.ones((1, enc_len), np.int64)
    hoisted = dict(zip([o.name for o in pre.get_outputs()], pre.run(None, feed)))
    inputs = {}
    for i in step.get_inputs():
        if i.name in hoisted:
            inputs[i.name] = hoisted[i.name]
        elif i.name == "input_ids":
            inputs[i.name] = np.array([[42]], np.int64)
        elif i.name.startswith("past_key_values"):
            heads, head = i.shape[1], i.shape[3]
            inputs[i.name] = rng.standard_normal((1, heads, past, head)).astype(np.float32)
        elif i.name == "encoder_hidden_states":
            inputs[i.name] = states
        elif i.name == "attention_mask":
            inputs[i.name] = np.ones((1, past + 1), np.int64)
        elif i.name == "encoder_attention_mask":
            inputs[i.name] = np.ones((1, enc_len), np.int64)
        else:
            raise SystemExit(f"{folder}/step.onnx: no feed known for input {i.name} {i.shape}")
    binding = step.io_binding()
    for k, v in inputs.items():
        binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v))
    for o in step.get_outputs():
        binding.bind_output(o.name, "cpu")
    logits = step.run(None, inputs)[0]
    return step, binding, logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--past", type=int, default=64, help="cached positions fed to each call")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per step")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    runs = {name: prepare(folder, a.past, a.threads) for name, folder in (("before", a.before), ("after", a.after))}
    diff = float(np.max(np.abs(runs["before"][2] - runs["after"][2])))
    scale = float(np.max(np.abs(runs["before"][2])))
    print(f"logits: max |before - after| = {diff:.3g} (largest logit {scale:.3g})")
    if diff > 1e-3 * max(scale, 1.0):
        raise SystemExit("the two steps give different logits")
    for step, binding, _ in runs.values():
        for _ in range(20):
            step.run_with_iobinding(binding)
    times = {"before": [], "after": []}
    for c in range(a.calls):
        order = ("before", "after") if c % 2 == 0 else ("after", "before")
        for name in order:
            step, binding, _ = runs[name]
            t0 = time.perf_counter()
            step.run_with_iobinding(binding)
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        ms = np.array(t) * 1e3
        print(f"{name:6s} median {np.median(ms):.3f} ms (p25 {np.percentile(ms, 25):.3f}, p75 {np.percentile(ms, 75):.3f})")
    ratio = np.array(times["after"]) / np.array(times["before"])
    print(f"after / before, per pair: median {np.median(ratio):.3f} (p25 {np.percentile(ratio, 25):.3f}, p75 {np.percentile(ratio, 75):.3f})")


if __name__ == "__main__":
    main()
