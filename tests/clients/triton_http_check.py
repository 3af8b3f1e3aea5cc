#!/usr/bin/env python3
"""`medinfer serve` against Triton's own Python client (tritonclient.http), unchanged.

Starts `medinfer serve` on a free loopback port over a one-model repository (the zoo's
cardiac U-Net: input [batch, 1, 96, 96], output [batch, 4, 96, 96]), then with
`tritonclient.http.InferenceServerClient`:
  - server live / ready, server and model metadata, model readiness;
  - inference with JSON tensors, with binary tensors (the binary tensor data extension), and
    mixed (binary input, JSON output), batch 1 and batch 3; every output is compared with
    onnxruntime running the same model file in this process (max abs diff <= 1e-4);
  - 12 concurrent async requests (dynamic batching on the server side), each checked;
  - an error the client must surface: a wrong shape (InferenceServerException, HTTP 400);
  - SIGTERM: the server drains and exits with status 0.

Usage: python triton_http_check.py MEDINFER   (run by `cargo xtask test` in its own venv)
"""
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from common import Checks, Server, unet_repository
from tritonclient.utils import InferenceServerException


def main():
    medinfer = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="medinfer-triton-")
    repo, path = unet_repository(medinfer, work)
    server = Server(medinfer, repo, work)
    port = server.port
    check = Checks()

    try:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", concurrency=4)
        deadline = time.time() + 120
        while True:
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001  (not listening yet)
                pass
            if time.time() > deadline or server.proc.poll() is not None:
                raise SystemExit("medinfer serve did not become ready:\n" + open(server.log).read())
            time.sleep(0.2)
        check(client.is_server_live(), "server live")
        meta = client.get_server_metadata()
        check(meta["name"] == "medinfer", f"server metadata {meta}")
        check(client.is_model_ready("unet"), "model ready")
        m = client.get_model_metadata("unet")
        check(m["inputs"][0]["name"] == "input" and m["inputs"][0]["shape"] == [-1, 1, 96, 96]
              and m["inputs"][0]["datatype"] == "FP32", f"model metadata inputs {m['inputs']}")
        check(m["outputs"][0]["shape"] == [-1, 4, 96, 96], f"model metadata outputs {m['outputs']}")

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        for batch in (1, 3):
            x = rng.standard_normal((batch, 1, 96, 96)).astype(np.float32)
            want = sess.run(None, {"input": x})[0]
            for bin_in, bin_out in ((False, False), (True, True), (True, False)):
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=bin_in)
                out = httpclient.InferRequestedOutput("output", binary_data=bin_out)
                r = client.infer("unet", [inp], outputs=[out], request_id=f"b{batch}")
                got = r.as_numpy("output")
                diff = float(np.abs(got - want).max())
                check(got.shape == want.shape and diff <= 1e-4,
                      f"batch {batch}, binary in {bin_in}, binary out {bin_out}: shape {got.shape}, max diff {diff:.2e}")
                check(r.get_response()["id"] == f"b{batch}", "request id echoed")

        # Concurrent requests through the client's async API.
        xs = [rng.standard_normal((1, 1, 96, 96)).astype(np.float32) for _ in range(12)]
        pending = []
        for x in xs:
            inp = httpclient.InferInput("input", [1, 1, 96, 96], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            pending.append(client.async_infer("unet", [inp]))
        worst = 0.0
        for x, p in zip(xs, pending):
            got = p.get_result().as_numpy("output")
            worst = max(worst, float(np.abs(got - sess.run(None, {"input": x})[0]).max()))
        check(worst <= 1e-4, f"12 concurrent async requests, max diff {worst:.2e}")
        stats = client.get_inference_statistics("unet")
        s = stats["model_stats"][0]
        print(f"      server stats: {s['inference_count']} items in {s['execution_count']} engine runs, "
              f"largest batch {s['largest_batch']}")

        # A wrong shape is an error the client raises, with the server's message.
        bad = httpclient.InferInput("input", [1, 1, 96, 95], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 96, 95), np.float32))
        try:
            client.infer("unet", [bad])
            check(False, "wrong shape refused")
        except InferenceServerException as e:
            check(e.status() == "400" and "shape" in e.message(), f"wrong shape refused: {e.status()} {e.message()}")
        client.close()
    finally:
        rc = server.stop()
        check(rc == 0, f"SIGTERM: drained and exited ({rc})")
    check.finish(server, "tritonclient.http works against medinfer serve unchanged")


if __name__ == "__main__":
    main()
