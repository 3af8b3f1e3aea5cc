#!/usr/bin/env python3
"""`medinfer serve` against KServe's own Python REST client (kserve.InferenceRESTClient, the
Open Inference Protocol "v2"), unchanged.

Starts `medinfer serve` on a free loopback port over a one-model repository (the zoo's cardiac
U-Net on ONNX Runtime: input [batch, 1, 96, 96], output [batch, 4, 96, 96]), then:
  - server live / ready, model ready;
  - inference with JSON tensors, with binary input tensors (KServe's binary extension:
    Inference-Header-Content-Length), and with binary outputs asked for
    (`binary_data_output`), batch 1 and batch 2; every output is compared with onnxruntime
    running the same file in this process (max abs diff <= 1e-4);
  - 8 concurrent requests through one client (dynamic batching on the server), each checked;
  - a wrong shape: the client raises with the server's 400 and its message.

Usage: python kserve_check.py MEDINFER   (run by `cargo xtask test` in its own venv)
"""
import asyncio
import os
import sys
import tempfile
import time

import httpx
import numpy as np
import onnxruntime as ort
from common import Checks, Server, unet_repository
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def run(base, path, check):
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=120))
    deadline = time.time() + 120
    while True:
        try:
            if await client.is_server_ready(base):
                break
        except Exception:  # noqa: BLE001  (not listening yet)
            pass
        if time.time() > deadline:
            raise SystemExit("medinfer serve did not become ready")
        await asyncio.sleep(0.2)
    check(await client.is_server_live(base), "server live")
    check(await client.is_model_ready(base, "unet"), "model ready")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)

    def request(x, binary_in, binary_out, rid):
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        params = {"binary_data_output": True} if binary_out else None
        return InferRequest("unet", [inp], request_id=rid, parameters=params)

    def compare(res, x, what):
        got = res.outputs[0].as_numpy()
        want = sess.run(None, {"input": x})[0]
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        check(got.shape == want.shape and diff <= 1e-4,
              f"{what}: shape {got.shape}, max |diff| vs onnxruntime {diff:.2e}")

    for batch in (1, 2):
        x = rng.standard_normal((batch, 1, 96, 96)).astype(np.float32)
        for binary_in, binary_out in ((False, False), (True, False), (True, True)):
            what = (f"batch {batch}, {'binary' if binary_in else 'JSON'} input, "
                    f"{'binary' if binary_out else 'JSON'} output")
            got_headers = {}
            res = await client.infer(base, request(x, binary_in, binary_out, f"r{batch}"),
                                     model_name="unet", response_headers=got_headers)
            compare(res, x, what)
            binary_answer = "inference-header-content-length" in {k.lower() for k in got_headers}
            check(binary_answer == binary_out, f"{what}: the answer is "
                  f"{'binary' if binary_answer else 'JSON'}")
    xs = [rng.standard_normal((1, 1, 96, 96)).astype(np.float32) for _ in range(8)]
    results = await asyncio.gather(*[
        client.infer(base, request(x, True, True, f"c{k}"), model_name="unet")
        for k, x in enumerate(xs)])
    for k, (x, res) in enumerate(zip(xs, results)):
        compare(res, x, f"concurrent request {k}")
    bad = rng.standard_normal((1, 1, 64, 64)).astype(np.float32)
    try:
        await client.infer(base, request(bad, False, False, "bad"), model_name="unet")
        check(False, "a wrong shape raises")
    except httpx.HTTPStatusError as e:
        check(e.response.status_code == 400 and "shape" in e.response.text,
              f"a wrong shape: {e.response.status_code} {e.response.text[:100]}")
    await client.close()


def main():
    medinfer = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="medinfer-kserve-")
    repo, path = unet_repository(medinfer, work)
    server = Server(medinfer, repo, work)
    check = Checks()
    try:
        asyncio.run(run(f"http://127.0.0.1:{server.port}", path, check))
    finally:
        server.stop()
    check.finish(server, "kserve client: all checks passed")


if __name__ == "__main__":
    main()
