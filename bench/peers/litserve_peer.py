"""Peer "LitServe": LitServe with batching (max 32, 2 ms), default settings, the same OIP JSON route."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse

import litserve as ls
import numpy as np
import onnxruntime as ort
from _oip import response


class OnnxAPI(ls.LitAPI):
    def __init__(self, model_path: str, name: str) -> None:
        super().__init__(max_batch_size=32, batch_timeout=0.002, api_path=f"/v2/models/{name}/infer")
        self.model_path = model_path
        self.name = name

    def setup(self, device):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def decode_request(self, request):
        i = request["inputs"][0]
        return np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])

    def batch(self, inputs):
        return np.concatenate(inputs)

    def predict(self, x):
        return self.session.run(None, {self.input_name: x})

    def unbatch(self, results):
        return [[r[i : i + 1] for r in results] for i in range(results[0].shape[0])]

    def encode_response(self, results):
        return response(self.name, self.outputs, results)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args()
    server = ls.LitServer(OnnxAPI(a.model, a.name), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False)
