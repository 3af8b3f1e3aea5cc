#!/usr/bin/env python3
"""INT8 of a real pretrained 3-D model, side by side (issue 27).

The model is not medinfer's: deepbrain's brain-extraction 3-D U-Net (PyPI wheel deepbrain 0.1;
TensorFlow graph converted to ONNX by convert_deepbrain.py: input 1 x 128^3 x 1 channels last,
10 Conv3D, 3 MaxPool3D, 3 Conv3DTranspose, sigmoid output, 22.3 GMAC). In one run on one machine:

  1. volumes: realistic heads from real MRI in public packages (volumes.py: nibabel's
     anatomical.nii and nilearn's MNI152 T1, randomly rotated, scaled, shifted, flipped,
     gamma-shifted, bias-fielded and noised), 16 calibration and 12 validation, disjoint seeds,
     preprocessed as deepbrain does (128^3, divided by the maximum);
  2. NNCF `nncf.quantize` with its defaults, ONNX backend (QDQ ONNX) and OpenVINO backend (IR);
  3. `medinfer quantize`: the default portable target (which keeps 3-D convolutions float for
     ONNX Runtime, so refuses: nothing else to quantize), `--target openvino` without accuracy
     control, with it (`--validate --metric iou:0.5 --max-drop 0.05`), and with
     `--split-concat 8` (no accuracy control);
  4. agreement with FP32 on the validation volumes: pooled IoU of the brain masks (probability
     > 0.5), FP32 and INT8 on the same engine;
  5. the compute kernels each engine really ran for each model (OpenVINO's exec types, ONNX
     Runtime's profiled kernels), and latency on both engines in paired interleaved rounds.

Usage: benchmarks/real3d/run.sh [--rounds 4] [--runs 3] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "peers"))
import int8  # noqa: E402  (kernels_ov, kernels_ort)
import rounds  # noqa: E402  (paired interleaved timing)
import volumes  # noqa: E402

CORES = len(os.sched_getaffinity(0))
THRESH = 0.5


def outputs(engine, path, xs):
    if engine == "ort":
        import onnxruntime as ort
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return [sess.run(None, {name: x})[0] for x in xs]
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = c.create_infer_request()
    return [req.infer({0: x})[c.outputs[0]].copy() for x in xs]


def pooled_iou(ref, test):
    inter = union = 0
    for r, q in zip(ref, test):
        a, b = r > THRESH, q > THRESH
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / union if union else 1.0


def child(spec):
    """One job (outputs or kernels) in a child process, so that an engine crash is contained."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec), "--child-out", out],
                       capture_output=True, text=True)
    try:
        if r.returncode != 0:
            sig = -r.returncode if r.returncode < 0 else None
            return {"error": f"crash (signal {sig})" if sig else f"failed: {r.stderr.strip().splitlines()[-1:]}"}
        with open(out) as f:
            return json.load(f)
    finally:
        os.remove(out)


def run_child(spec, out):
    if spec["job"] == "kernels":
        x = np.load(spec["x"])
        fn = int8.kernels_ov if spec["engine"] == "ov" else int8.kernels_ort
        res = fn(spec["path"], x)
    else:
        xs = [np.load(p) for p in spec["xs"]]
        np.savez(spec["dest"], *outputs(spec["engine"], spec["path"], xs))
        res = {"ok": True}
    with open(out, "w") as f:
        json.dump(res, f)


def medinfer_quantize(mi, fp32, out, calib, extra):
    t = time.perf_counter()
    p = subprocess.run([mi, "quantize", fp32, "-o", out, "--calib", calib, "--json"] + extra,
                       capture_output=True, text=True)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        return secs, {"refused": p.stderr.strip().splitlines()[-1]}
    return secs, json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medinfer", default="target/release/medinfer")
    ap.add_argument("--model", help="the converted deepbrain ONNX (run.sh makes it)")
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--val", type=int, default=12)
    ap.add_argument("--max-drop", type=float, default=0.05)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--child")
    ap.add_argument("--child-out")
    a = ap.parse_args()
    if a.child:
        return run_child(json.loads(a.child), a.child_out)

    mi, fp32 = os.path.abspath(a.medinfer), a.model
    with tempfile.TemporaryDirectory(prefix="real3d-") as work:
        calib_dir, val_dir = os.path.join(work, "calib"), os.path.join(work, "val")
        for d, n, seed in ((calib_dir, a.calib, 1), (val_dir, a.val, 2)):
            subprocess.run([sys.executable, os.path.join(HERE, "volumes.py"), d, "--count", str(n),
                            "--seed", str(seed)], check=True)
        vpaths = sorted(os.path.join(val_dir, f) for f in os.listdir(val_dir))
        bpaths = []
        for p in vpaths:  # with the batch axis, as the engines take them
            q = p.replace(".npy", ".b.npy")
            np.save(q, np.load(p)[None])
            bpaths.append(q)
        calib = [np.load(os.path.join(calib_dir, f))[None] for f in sorted(os.listdir(calib_dir))]

        models, qtime, reports = {"fp32": fp32}, {}, {}
        import nncf
        import onnx
        import openvino as ov
        t = time.perf_counter()
        q = nncf.quantize(onnx.load(fp32), nncf.Dataset(calib, lambda x: {"img:0": x}), subset_size=len(calib))
        path = os.path.join(work, "nncf-onnx-int8.onnx")
        onnx.save(q, path)
        qtime["nncf (onnx)"] = time.perf_counter() - t
        models["nncf-onnx-int8"] = path
        t = time.perf_counter()
        q = nncf.quantize(ov.Core().read_model(fp32), nncf.Dataset(calib), subset_size=len(calib))
        path = os.path.join(work, "nncf-ov-int8.xml")
        ov.save_model(q, path)
        qtime["nncf (openvino)"] = time.perf_counter() - t
        models["nncf-ov-int8"] = path

        qtime["medinfer portable"], reports["portable"] = medinfer_quantize(
            mi, fp32, os.path.join(work, "portable.onnx"), calib_dir, [])
        print("medinfer --target portable:", reports["portable"].get("refused", "written"), flush=True)
        path = os.path.join(work, "medinfer-ov-int8.onnx")
        qtime["medinfer openvino"], reports["openvino"] = medinfer_quantize(
            mi, fp32, path, calib_dir, ["--target", "openvino"])
        models["medinfer-ov-int8"] = path
        path = os.path.join(work, "medinfer-ov-ac-int8.onnx")
        qtime["medinfer openvino (accuracy control)"], reports["openvino-ac"] = medinfer_quantize(
            mi, fp32, path, calib_dir, ["--target", "openvino", "--validate", val_dir, "--metric",
                                        f"iou:{THRESH}", "--max-drop", str(a.max_drop)])
        models["medinfer-ov-ac-int8"] = path
        path = os.path.join(work, "medinfer-ov-split-int8.onnx")
        qtime["medinfer openvino --split-concat 8"], reports["openvino-split"] = medinfer_quantize(
            mi, fp32, path, calib_dir, ["--target", "openvino", "--split-concat", "8"])
        models["medinfer-ov-split-int8"] = path
        print("split:", [s["conv"] for s in reports["openvino-split"].get("split_convs", [])], flush=True)
        ac = reports["openvino-ac"].get("accuracy") or {}
        print(f"accuracy control: all layers {ac.get('int8_all_layers')}, after {ac.get('int8')}, "
              f"stayed float: {ac.get('reverted')}", flush=True)
        layers = [(l["name"], l["op"], [(p["scale"], p["zero_point"]) for p in l["input_scales"]],
                   l.get("sensitivity")) for l in reports["openvino"]["report"]["layers"]]

        results = {"cores": CORES, "quantize_seconds": qtime, "iou": {}, "kernels": {}, "latency": {},
                   "ratios": {}, "accuracy_control": ac, "portable": reports["portable"],
                   "layers": layers, "volumes": {"calib": a.calib, "val": a.val}}
        for engine in ("ort", "ov"):
            ref = os.path.join(work, f"ref-{engine}.npz")
            r = child({"job": "outputs", "engine": engine, "path": fp32, "xs": bpaths, "dest": ref})
            if "error" in r:
                print(f"{engine} fp32: {r['error']}")
                continue
            refv = list(np.load(ref).values())
            results[f"fp32_foreground_{engine}"] = float(np.mean([(x > THRESH).mean() for x in refv]))
            for label, path in models.items():
                if engine == "ort" and path.endswith(".xml"):
                    continue
                if label != "fp32":
                    dest = os.path.join(work, f"out-{engine}-{label}.npz")
                    r = child({"job": "outputs", "engine": engine, "path": path, "xs": bpaths, "dest": dest})
                    iou = r if "error" in r else pooled_iou(refv, list(np.load(dest).values()))
                    results["iou"][f"{engine}/{label}"] = iou
                    print(f"IoU vs FP32  {engine:4} {label:20} {iou if isinstance(iou, dict) else f'{iou:.4f}'}",
                          flush=True)
                k = child({"job": "kernels", "engine": engine, "path": path, "x": bpaths[0]})
                results["kernels"][f"{engine}/{label}"] = k
                print(f"kernels {engine:4} {label:20} {k}", flush=True)

        workers = []
        for engine in ("ov", "ort"):
            for label, path in models.items():
                if engine == "ort" and path.endswith(".xml"):
                    continue
                workers.append(rounds.Worker(f"{engine}/{label}", {"kind": engine, "path": path, "x": bpaths[0],
                                                                   "warmup": a.warmup}))
        rounds.run_rounds(workers, a.rounds, a.runs, log=lambda m: print(m, flush=True))
        by = {w.label: w for w in workers}
        for w in workers:
            results["latency"][w.label] = w.summary()
        for engine in ("ov", "ort"):
            for label in models:
                k = f"{engine}/{label}"
                if label != "fp32" and k in by:
                    results["ratios"][f"{engine}/fp32 / {k}"] = rounds.paired_ratio(by[f"{engine}/fp32"], by[k])

    L, R = results["latency"], results["ratios"]
    print(f"\n### deepbrain 3-D U-Net (1 x 128^3 x 1), {CORES} cores; pooled mask IoU of INT8 vs FP32 over "
          f"{a.val} validation volumes; latency median ms over {a.rounds} rounds x {a.runs} runs\n")
    print("| model | IoU (ORT) | IoU (OpenVINO) | ms ORT | speed-up vs FP32 (ORT) | ms OpenVINO | speed-up vs FP32 (OpenVINO) |")
    print("|---|---|---|---|---|---|---|")

    def f(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    for label in models:
        row = [label, f(results["iou"].get(f"ort/{label}")), f(results["iou"].get(f"ov/{label}"))]
        for engine in ("ort", "ov"):
            d = L.get(f"{engine}/{label}") or {}
            row.append("-" if d.get("median") is None else f"{d['median']:.1f}")
            r = R.get(f"{engine}/fp32 / {engine}/{label}")
            row.append("-" if not r else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
        print("| " + " | ".join(row) + " |")
    print("medinfer portable:", results["portable"].get("refused", "written"))
    print("quantization time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in qtime.items()))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
