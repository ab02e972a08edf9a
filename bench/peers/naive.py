"""Peer "naive": one uvicorn + starlette + onnxruntime process, no batching, the same OIP JSON route."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from _oip import response
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def build(model_path: str, name: str) -> Starlette:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        doc = json.loads(await request.body())
        feeds = {i["name"]: np.array(i["data"], dtype=np.float32).reshape(i["shape"]) for i in doc["inputs"]}
        results = session.run(None, feeds)
        return JSONResponse(response(name, out_names, results))

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route(f"/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--port", type=int, default=8000)
    a = p.parse_args()
    uvicorn.run(build(a.model, a.name), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)
