#!/usr/bin/env python3
"""Side-by-side benchmark: medinfer against the tools a user would pick instead.

On the same ONNX file (a medinfer zoo model) and the same machine, in one run:
  * medinfer bench (OpenVINO, ONNX Runtime, tract; latency and throughput modes)
  * OpenVINO's Python API (sync requests for latency, AsyncInferQueue for throughput)
  * OpenVINO's benchmark_app
  * onnxruntime's Python API (one session for latency, one session per stream for throughput)
  * stock PyTorch eager (torchvision's architecture with the same configuration)

Everything runs in true FP32 (OpenVINO's inference-precision hint set to f32), batch from the
model's nominal batch, threads = the cores this process may use. Prints a markdown table with
ratios (peer / medinfer, >1 means medinfer is faster) and writes all figures as JSON.

Usage: benchmarks/peers/run.sh MODEL [--runs 100] [--warmup 10] [--json out.json]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

CORES = len(os.sched_getaffinity(0))
SHAPES = {"densenet121-cxr": (1, 1, 224, 224), "resnet50-fmri": (8, 3, 45, 45), "resnet18-ct": (1, 1, 128, 128), "unet-cardiac": (1, 1, 128, 128), "unet-convt": (1, 1, 128, 128)}


def stats(samples_ms, batch, wall_s, runs):
    s = sorted(samples_ms)
    return {
        "mean": statistics.fmean(s),
        "std": statistics.pstdev(s),
        "p50": s[len(s) // 2],
        "throughput_per_s": batch * runs / wall_s,
    }


def timed_loop(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return samples, time.perf_counter() - start


def concurrent_loop(fns, runs, warmup):
    """One client thread per stream; requests handed out from one counter (as medinfer does)."""
    lock = threading.Lock()
    state = {"next": 0, "samples": []}

    def worker(fn, count, record):
        while True:
            with lock:
                if state["next"] >= count:
                    return
                state["next"] += 1
            t = time.perf_counter()
            fn()
            if record:
                with lock:
                    state["samples"].append((time.perf_counter() - t) * 1e3)

    for count, record in ((warmup, False), (runs, True)):
        state["next"] = 0
        start = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(fn, count, record)) for fn in fns]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
    return state["samples"], wall


def bench_ort(path, x, runs, warmup, streams):
    import onnxruntime as ort

    out = {}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = CORES
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    samples, wall = timed_loop(lambda: s.run(None, {name: x}), runs, warmup)
    out["latency"] = stats(samples, x.shape[0], wall, runs)
    sessions = []
    for _ in range(streams):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = max(1, CORES // streams)
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
    fns = [(lambda ss=ss: ss.run(None, {name: x})) for ss in sessions]
    samples, wall = concurrent_loop(fns, runs, warmup)
    out["throughput"] = stats(samples, x.shape[0], wall, runs)
    out["version"] = ort.__version__
    return out


def bench_ov(path, x, runs, warmup, streams):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    out = {}
    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].any_name: list(x.shape)})
    cm = core.compile_model(model, "CPU", {
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        hints.inference_precision: ov.Type.f32,
        props.inference_num_threads: CORES,
    })
    req = cm.create_infer_request()
    samples, wall = timed_loop(lambda: req.infer({0: x}), runs, warmup)
    out["latency"] = stats(samples, x.shape[0], wall, runs)
    out["latency_precision"] = str(cm.get_property(hints.inference_precision))
    cm = core.compile_model(model, "CPU", {
        hints.performance_mode: hints.PerformanceMode.THROUGHPUT,
        hints.inference_precision: ov.Type.f32,
        props.num_streams: streams,
        props.inference_num_threads: CORES,
    })
    queue = ov.AsyncInferQueue(cm, streams)
    for _ in range(warmup):
        queue.start_async({0: x})
    queue.wait_all()
    start = time.perf_counter()
    for _ in range(runs):
        queue.start_async({0: x})
    queue.wait_all()
    wall = time.perf_counter() - start
    out["throughput"] = {"throughput_per_s": x.shape[0] * runs / wall, "mean": streams * wall / runs * 1e3, "std": 0.0, "p50": float("nan")}
    out["version"] = ov.get_version().split("-")[0]
    return out


def bench_benchmark_app(path, shape, runs, streams):
    """OpenVINO's own benchmark_app, parsed from its report."""
    exe = os.path.join(os.path.dirname(sys.executable), "benchmark_app")
    out = {}
    # benchmark_app accepts -nstreams / -nthreads only with -hint none (its own UI rule).
    for mode, extra in (("latency", ["-hint", "none", "-nstreams", "1", "-nthreads", str(CORES)]), ("throughput", ["-hint", "none", "-nstreams", str(streams), "-nthreads", str(CORES)])):
        cmd = [exe, "-m", path, "-d", "CPU", "-niter", str(runs), "-infer_precision", "f32", "-shape", f"[{','.join(map(str, shape))}]", *extra]
        p = subprocess.run(cmd, capture_output=True, text=True)
        text = p.stdout + p.stderr
        thr = re.search(r"Throughput:\s+([\d.]+)\s+FPS", text)
        avg = re.search(r"Average:\s+([\d.]+)\s+ms", text)
        if p.returncode != 0 or not thr:
            out[mode] = {"error": text[-400:]}
            continue
        # benchmark_app's "Throughput: N FPS" already counts items (requests/s x batch).
        out[mode] = {"throughput_per_s": float(thr.group(1)), "mean": float(avg.group(1)) if avg else float("nan"), "std": 0.0, "p50": float("nan")}
    return out


def torch_model(name):
    import torch
    import torchvision

    if name == "densenet121-cxr":
        m = torchvision.models.densenet121(num_classes=18)
        m.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    elif name == "resnet50-fmri":
        m = torchvision.models.resnet50(num_classes=10)
    elif name == "resnet18-ct":
        m = torchvision.models.resnet18(num_classes=6)
        m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    elif name == "unet-cardiac":
        m = unet(1, 4, 16)
    elif name == "unet-convt":
        m = unet(1, 4, 16, up="convt")
    else:
        return None
    return m.eval()


def unet(in_ch, classes, base, up="resize"):
    """The zoo's U-Nets in PyTorch: 4 levels, conv-BN-ReLU pairs, max-pool down, then either
    nearest 2x up followed by a conv-BN-ReLU that halves the channels (`unet-cardiac`) or a
    2x2 stride-2 transposed convolution with bias that does both (`unet-convt`), skip
    concatenation, 1x1 head. Same parameter counts as the zoo's."""
    import torch
    from torch import nn

    def cbr(i, o):
        return [nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    def double(i, o):
        return nn.Sequential(*cbr(i, o), *cbr(o, o))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [base << k for k in range(4)]
            self.enc = nn.ModuleList()
            c = in_ch
            for o in chans:
                self.enc.append(double(c, o))
                c = o
            self.bottleneck = double(c, base << 4)
            c = base << 4
            self.up, self.dec = nn.ModuleList(), nn.ModuleList()
            for o in reversed(chans):
                if up == "convt":
                    self.up.append(nn.ConvTranspose2d(c, o, 2, 2))
                else:
                    self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *cbr(c, o)))
                self.dec.append(double(2 * o, o))
                c = o
            self.head = nn.Conv2d(c, classes, 1)

        def forward(self, x):
            skips = []
            for e in self.enc:
                x = e(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for u, d, s in zip(self.up, self.dec, reversed(skips)):
                x = d(torch.cat([u(x), s], 1))
            return self.head(x)

    return UNet()


def bench_torch(name, x, runs, warmup):
    import torch

    torch.set_num_threads(CORES)
    m = torch_model(name)
    if m is None:
        return {}
    params = sum(p.numel() for p in m.parameters())
    t = torch.from_numpy(x)
    with torch.inference_mode():
        samples, wall = timed_loop(lambda: m(t), runs, warmup)
    return {"latency": stats(samples, x.shape[0], wall, runs), "version": torch.__version__, "parameters": params}


def bench_medinfer(medinfer, path, runs, warmup):
    p = subprocess.run([medinfer, "bench", path, "--backend", "all", "--mode", "latency,throughput", "--runs", str(runs), "--warmup", str(warmup), "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"medinfer bench failed: {p.stderr}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(SHAPES))
    ap.add_argument("--onnx", required=True, help="the zoo model's ONNX file (medinfer zoo build)")
    ap.add_argument("--medinfer", required=True, help="path to the medinfer binary")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", help="write all figures here")
    a = ap.parse_args()
    shape = SHAPES[a.model]
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    streams = CORES
    res = {"model": a.model, "cores": CORES, "runs": a.runs, "warmup": a.warmup}
    # Interleave: medinfer first and last, peers in between, so drift shows up.
    res["medinfer"] = bench_medinfer(a.medinfer, a.onnx, a.runs, a.warmup)
    res["ov_python"] = bench_ov(a.onnx, x, a.runs, a.warmup, streams)
    res["benchmark_app"] = bench_benchmark_app(a.onnx, shape, a.runs, streams)
    res["ort_python"] = bench_ort(a.onnx, x, a.runs, a.warmup, streams)
    res["torch"] = bench_torch(a.model, x, a.runs, a.warmup)
    res["medinfer_again"] = bench_medinfer(a.medinfer, a.onnx, a.runs, a.warmup)

    def med(backend, mode, key):
        vals = [r[key] if key == "throughput_per_s" else r["latency_ms"]["mean"] for run in (res["medinfer"], res["medinfer_again"]) for r in run if r["backend"] == backend and r["mode"] == mode]
        return max(vals) if key == "throughput_per_s" else min(vals)

    rows = []
    for engine, peers in (("openvino", ("ov_python", "benchmark_app")), ("ort", ("ort_python",))):
        for mode in ("latency", "throughput"):
            m_lat, m_thr = med(engine, mode, "mean"), med(engine, mode, "throughput_per_s")
            rows.append((f"medinfer {engine}", mode, m_lat, m_thr, "", ""))
            for peer in peers:
                r = res[peer].get(mode, {})
                if "throughput_per_s" in r:
                    rows.append((peer, mode, r["mean"], r["throughput_per_s"], f"{m_thr / r['throughput_per_s']:.2f}", f"{r['mean'] / m_lat:.2f}" if mode == "latency" else ""))
    if "latency" in res["torch"]:
        r = res["torch"]["latency"]
        best = max(med(e, m, "throughput_per_s") for e in ("openvino", "ort") for m in ("latency",))
        rows.append((f"PyTorch {res['torch']['version']} eager", "latency", r["mean"], r["throughput_per_s"], f"{best / r['throughput_per_s']:.2f}", ""))
    t = med("tract", "latency", "mean"), med("tract", "latency", "throughput_per_s")
    rows.append(("medinfer tract", "latency", t[0], t[1], "", ""))
    print(f"\n{a.model} {shape}, {CORES} core(s), {a.runs} runs after {a.warmup} warm-up, fp32\n")
    print("| runner | mode | mean latency ms | items/s | medinfer items/s ÷ this | this latency ÷ medinfer |")
    print("|---|---|---|---|---|---|")
    for name, mode, lat, thr, r1, r2 in rows:
        print(f"| {name} | {mode} | {lat:.2f} | {thr:.1f} | {r1} | {r2} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
