"""Peers of `medinfer bench-generate` on one model, in one process each: stock PyTorch
`generate` (eager FP32), optimum's ONNX Runtime pipeline (ORTModelForVision2Seq) and
optimum-intel's OpenVINO pipeline (OVModelForVision2Seq), each generating a fixed number of
tokens (end token masked by min_new_tokens) from one image.

    python peers.py torch|ort|ov MODEL_EXPORT_DIR --tokens 24 --runs 100 [--threads 2] [--ov-precision f32|bf16]

`ov` runs in optimum-intel's venv (benchmarks/report/venv-intel.sh) on the export's own ONNX
files (`OVModelForVision2Seq.from_pretrained(EXPORT, from_onnx=True)`, the files medinfer
runs), compiled with OpenVINO's INFERENCE_PRECISION_HINT (f32, or bf16, OpenVINO's default on
CPUs with AMX / AVX-512 BF16). `--ov-source export` takes optimum-intel's own OpenVINO export
instead (EXPORT/ov-intel, made once): with optimum-intel 2.2.0 / OpenVINO 2026.4.1 that export
of ViT + GPT-2 names GPT-2's cross-attention cache as the next layer's self-attention cache
(present.1.key has the encoder's length), and its cached decoder fails in OpenVINO's CPU plugin
("Shape inference of Add ... failed") at the first cached step.

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
ap.add_argument("peer", choices=["torch", "ort", "ov"])
ap.add_argument("export")
ap.add_argument("--tokens", type=int, default=24)
ap.add_argument("--runs", type=int, default=100)
ap.add_argument("--threads", type=int, default=os.cpu_count())
ap.add_argument("--ov-precision", default="f32", choices=["f32", "bf16"])
ap.add_argument("--ov-source", default="onnx", choices=["onnx", "export"])
a = ap.parse_args()
torch.set_num_threads(a.threads)
px = np.load(os.path.join(a.export, "pixels0.npy"))
ref = json.load(open(os.path.join(a.export, "reference.json")))
want = next(c["tokens"] for c in ref["cases"] if c["input"] == "pixels0.npy" and c["setting"].startswith("greedy"))



def torch_model():
    if os.path.isdir(os.path.join(a.export, "hf")):  # benchmarks/report/foundation.py's checkpoint
        from transformers import VisionEncoderDecoderModel

        return VisionEncoderDecoderModel.from_pretrained(os.path.join(a.export, "hf")).eval()
    from tiny_fixture import build  # the tiny parity model, rebuilt from its seed

    return build()[0]


if a.peer == "torch":
    model = torch_model()
    gen = lambda **kw: model.generate(pixel_values=torch.from_numpy(px), do_sample=False, **kw)
elif a.peer == "ov":
    from optimum.intel import OVModelForVision2Seq

    ov_dir = os.path.join(a.export, "ov-intel")
    if a.ov_source == "onnx":
        ov_dir = a.export
    elif not os.path.isfile(os.path.join(ov_dir, "openvino_encoder_model.xml")):
        import tempfile

        hf = os.path.join(a.export, "hf")
        if not os.path.isdir(hf):
            hf = tempfile.mkdtemp()
            from tiny_fixture import build

            m, fast, proc, _ = build()
            m.save_pretrained(hf)
            fast.save_pretrained(hf)
            proc.save_pretrained(hf)
        OVModelForVision2Seq.from_pretrained(hf, export=True, compile=False).save_pretrained(ov_dir)
    cfg = {"INFERENCE_PRECISION_HINT": a.ov_precision, "INFERENCE_NUM_THREADS": str(a.threads),
           "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", **json.loads(os.environ.get("OV_EXTRA", "{}"))}
    model = OVModelForVision2Seq.from_pretrained(ov_dir, ov_config=cfg, from_onnx=a.ov_source == "onnx", use_cache=True)
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
    "median_ms": float(np.median(t)),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch": torch.__version__,
    "ov_precision": a.ov_precision if a.peer == "ov" else None,
    "optimum_intel": __import__("optimum.intel.version", fromlist=["__version__"]).__version__ if a.peer == "ov" else None,
    "openvino": __import__("openvino").__version__ if a.peer == "ov" else None,
}))
