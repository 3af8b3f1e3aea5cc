#!/usr/bin/env python3
"""What a user would run instead of `medinfer serve`: FastAPI + uvicorn + an engine, serving
one ONNX model on the Open Inference Protocol's infer endpoint (JSON tensors and the binary
tensor extension).

- `onnxruntime` (the default): one request at a time, onnxruntime on every core (its defaults).
- `openvino`: OpenVINO's Python API with its throughput recipe: the model
  compiled with the THROUGHPUT performance hint, a pool of the plugin's optimal number of infer
  requests, and the inference run in FastAPI's thread pool so that that many requests run at
  once (OpenVINO releases the GIL while it infers). No dynamic batching: requests run at the
  batch the client sent.

Usage: python python_server.py MODEL.onnx NAME PORT [onnxruntime|openvino]
"""
import json
import os
import queue
import sys

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response

model, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = sys.argv[4] if len(sys.argv) > 4 else "onnxruntime"
if engine == "onnxruntime":
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = len(os.sched_getaffinity(0))
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    OUT_NAMES = [o.name for o in sess.get_outputs()]

    def run(feeds):
        return sess.run(None, feeds)
elif engine == "openvino":
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    nreq = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    pool = queue.Queue()
    for _ in range(nreq):
        pool.put(compiled.create_infer_request())
    OUT_NAMES = [o.get_any_name() for o in compiled.outputs]

    def run(feeds):
        r = pool.get()
        try:
            res = r.infer(feeds)
            return [np.array(res[o]) for o in compiled.outputs]
        finally:
            pool.put(r)
else:
    raise SystemExit(f"unknown engine {engine}")
app = FastAPI()
TYPES = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


def parse(body, headers):
    n = int(headers.get("inference-header-content-length", len(body)))
    req = json.loads(body[:n])
    tail = memoryview(body)[n:]
    feeds = {}
    for i in req["inputs"]:
        dt = TYPES[i["datatype"]]
        size = i.get("parameters", {}).get("binary_data_size")
        if size is not None:
            feeds[i["name"]] = np.frombuffer(tail[:size], dtype=dt).reshape(i["shape"])
            tail = tail[size:]
        else:
            feeds[i["name"]] = np.asarray(i["data"], dtype=dt).reshape(i["shape"])
    return req, feeds


def answer(req, outs):
    binary = req.get("parameters", {}).get("binary_data_output", False)
    meta, blobs = [], []
    for o, v in zip(OUT_NAMES, outs):
        d = {"name": o, "datatype": "FP32", "shape": list(v.shape)}
        if binary:
            b = v.astype(np.float32).tobytes()
            d["parameters"] = {"binary_data_size": len(b)}
            blobs.append(b)
        else:
            d["data"] = v.ravel().tolist()
        meta.append(d)
    head = json.dumps({"model_name": name, "outputs": meta}).encode()
    if not binary:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


if engine == "onnxruntime":
    @app.post(f"/v2/models/{name}/infer")
    async def infer(request: Request):
        req, feeds = parse(await request.body(), request.headers)
        return answer(req, run(feeds))
else:
    from starlette.concurrency import run_in_threadpool

    # The inference in FastAPI's thread pool: several infer requests at once.
    @app.post(f"/v2/models/{name}/infer")
    async def infer_pooled(request: Request):
        req, feeds = parse(await request.body(), request.headers)
        return answer(req, await run_in_threadpool(run, feeds))

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
