#!/usr/bin/env python3
"""INT8 side by side: medinfer quantize against NNCF and onnxruntime.quantization.

For one zoo model, in one run on one machine:
  1. medinfer builds the FP32 model, writes 300 calibration + 100 validation samples
     (`medinfer zoo samples`), optimizes it and quantizes it (timed);
  2. NNCF `nncf.quantize` on the OpenVINO model read from the same FP32 ONNX, same 300 samples;
  3. `onnxruntime.quantization.quantize_static` (QDQ, its defaults plus per-channel weights) on
     the same FP32 ONNX (after its own pre-processing), same 300 samples;
  4. every model is timed on OpenVINO's Python API (true FP32 hint) and on onnxruntime's Python
     API, latency mode (one request on all cores), next to stock PyTorch eager FP32 and to
     `medinfer bench` running medinfer's INT8 model, in paired interleaved rounds (rounds.py:
     one worker process per runner, so a model that crashes an engine is reported as "crash");
  5. output error of each INT8 model against FP32 on the validation samples: cosine, normalised
     MSE, top-1 agreement (classifiers) or Dice of arg-max maps (segmentation).

Usage: benchmarks/peers/run_int8.sh MODEL [--rounds 12] [--runs 20] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (shapes)
import rounds  # noqa: E402  (paired interleaved timing)

CORES = len(os.sched_getaffinity(0))


def load_samples(folder):
    files = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
    return [np.load(os.path.join(folder, f))[None].astype(np.float32) for f in files]


# Models that are only timed on OpenVINO (NNCF's IR, and medinfer's OpenVINO layout).
OV_ONLY = {"nncf-int8", "medinfer-ov-int8"}


def batched(samples, batch):
    return [np.concatenate(samples[i:i + batch]) for i in range(0, len(samples) - batch + 1, batch)]


def outputs_ov(path, xs):
    import openvino as ov
    core = ov.Core()
    m = core.read_model(path)
    m.reshape({m.inputs[0].get_any_name(): list(xs[0].shape)})
    c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = c.create_infer_request()
    return [req.infer({0: x})[c.outputs[0]].copy() for x in xs]


def outputs_ort(path, xs):
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x})[0] for x in xs]


def kernels_ov(path, x):
    """What OpenVINO really executes: compute layers (Convolution, FullyConnected, MatMul, ...)
    counted by the precision of their kernel (exec type ..._I8 or ..._f32)."""
    import openvino as ov
    core = ov.Core()
    m = core.read_model(path)
    # x: one array for the first input, or {input name: array} for every input.
    feeds = x if isinstance(x, dict) else {m.inputs[0].get_any_name(): x}
    m.reshape({k: list(v.shape) for k, v in feeds.items()})
    c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"})
    req = c.create_infer_request()
    req.infer(feeds)
    out = {}
    for p in req.profiling_info:
        if p.status.name == "EXECUTED" and any(k in p.node_type for k in ("Convolution", "Deconvolution", "FullyConnected", "MatMul")):
            prec = "int8" if p.exec_type.lower().endswith("_i8") else p.exec_type.split("_")[-1]
            key = f"{p.node_type}:{prec}"
            out[key] = out.get(key, 0) + 1
    return out


def kernels_ort(path, x):
    """What ONNX Runtime really executes: compute kernels after its graph optimisation, by op
    (QLinearConv / MatMulInteger / QGemm are integer, Conv / FusedConv / Gemm float)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "medinfer-kernels")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess.run(None, x if isinstance(x, dict) else {sess.get_inputs()[0].name: x})
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.remove(prof)
    out = {}
    for e in events:
        op = e.get("args", {}).get("op_name", "")
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(
                k in op for k in ("Conv", "Gemm", "MatMul")):
            out[op] = out.get(op, 0) + 1
    return out


def errors(ref, test, seg):
    cos, nmse, agree = [], [], []
    for r, t in zip(ref, test):
        a, b = r.ravel().astype(np.float64), t.ravel().astype(np.float64)
        cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
        nmse.append(float(((a - b) ** 2).sum() / ((a ** 2).sum() + 1e-30)))
        if seg:
            la, lb = r.argmax(1), t.argmax(1)
            d = []
            for k in range(1, r.shape[1]):
                s = (la == k).sum() + (lb == k).sum()
                if s:
                    d.append(2 * ((la == k) & (lb == k)).sum() / s)
            agree.append(float(np.mean(d)) if d else 1.0)
        else:
            agree.append(float((r.argmax(-1) == t.argmax(-1)).mean()))
    return {"cosine": float(np.mean(cos)), "nmse": float(np.mean(nmse)),
            ("dice" if seg else "top1"): float(np.mean(agree))}


def child(args):
    """Runs one timing or output job in a child process so an engine crash is contained."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--child", json.dumps(args), "--child-out", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sig = -r.returncode if r.returncode < 0 else None
        return {"error": f"crash (signal {sig})" if sig else f"failed: {r.stderr.strip().splitlines()[-1:]}"}
    with open(out) as f:
        return json.load(f)


def run_child(spec, out):
    if spec["job"] == "kernels":
        fn = kernels_ov if spec["engine"] == "ov" else kernels_ort
        res = fn(spec["path"], np.load(spec["x"]))
    else:
        xs = [np.load(p) for p in spec["xs"]]
        fn = outputs_ov if spec["engine"] == "ov" else outputs_ort
        np.save(spec["dest"], np.stack(fn(spec["path"], xs)))
        res = {"ok": True}
    with open(out, "w") as f:
        json.dump(res, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--medinfer", default="target/release/medinfer")
    ap.add_argument("--runs", type=int, default=20, help="timed requests per runner per round")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--vnni", choices=("auto", "yes", "no"), default="auto",
                    help="also time the OpenVINO INT8 runners with oneDNN capped at AVX-512 VNNI "
                         "(ONEDNN_MAX_CPU_ISA, medinfer --cpu-isa avx512-vnni); auto: on CPUs with AMX")
    ap.add_argument("--child")
    ap.add_argument("--child-out")
    a = ap.parse_args()
    if a.child:
        return run_child(json.loads(a.child), a.child_out)

    name = a.model
    shape = peers.SHAPES[name]
    batch = shape[0]
    seg = name.startswith("unet-")
    work = tempfile.mkdtemp(prefix=f"int8-{name}-")
    mi = a.medinfer
    fp32 = os.path.join(work, "fp32.onnx")
    subprocess.run([mi, "zoo", "build", name, "-o", fp32], check=True, capture_output=True)
    calib_dir, val_dir = os.path.join(work, "calib"), os.path.join(work, "val")
    subprocess.run([mi, "zoo", "samples", name, "-o", calib_dir, "-n", "300", "--seed", "1"], check=True, capture_output=True)
    subprocess.run([mi, "zoo", "samples", name, "-o", val_dir, "-n", "100", "--seed", "2"], check=True, capture_output=True)
    calib = load_samples(calib_dir)
    val = load_samples(val_dir)

    models, qtime = {"fp32": fp32}, {}
    # medinfer: the portable default, and laid out for OpenVINO only (--target openvino: NNCF's
    # symmetric signed activations)
    for label, target, timing in (("medinfer-int8", "portable", "medinfer"),
                                  ("medinfer-ov-int8", "openvino", "medinfer --target openvino")):
        t = time.perf_counter()
        path = os.path.join(work, f"{label}.onnx")
        subprocess.run([mi, "quantize", fp32, "-o", path, "--calib", calib_dir, "--samples", "300",
                        "--target", target, "--json"], check=True, capture_output=True)
        qtime[timing] = time.perf_counter() - t
        models[label] = path
    mq = models["medinfer-int8"]
    # NNCF
    import nncf
    import openvino as ov
    t = time.perf_counter()
    ovm = ov.Core().read_model(fp32)
    ovm.reshape({ovm.inputs[0].get_any_name(): [1] + list(shape[1:])})
    qm = nncf.quantize(ovm, nncf.Dataset(calib), subset_size=300)
    nq = os.path.join(work, "nncf-int8.xml")
    ov.save_model(qm, nq)
    qtime["nncf"] = time.perf_counter() - t
    models["nncf-int8"] = nq
    # onnxruntime.quantization
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"input": x}

    t = time.perf_counter()
    os.chdir(work)  # quant_pre_process writes temporary files into the current directory
    pre = os.path.join(work, "ort-pre.onnx")
    try:
        quant_pre_process(fp32, pre)
    except Exception as e:  # noqa: BLE001  (its symbolic shape inference fails on some graphs)
        print(f"quant_pre_process: {e}; retrying without symbolic shape inference", flush=True)
        quant_pre_process(fp32, pre, skip_symbolic_shape=True)
    oq = os.path.join(work, "ort-int8.onnx")
    quantize_static(pre, oq, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    qtime["onnxruntime"] = time.perf_counter() - t
    models["ort-int8"] = oq

    x = np.concatenate([calib[i % len(calib)] for i in range(batch)])
    xp = os.path.join(work, "x.npy")
    np.save(xp, x)
    results = {"model": name, "batch": batch, "cores": CORES, "quantize_seconds": qtime, "latency": {},
               "ratios": {}, "error": {}, "rounds": a.rounds, "runs_per_round": a.runs}
    # Paired, interleaved rounds (rounds.py): every runner loads once in its own process, then
    # each round times every runner in turn, so all see the same machine noise.
    workers = []
    for engine in ("ov", "ort"):
        for label, path in models.items():
            if engine == "ort" and label in OV_ONLY:
                continue
            workers.append(rounds.Worker(f"{engine}/{label}", {"kind": engine, "path": path, "x": xp,
                                                               "warmup": a.warmup}))
    workers.append(rounds.Worker("torch/fp32", {"kind": "torch", "model": name, "x": xp, "warmup": a.warmup}))
    workers.append(rounds.Worker("medinfer-bench/ov-int8", {"kind": "medinfer", "medinfer": mi, "path": mq,
                                                            "backend": "openvino", "batch": batch,
                                                            "warmup": a.warmup}))
    # On AMX CPUs oneDNN picks AMX INT8 kernels; capped at AVX-512 VNNI it picks VNNI ones, which
    # are faster for some models (small spatial sizes) and slower for others. Every OpenVINO INT8
    # runner is timed both ways, NNCF's included, so the choice is compared fairly.
    vnni = a.vnni == "yes" or (a.vnni == "auto" and "amx_int8" in open("/proc/cpuinfo").read())
    if vnni:
        cap = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
        for label in ("medinfer-int8", "medinfer-ov-int8", "nncf-int8"):
            workers.append(rounds.Worker(f"ov-vnni/{label}", {"kind": "ov", "path": models[label], "x": xp,
                                                              "warmup": a.warmup, "env": cap}))
        workers.append(rounds.Worker("medinfer-bench/ov-int8-vnni", {
            "kind": "medinfer", "medinfer": mi, "path": mq, "backend": "openvino", "batch": batch,
            "warmup": a.warmup, "args": ["--cpu-isa", "avx512-vnni"]}))
    rounds.run_rounds(workers, a.rounds, a.runs, log=lambda m: print(m, flush=True))
    by = {w.label: w for w in workers}
    for w in workers:
        results["latency"][w.label] = w.summary()

    def ratio(slow, fast):
        r = rounds.paired_ratio(by[slow], by[fast])
        results["ratios"][f"{slow} / {fast}"] = r
        return r

    # Which kernels each engine really runs for each model (real INT8, or float fallbacks).
    results["kernels"] = {}
    for engine in ("ov", "ort"):
        for label, path in models.items():
            if engine == "ort" and label in OV_ONLY:
                continue
            r = child({"job": "kernels", "engine": engine, "path": path, "x": xp})
            results["kernels"][f"{engine}/{label}"] = r
            print(f"kernels {engine:4} {label:15} {r}", flush=True)

    # Output error against FP32 on the validation samples.
    vpaths = []
    for i, v in enumerate(val):
        p = os.path.join(work, f"v{i}.npy")
        np.save(p, v)
        vpaths.append(p)
    for engine in ("ov", "ort"):
        ref = os.path.join(work, f"ref-{engine}.npy")
        r = child({"job": "out", "engine": engine, "path": fp32, "x": xp, "xs": vpaths, "dest": ref})
        if "error" in r:
            continue
        refv = np.load(ref)
        for label, path in models.items():
            if label == "fp32" or (engine == "ort" and label in OV_ONLY):
                continue
            dest = os.path.join(work, f"out-{engine}-{label}.npy")
            r = child({"job": "out", "engine": engine, "path": path, "x": xp, "xs": vpaths, "dest": dest})
            e = r if "error" in r else errors(list(refv), list(np.load(dest)), seg)
            results["error"][f"{engine}/{label}"] = e
            print(f"error {engine:4} {label:15} {e}", flush=True)

    # Table: medians over all rounds; ratios are paired per round (median, lowest-highest round).
    L = results["latency"]

    def cell(k):
        d = L.get(k)
        return "-" if d is None else f"{d['median']:.2f}" if "median" in d else d.get("error", "-")

    def rcell(r):
        return "-" if r is None else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"

    print(f"\n### {name} (batch {batch}, {CORES} cores, latency mode, median ms over {a.rounds} rounds x {a.runs} runs)\n")
    print("| engine | FP32 | medinfer INT8 | NNCF INT8 | onnxruntime INT8 | medinfer INT8 vs FP32 | vs NNCF | vs onnxruntime |")
    print("|---|---|---|---|---|---|---|---|")
    for engine in ("ov", "ort"):
        m = f"{engine}/medinfer-int8"
        vs_fp32 = ratio(f"{engine}/fp32", m)
        vs_nncf = ratio("ov/nncf-int8", m) if engine == "ov" else None
        vs_ort = ratio(f"{engine}/ort-int8", m)
        print(f"| {engine} | {cell(engine + '/fp32')} | {cell(m)} | {cell('ov/nncf-int8') if engine == 'ov' else '-'} | "
              f"{cell(engine + '/ort-int8')} | {rcell(vs_fp32)} | {rcell(vs_nncf)} | {rcell(vs_ort)} |")
    mo = "ov/medinfer-ov-int8"
    print(f"\nmedinfer --target openvino on OpenVINO: {cell(mo)} ms; vs medinfer portable "
          f"{rcell(ratio('ov/medinfer-int8', mo))}, vs NNCF {rcell(ratio('ov/nncf-int8', mo))}, "
          f"vs onnxruntime {rcell(ratio('ov/ort-int8', mo))}")
    print(f"\nstock PyTorch FP32 {cell('torch/fp32')} ms; speed-up over it (paired per round):")
    for k in ("ov/medinfer-int8", mo, "medinfer-bench/ov-int8", "ov/nncf-int8", "ov/ort-int8"):
        print(f"  {k:24s} {cell(k):>8} ms  {rcell(ratio('torch/fp32', k))}")
    if vnni:
        print("with oneDNN capped at AVX-512 VNNI (no AMX), speed-up over stock PyTorch and over the same "
              "model on the default (AMX) kernels:")
        for k, amx in (("ov-vnni/medinfer-int8", "ov/medinfer-int8"), ("ov-vnni/medinfer-ov-int8", mo),
                       ("medinfer-bench/ov-int8-vnni", "medinfer-bench/ov-int8"),
                       ("ov-vnni/nncf-int8", "ov/nncf-int8")):
            print(f"  {k:28s} {cell(k):>8} ms  {rcell(ratio('torch/fp32', k))}  vs AMX {rcell(ratio(amx, k))}")
        print(f"  medinfer --target openvino vs NNCF, both VNNI: "
              f"{rcell(ratio('ov-vnni/nncf-int8', 'ov-vnni/medinfer-ov-int8'))}")
    print("quantization time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in qtime.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
