"""Peers of `medinfer bench-generate` on one model, in one process each: stock PyTorch
`generate` (eager FP32) and optimum's ONNX Runtime pipeline (ORTModelForVision2Seq), both
generating a fixed number of tokens (end token masked by min_new_tokens) from one image.

    python peers.py torch|ort MODEL_EXPORT_DIR --tokens 24 --runs 100 [--threads 2]

For `torch` the weights come from EXPORT/hf (benchmarks/report/foundation.py) or else from
training/report/tiny_fixture.py's seeded build (the same weights as the committed export);
either way the greedy tokens are first checked against reference.json.
Prints one JSON line: mean / std of the whole generation in ms, peak RSS.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "training", "report"))

ap = argparse.ArgumentParser()
ap.add_argument("peer", choices=["torch", "ort"])
ap.add_argument("export")
ap.add_argument("--tokens", type=int, default=24)
ap.add_argument("--runs", type=int, default=100)
ap.add_argument("--threads", type=int, default=os.cpu_count())
a = ap.parse_args()
torch.set_num_threads(a.threads)
px = np.load(os.path.join(a.export, "pixels0.npy"))
ref = json.load(open(os.path.join(a.export, "reference.json")))
want = next(c["tokens"] for c in ref["cases"] if c["input"] == "pixels0.npy" and c["setting"].startswith("greedy"))

if a.peer == "torch":
    if os.path.isdir(os.path.join(a.export, "hf")):  # benchmarks/report/foundation.py's checkpoint
        from transformers import VisionEncoderDecoderModel

        model = VisionEncoderDecoderModel.from_pretrained(os.path.join(a.export, "hf")).eval()
    else:  # the tiny parity model, rebuilt from its seed
        from tiny_fixture import build

        model, _, _, _ = build()
    gen = lambda **kw: model.generate(pixel_values=torch.from_numpy(px), do_sample=False, **kw)
else:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForVision2Seq

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    model = ORTModelForVision2Seq.from_pretrained(a.export, session_options=so, use_cache=True)
    gen = lambda **kw: model.generate(pixel_values=torch.from_numpy(px), do_sample=False, **kw)

with torch.no_grad():
    n = len(want) - 1
    got = gen(max_new_tokens=n, min_new_tokens=n if want[-1] != ref.get("eos", -1) else 0)[0].tolist()
    assert got == want, f"{a.peer}: {got} != reference {want}"
    gen(max_new_tokens=a.tokens, min_new_tokens=a.tokens)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        out = gen(max_new_tokens=a.tokens, min_new_tokens=a.tokens)
        times.append((time.perf_counter() - t0) * 1e3)
    assert out.shape[-1] == a.tokens + 1, out.shape
t = np.array(times)
print(json.dumps({
    "peer": a.peer,
    "runs": a.runs,
    "tokens": a.tokens,
    "mean_ms": float(t.mean()),
    "std_ms": float(t.std()),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch": torch.__version__,
}))
