"""Peers "Ray Serve stock" and "Ray Serve tuned": a deployment with @serve.batch, the same OIP JSON route.

Stock runs behind Serve's default Python proxy; tuned sets Ray's HAProxy ingress and direct
ingress (RAY_SERVE_ENABLE_HA_PROXY=1, RAY_SERVE_THROUGHPUT_OPTIMIZED=1) before Ray starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tuned", action="store_true")
    p.add_argument("--max-batch-size", type=int, default=32)
    a = p.parse_args()
    if a.tuned:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"

    import json

    import numpy as np
    import onnxruntime as ort
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
    class Model:
        def __init__(self, path: str, name: str) -> None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            self.name = name
            self.outputs = [o.name for o in self.session.get_outputs()]

        @serve.batch(max_batch_size=a.max_batch_size)
        async def predict(self, rows: list[np.ndarray]) -> list[list[np.ndarray]]:
            sizes = [r.shape[0] for r in rows]
            results = self.session.run(None, {"input": np.concatenate(rows)})
            out, start = [], 0
            for n in sizes:
                out.append([r[start : start + n] for r in results])
                start += n
            return out

        async def __call__(self, request: Request):
            if request.url.path.endswith("/ready"):
                return JSONResponse({"ready": True})
            doc = json.loads(await request.body())
            i = doc["inputs"][0]
            x = np.array(i["data"], dtype=np.float32).reshape(i["shape"])
            results = await self.predict(x)
            return JSONResponse(
                {
                    "model_name": self.name,
                    "model_version": "1",
                    "outputs": [
                        {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.reshape(-1).tolist()}
                        for n, r in zip(self.outputs, results)
                    ],
                }
            )

    # "local": a Ray of its own, never a cluster another process left behind (its address may be gone).
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(Model.bind(a.model, a.name), name=a.name, route_prefix=f"/v2/models/{a.name}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
