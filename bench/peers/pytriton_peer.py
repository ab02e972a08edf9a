"""Peer "pytriton": Triton Inference Server through PyTriton, the OIP server most users know.

PyTriton (the ``nvidia-pytriton`` wheel) runs the real ``tritonserver`` binary: its C++ HTTP
front end and its dynamic batcher; the model is onnxruntime called from PyTriton's Python
callback (Triton's own onnxruntime backend is not on PyPI). Runs in the peers' own virtual
environment (``make bench-peers``), not lockgate's: its dependencies are its own.

Triton's Python backend stub links the system's libpython while a venv's standard library is
its interpreter's; the bench starts this peer with LD_LIBRARY_PATH set to the interpreter's
LIBDIR so that both are the same Python (else the model fails to load:
``'_thread.RLock' object has no attribute '_recursion_count'``).
"""

from __future__ import annotations

import argparse
import socket

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32)
    a = p.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        results = session.run(None, {name: value.astype(np.float32, copy=False) for name, value in feeds.items()})
        return dict(zip([o.name for o in outputs], results))

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=a.port,
        grpc_address="127.0.0.1",
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=a.name,
            infer_func=infer,
            inputs=[Tensor(name=i.name, dtype=np.float32, shape=tuple(int(d) for d in i.shape[1:])) for i in inputs],
            outputs=[Tensor(name=o.name, dtype=np.float32, shape=tuple(int(d) for d in o.shape[1:])) for o in outputs],
            config=ModelConfig(max_batch_size=a.max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
