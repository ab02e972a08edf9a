"""Peer "kserve": KServe's Python model server (the ``kserve`` package), the other OIP v2 server
written in Python: a custom ``kserve.Model`` calling onnxruntime, served by ``ModelServer`` (one
uvicorn worker, its plain server, gRPC off, no log line per request). Runs in the peers' own virtual environment
(``make bench-peers``). KServe's REST server binds 0.0.0.0 (not configurable in 0.21): run the
bench on a machine whose port is not reachable from outside, as a bench machine is.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--port", type=int, default=8000)
    a, _ = p.parse_known_args()
    # kserve reads its own options from sys.argv when imported: give it only its own. No log line
    # per request (its access log and latency traces), as the naive peer has none.
    sys.argv = [
        sys.argv[0],
        f"--http_port={a.port}",
        "--workers=1",
        "--enable_grpc=false",
        "--enable_latency_logging=false",
        "--configure_logging=false",
    ]
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    class OnnxModel(Model):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.ready = True

        def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
            feeds = {i.name: i.as_numpy().astype(np.float32, copy=False) for i in payload.inputs}
            results = session.run(None, feeds)
            outputs = [
                InferOutput(name=n, shape=list(r.shape), datatype="FP32", data=r.reshape(-1).tolist())
                for n, r in zip(output_names, results)
            ]
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)

    ModelServer(http_port=a.port, workers=1, enable_grpc=False, enable_latency_logging=False).start([OnnxModel(a.name)])


if __name__ == "__main__":
    main()
