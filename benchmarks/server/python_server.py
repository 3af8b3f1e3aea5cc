#!/usr/bin/env python3
"""What a user would run instead of `medinfer serve`: FastAPI + uvicorn + onnxruntime, serving
one ONNX model on the Open Inference Protocol's infer endpoint (JSON tensors and the binary
tensor extension), one request at a time per call, onnxruntime on every core (its defaults).

Usage: python python_server.py MODEL.onnx NAME PORT
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response

model, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads = len(os.sched_getaffinity(0))
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
app = FastAPI()
TYPES = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}


@app.get("/v2/health/ready")
def ready():
    return {"ready": True}


@app.post(f"/v2/models/{name}/infer")
async def infer(request: Request):
    body = await request.body()
    n = int(request.headers.get("inference-header-content-length", len(body)))
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
    outs = sess.run(None, feeds)
    binary = req.get("parameters", {}).get("binary_data_output", False)
    meta, blobs = [], []
    for o, v in zip(sess.get_outputs(), outs):
        d = {"name": o.name, "datatype": "FP32", "shape": list(v.shape)}
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


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
