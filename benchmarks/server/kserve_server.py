#!/usr/bin/env python3
"""The other server a user would run instead of `medinfer serve`: KServe's own Python
ModelServer (the `kserve` package, Open Inference Protocol v2 REST with its binary tensor
extension) with onnxruntime behind it, written the way KServe's custom-model docs show: a
`kserve.Model` whose `predict` runs the session. onnxruntime on every core (its defaults), one
server worker, no batching (KServe's Python server has none built in).

Usage: python kserve_server.py MODEL.onnx NAME PORT
"""
import os
import sys

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

model_path, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])


class OnnxModel(Model):
    def __init__(self):
        super().__init__(name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = len(os.sched_getaffinity(0))
        self.sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        binary = bool((payload.parameters or {}).get("binary_data_output", False))
        outs = []
        for o, v in zip(self.sess.get_outputs(), self.sess.run(None, feeds)):
            out = InferOutput(name=o.name, shape=list(v.shape), datatype="FP32")
            out.set_data_from_numpy(v, binary_data=binary)
            outs.append(out)
        return InferResponse(model_name=name, infer_outputs=outs, response_id=payload.id or "",
                             use_binary_outputs=binary)


if __name__ == "__main__":
    ModelServer(http_port=port, grpc_port=port + 1, workers=1,
                enable_grpc=False).start([OnnxModel()])
