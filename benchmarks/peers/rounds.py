#!/usr/bin/env python3
"""Interleaved, paired timing of several runners on one shared, noisy machine.

Each runner (an engine with one model, stock PyTorch, or `medinfer bench`) lives in its own
worker process that loads its model once and then waits, blocked on a pipe, for the next
"run N" command. The parent drives R rounds; in each round every runner does N timed requests,
one runner after the other, the order rotating from round to round, with a pause between
runners so that spinning thread pools go idle before the next one starts. So every runner sees
the same stretch of machine noise, a runner that crashes its engine is contained (it is reported
as a crash and the others go on), and two runners can be compared round by round: the ratio of
their medians in the same round, then the median of those ratios over all rounds, with the
lowest and highest round. That paired ratio is what the tables quote.

Used by int8.py; `python rounds.py --worker SPEC` is the worker side.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

CORES = len(os.sched_getaffinity(0))


def _ov(spec, x):
    import openvino as ov
    core = ov.Core()
    m = core.read_model(spec["path"])
    m.reshape({m.inputs[0].get_any_name(): list(x.shape)})
    c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": spec.get("precision", "f32"),
                                      "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(CORES),
                                      "NUM_STREAMS": "1"})
    req = c.create_infer_request()
    return lambda: req.infer({0: x})


def _ort(spec, x):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = CORES
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(spec["path"], so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def _torch(spec, x):
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers
    torch.set_num_threads(CORES)
    m = peers.torch_model(spec["model"]).eval()
    t = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            m(t)
    return run


def worker(spec):
    """Loads one runner, answers 'ready', then times 'N' requests per command line."""
    x = np.load(spec["x"])
    fn = {"ov": _ov, "ort": _ort, "torch": _torch}[spec["kind"]](spec, x)
    for _ in range(spec.get("warmup", 10)):
        fn()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        n = int(line)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        print(json.dumps(out), flush=True)


class Worker:
    """The parent's handle on one worker process (or on `medinfer bench`, run once per round)."""

    def __init__(self, label, spec):
        self.label, self.spec, self.rounds, self.error = label, spec, [], None
        self.proc = None
        if spec["kind"] == "medinfer":
            return
        # "env": extra environment for the worker, e.g. ONEDNN_MAX_CPU_ISA (read once by oneDNN
        # inside OpenVINO and PyTorch, so it can only differ between processes).
        env = {**os.environ, **spec.get("env", {})}
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        if not line:
            self._died()

    def _died(self):
        rc = self.proc.wait()
        err = self.proc.stderr.read().strip().splitlines()
        self.error = f"crash (signal {-rc})" if rc < 0 else f"failed: {err[-1:] if err else rc}"
        self.proc = None

    def run(self, n):
        if self.error:
            return
        if self.spec["kind"] == "medinfer":
            s = self.spec
            cmd = [s["medinfer"], "bench", s["path"], "--backend", s["backend"], "--runs", str(n),
                   "--warmup", str(s.get("warmup", 10)), "--json"]
            if s.get("batch"):
                cmd += ["--batch", str(s["batch"])]
            cmd += s.get("args", [])
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                self.error = f"medinfer bench failed: {p.stderr.strip()[-200:]}"
                return
            r = json.loads(p.stdout)[0]["latency_ms"]
            # medinfer bench reports statistics, not samples: its median stands for the round.
            self.rounds.append([r["p50"]])
            return
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self._died()
            return
        self.rounds.append(json.loads(line))

    def close(self):
        if self.proc:
            self.proc.stdin.close()
            self.proc.wait()

    def summary(self):
        if self.error and not self.rounds:
            return {"error": self.error}
        allv = sorted(v for r in self.rounds for v in r)
        meds = [statistics.median(r) for r in self.rounds]
        return {"median": statistics.median(allv), "mean": statistics.fmean(allv),
                "round_medians": meds, "rounds": len(self.rounds), "samples": len(allv),
                **({"error": self.error} if self.error else {})}


def run_rounds(workers, rounds, runs, pause=0.2, log=None):
    """Drives `rounds` rounds of `runs` requests on every worker, rotating the order."""
    for r in range(rounds):
        order = workers[r % len(workers):] + workers[:r % len(workers)]
        for w in order:
            time.sleep(pause)
            w.run(runs)
        if log:
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{w.label} {statistics.median(w.rounds[-1]):.2f}" if w.rounds and not w.error else f"{w.label} {w.error}"
                for w in workers))
    for w in workers:
        w.close()


def paired_ratio(slow, fast):
    """Per round: slow's median / fast's median; returns (median, lowest, highest) over rounds."""
    if slow.error or fast.error:
        return None
    rs = sorted(statistics.median(a) / statistics.median(b) for a, b in zip(slow.rounds, fast.rounds))
    return {"median": statistics.median(rs), "min": rs[0], "max": rs[-1], "rounds": len(rs)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
