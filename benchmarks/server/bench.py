#!/usr/bin/env python3
"""HTTP serving throughput: `medinfer serve` against `medinfer bench` (the engine alone) and
against Python servers with onnxruntime behind them: FastAPI (python_server.py) and KServe's own
ModelServer (kserve_server.py), same model, same machine, one run.

Load from oha (crates.io), fixed duration and concurrency, the same request body for both
servers (binary tensors, the v2 binary extension; and JSON tensors). Then an overload run:
medinfer with a small queue at high concurrency for a fixed time, counting 200 / 429 / 5xx and
the server's peak RSS, and checking that the queue drains afterwards.

With `--deploy DIR` (a deployment written by `medinfer tune` for the same model), medinfer
serves that deployment (its engine, precision, streams and batch), the engine-alone figure is
`medinfer bench --deploy DIR`, and a third Python server runs the deployment's own model file on
OpenVINO (python_server.py's `openvino` engine: THROUGHPUT hint, a pool of infer requests), so
that the server's share and the engine choice's share of any gain can be told apart, and another
serves the user's FP32 file on OpenVINO (what a user without medinfer's quantizer would run).
Last, paired rounds against each FastAPI peer (--peer-rounds): both servers up, timed in turn.
The servers' own runs follow one another over many minutes, and the host's load drifts.

Usage: benchmarks/server/run.sh [--model resnet18-ct] [--seconds 20] [--concurrency 8,16]
       [--deploy DIR]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CORES = len(os.sched_getaffinity(0))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, proc, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001
            time.sleep(0.3)
    raise SystemExit("server not ready")


def oha(oha_bin, url, body, headers, seconds, conc):
    cmd = [oha_bin, "-z", f"{seconds}s", "-c", str(conc), "--no-tui", "--output-format", "json",
           "-m", "POST", "-D", body, url]
    for h in headers:
        cmd += ["-H", h]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    j = json.loads(r.stdout)
    codes = j.get("statusCodeDistribution", {})
    lat = j.get("latencyPercentiles", {})
    return {"rps": j["summary"]["requestsPerSec"], "p50_ms": lat.get("p50", 0) * 1e3,
            "p99_ms": lat.get("p99", 0) * 1e3, "codes": codes,
            "errors": j.get("errorDistribution", {})}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medinfer", default="target/release/medinfer")
    ap.add_argument("--oha", default="oha")
    ap.add_argument("--model", default="resnet18-ct")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--concurrency", default="8,16",
                    help="client concurrencies, comma-separated (each measured on both servers)")
    ap.add_argument("--warmup", type=int, default=10, help="seconds of load before each measured run")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--instances", type=int, default=1, help="medinfer engine instances per model")
    ap.add_argument("--rounds", type=int, default=3,
                    help="paired rounds of engine-alone vs through-HTTP (largest concurrency, binary)")
    ap.add_argument("--overload-seconds", type=int, default=60,
                    help="length of the overload run (concurrency 8x the largest, queue of 8)")
    ap.add_argument("--skip-python", action="store_true", help="medinfer only")
    ap.add_argument("--kserve-python", help="python of a venv with kserve + onnxruntime: also "
                    "measure KServe's ModelServer (kserve_server.py)")
    ap.add_argument("--deploy", help="a `medinfer tune` deployment of the same model: medinfer serves "
                    "it, and FastAPI + OpenVINO serves its model file too")
    ap.add_argument("--skip-overload", action="store_true", help="no overload run")
    ap.add_argument("--peer-rounds", type=int, default=3,
                    help="paired rounds against each Python peer with both servers up, in turn "
                    "(largest concurrency, binary), so host drift between the servers' own runs "
                    "does not decide the ratio (0 = none)")
    ap.add_argument("--json")
    a = ap.parse_args()
    import numpy as np
    concs = [int(c) for c in str(a.concurrency).split(",")]

    mi = os.path.abspath(a.medinfer)
    work = tempfile.mkdtemp(prefix="medinfer-serve-bench-")
    mdir = os.path.join(work, "repo", "m", "1")
    os.makedirs(mdir)
    model = os.path.join(mdir, "model.onnx")
    subprocess.run([mi, "zoo", "build", a.model, "-o", model], check=True, capture_output=True)
    info = json.loads(subprocess.run([mi, "info", model, "--json"], check=True, capture_output=True,
                                     text=True).stdout)
    inp = info["inputs"][0]
    shape = [1] + [d if isinstance(d, int) else 1 for d in inp["shape"][1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    head = json.dumps({"inputs": [{"name": inp["name"], "shape": shape, "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    binbody = os.path.join(work, "bin.body")
    with open(binbody, "wb") as f:
        f.write(head + x.tobytes())
    jsonbody = os.path.join(work, "json.body")
    with open(jsonbody, "w") as f:
        json.dump({"inputs": [{"name": inp["name"], "shape": shape, "datatype": "FP32",
                               "data": x.ravel().tolist()}]}, f)
    binh = [f"Inference-Header-Content-Length: {len(head)}", "Content-Type: application/octet-stream"]
    jsonh = ["Content-Type: application/json"]
    results = {"model": a.model, "cores": CORES, "seconds": a.seconds, "concurrency": concs}
    deployed = None
    if a.deploy:
        # The deployment's files in this repository entry, its config with the server's queue
        # settings added (the deployment gives engine, precision, instances, threads, max batch).
        with open(os.path.join(a.deploy, "config.json")) as f:
            dcfg = json.load(f)
        deployed = os.path.join(work, "deployed.onnx")
        shutil.copyfile(os.path.join(a.deploy, "1", "model.onnx"), deployed)
        a.max_batch = dcfg.get("max_batch", a.max_batch)
        results["deployment"] = dcfg

    def bench_alone(batch):
        if a.deploy:
            cmd = [mi, "bench", "--deploy", a.deploy, "--runs", "400", "--json"]
        else:
            cmd = [mi, "bench", model, "-b", "ort", "--mode", "throughput", "--batch", str(batch),
                   "--runs", "200", "--json"]
        r = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(r.stdout)[0]["throughput_per_s"]

    # The engine alone: throughput mode on ONNX Runtime at batch 1 and the server's max batch,
    # or the deployment.
    for b in ((a.max_batch,) if a.deploy else (1, a.max_batch)):
        results[f"bench_batch{b}_items_per_s"] = bench_alone(b)
        print(f"medinfer bench {'--deploy' if a.deploy else 'ort throughput'} batch {b}: "
              f"{results[f'bench_batch{b}_items_per_s']:.1f} items/s", flush=True)

    def run_server(cmd, port, label, extra):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, p)
            url = f"http://127.0.0.1:{port}/v2/models/m/infer"
            for kind, body, hdr in (("binary", binbody, binh), ("json", jsonbody, jsonh)):
                for c in concs:
                    oha(a.oha, url, body, hdr, a.warmup, c)  # warm-up (every batch size compiled once)
                    r = oha(a.oha, url, body, hdr, a.seconds, c)
                    r["peak_rss_mb"] = rss_mb(p.pid)
                    results[f"{label}/{kind}/c{c}"] = r
                    print(f"{label:9} {kind:6} c={c:<3} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                          f"p99 {r['p99_ms']:7.1f} ms  codes {r['codes']}  RSS {r['peak_rss_mb']:.0f} MB",
                          flush=True)
            extra(p, url)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)

    cfg = {"backend": "ort", "max_batch": a.max_batch, "max_queue_delay_us": 2000, "max_queue": 64,
           "instances": a.instances}
    if a.deploy:
        # The model file the deployment chose, under the repository's model.onnx.
        shutil.copyfile(deployed, model)
        cfg = dict(dcfg, max_queue_delay_us=2000, max_queue=64)
    results["medinfer_config"] = dict(cfg)
    with open(os.path.join(work, "repo", "m", "config.json"), "w") as f:
        json.dump(cfg, f)
    # Paired rounds on this noisy host: the engine alone, then the same load through HTTP, in
    # turn, with the server up (idle while the engine runs alone); the ratio per round.
    def paired(p, url):
        c = max(concs)
        ratios = []
        for k in range(a.rounds):
            alone = bench_alone(a.max_batch)
            h = oha(a.oha, url, binbody, binh, a.seconds, c)
            ratios.append(h["rps"] / alone)
            print(f"round {k + 1}: bench batch {a.max_batch} {alone:.1f} items/s, serve c={c} binary "
                  f"{h['rps']:.1f} req/s (p99 {h['p99_ms']:.1f} ms): {ratios[-1]:.2f}", flush=True)
        results["paired_ratios"] = ratios
        print(f"serve / bench, paired: median {sorted(ratios)[len(ratios) // 2]:.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})", flush=True)

    port = free_port()
    run_server([mi, "serve", "--models", os.path.join(work, "repo"), "--port", str(port)], port,
               "medinfer", paired)

    # Overload: a queue of 8 at 8x the concurrency for the same time.
    def overload(p, url):
        r = oha(a.oha, url, binbody, binh, a.overload_seconds, max(concs) * 8)
        r["peak_rss_mb"] = rss_mb(p.pid)
        time.sleep(1)
        with urllib.request.urlopen(url.replace("/infer", "/stats")) as s:
            st = json.load(s)["model_stats"][0]
        r["queued_after"] = st["queued_now"]
        results["medinfer/overload"] = r
        print(f"overload  c={max(concs) * 8}: {r['rps']:.1f} req/s answered, codes {r['codes']}, "
              f"errors {r['errors']}, peak RSS {r['peak_rss_mb']:.0f} MB, queued afterwards {r['queued_after']}",
              flush=True)

    if not a.skip_overload:
        cfg["max_queue"] = 8
        with open(os.path.join(work, "repo", "m", "config.json"), "w") as f:
            json.dump(cfg, f)
        port = free_port()
        p = subprocess.Popen([mi, "serve", "--models", os.path.join(work, "repo"), "--port",
                              str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, p)
            overload(p, f"http://127.0.0.1:{port}/v2/models/m/infer")
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)

    if a.skip_python:
        return
    # The Python servers get the model the user brought (the FP32 zoo file), and with --deploy
    # FastAPI + OpenVINO also gets the deployment's model file.
    fp32 = os.path.join(work, "fp32.onnx")
    subprocess.run([mi, "zoo", "build", a.model, "-o", fp32], check=True, capture_output=True)
    port = free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    run_server([sys.executable, os.path.join(here, "python_server.py"), fp32, "m", str(port)], port,
               "fastapi", lambda p, u: None)
    peers = {"fastapi": [sys.executable, os.path.join(here, "python_server.py"), fp32, "m"]}
    if a.deploy:
        # OpenVINO's own recipe on the deployment's INT8 file (the engine choice handed to a
        # Python server) and on the FP32 file the user brought (what a user without medinfer's
        # quantizer would serve).
        for label, f in (("fastapi-ov", deployed), ("fastapi-ov-fp32", fp32)):
            peers[label] = [sys.executable, os.path.join(here, "python_server.py"), f, "m"]
            port = free_port()
            run_server(peers[label] + [str(port), "openvino"], port, label, lambda p, u: None)
            peers[label].append("openvino")

    if a.kserve_python:
        port = free_port()
        run_server([a.kserve_python, os.path.join(here, "kserve_server.py"), fp32, "m", str(port)],
                   port, "kserve", lambda p, u: None)

    # Paired rounds against each peer: medinfer serve and the peer both up (idle while the other
    # is loaded), timed in turn, the order alternating; the ratio per round.
    if a.peer_rounds > 0:
        c = max(concs)
        with open(os.path.join(work, "repo", "m", "config.json"), "w") as f:
            json.dump(results["medinfer_config"], f)
        procs = []
        try:
            mport = free_port()
            procs.append(subprocess.Popen([mi, "serve", "--models", os.path.join(work, "repo"),
                                           "--port", str(mport)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_ready(mport, procs[-1])
            murl = f"http://127.0.0.1:{mport}/v2/models/m/infer"
            oha(a.oha, murl, binbody, binh, a.warmup, c)
            for label, cmd in peers.items():
                port = free_port()
                argv = cmd[:4] + [str(port)] + cmd[4:]
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
                wait_ready(port, procs[-1])
                purl = f"http://127.0.0.1:{port}/v2/models/m/infer"
                oha(a.oha, purl, binbody, binh, a.warmup, c)
                ratios = []
                for k in range(a.peer_rounds):
                    order = [("medinfer", murl), (label, purl)]
                    if k % 2:
                        order.reverse()
                    got = {}
                    for who, url in order:
                        got[who] = oha(a.oha, url, binbody, binh, a.seconds, c)
                    ratios.append(got["medinfer"]["rps"] / got[label]["rps"])
                    print(f"paired round {k + 1}, c={c} binary: medinfer {got['medinfer']['rps']:.1f} "
                          f"req/s (p99 {got['medinfer']['p99_ms']:.1f} ms), {label} "
                          f"{got[label]['rps']:.1f} req/s (p99 {got[label]['p99_ms']:.1f} ms): "
                          f"{ratios[-1]:.2f}x", flush=True)
                    results.setdefault(f"paired_vs_{label}", []).append(
                        {"medinfer": got["medinfer"], label: got[label], "ratio": ratios[-1]})
                print(f"medinfer serve / {label}, paired: median "
                      f"{sorted(ratios)[len(ratios) // 2]:.2f}x (range {min(ratios):.2f}-"
                      f"{max(ratios):.2f})", flush=True)
                procs[-1].send_signal(signal.SIGTERM)
                procs[-1].wait(timeout=60)
                procs.pop()
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)

    ref = results[f"bench_batch{a.max_batch}_items_per_s"]
    print()
    for c in concs:
        m, f = results[f"medinfer/binary/c{c}"], results[f"fastapi/binary/c{c}"]
        mj, fj = results[f"medinfer/json/c{c}"], results[f"fastapi/json/c{c}"]
        print(f"c={c}: medinfer serve / medinfer bench (batch {a.max_batch}) {m['rps'] / ref:.2f}; "
              f"/ FastAPI+onnxruntime: binary {m['rps'] / f['rps']:.2f}x "
              f"(p99 {m['p99_ms']:.1f} vs {f['p99_ms']:.1f} ms), json {mj['rps'] / fj['rps']:.2f}x "
              f"(p99 {mj['p99_ms']:.1f} vs {fj['p99_ms']:.1f} ms)")
        if a.deploy:
            o, oj = results[f"fastapi-ov/binary/c{c}"], results[f"fastapi-ov/json/c{c}"]
            print(f"c={c}: medinfer serve / FastAPI+OpenVINO on the deployment's model: binary "
                  f"{m['rps'] / o['rps']:.2f}x (p99 {m['p99_ms']:.1f} vs {o['p99_ms']:.1f} ms), json "
                  f"{mj['rps'] / oj['rps']:.2f}x (p99 {mj['p99_ms']:.1f} vs {oj['p99_ms']:.1f} ms)")
            o, oj = results[f"fastapi-ov-fp32/binary/c{c}"], results[f"fastapi-ov-fp32/json/c{c}"]
            print(f"c={c}: medinfer serve / FastAPI+OpenVINO on the user's FP32 model: binary "
                  f"{m['rps'] / o['rps']:.2f}x (p99 {m['p99_ms']:.1f} vs {o['p99_ms']:.1f} ms), json "
                  f"{mj['rps'] / oj['rps']:.2f}x (p99 {mj['p99_ms']:.1f} vs {oj['p99_ms']:.1f} ms)")
        if a.kserve_python:
            k, kj = results[f"kserve/binary/c{c}"], results[f"kserve/json/c{c}"]
            print(f"c={c}: medinfer serve / KServe ModelServer+onnxruntime: binary {m['rps'] / k['rps']:.2f}x "
                  f"(p99 {m['p99_ms']:.1f} vs {k['p99_ms']:.1f} ms), json {mj['rps'] / kj['rps']:.2f}x "
                  f"(p99 {mj['p99_ms']:.1f} vs {kj['p99_ms']:.1f} ms)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
