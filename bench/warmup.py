"""First-request latency with and without Triton's model_warmup, on a fresh `lockgate serve`.

For each model (the demo cnn and mlp) the server starts twice on the same repository, once with
no warmup and once with a sample at the batch sizes clients use; as soon as it reports ready, the
first request is timed, then 30 more (their median is the steady state). Plugins blocked, as in
bench/run.py's `lockgate` row, so the figures are the model's and not the audit log's.

    python bench/warmup.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import yaml
from run import free_port, stop, wait_health

from lockgate.server.hosting.serve_compat import haproxy_pids

PY = sys.executable


def bodies() -> dict[str, tuple[bytes, dict[str, str]]]:
    from lockgate.server.tools.demo import IMAGE_SIZE

    pixels = np.random.default_rng(0).integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, IMAGE_SIZE, IMAGE_SIZE, 3],
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ]
        }
    ).encode()
    row = np.random.default_rng(0).standard_normal(64).astype(np.float32).tolist()
    mlp = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}]}).encode()
    return {
        "cnn": (head + pixels, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}),
        "mlp": (mlp, {"Content-Type": "application/json"}),
    }


WARMUP = {
    "cnn": [{"name": "images", "batch_size": 1, "count": 2, "inputs": {"image": {"random_data": True}}}],
    "mlp": [{"name": "rows", "batch_size": 1, "count": 2, "inputs": {"input": {"random_data": True}}}],
}


def once(model: str, warm: bool, work: Path) -> dict:
    from lockgate.server.tools.demo import write_demo_repository

    repo = work / f"repo-{model}-{'warm' if warm else 'cold'}"
    write_demo_repository(repo, [model])
    config_path = repo / model / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    if warm:
        config["model_warmup"] = WARMUP[model]
    config_path.write_text(yaml.safe_dump(config))
    home = work / f"home-{model}-{'warm' if warm else 'cold'}-{time.monotonic_ns()}"
    env = {**os.environ, "LOCKGATE_HOME": str(home), "LOCKGATE_PLUGINS_BLOCK": "governance,audit,monitoring"}
    port, grpc = free_port(), free_port()
    # HAProxy's side listeners on ports of their own: the previous server's may still be closing.
    env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    command = [PY, "-m", "lockgate.server.cli", "serve", "--model-repository", str(repo), "--port", str(port)]
    before = set(haproxy_pids())
    log = open(work / f"serve-{model}-{'warm' if warm else 'cold'}.log", "w")
    proc = subprocess.Popen(
        [*command, "--grpc-port", str(grpc)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    body, headers = bodies()[model]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc, log.name)
        session = requests.Session()
        times = []
        for _ in range(31):
            t0 = time.perf_counter()
            r = session.post(f"{url}/v2/models/{model}/infer", data=body, headers=headers, timeout=30)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
        return {"first_ms": times[0] * 1e3, "steady_ms": statistics.median(times[1:]) * 1e3}
    finally:
        stop(proc, before)
        log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="starts of each (model, warmup) pair, alternated")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lockgate-warmup-"))
    results: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(a.rounds):
        for model in ("cnn", "mlp"):
            for warm in (False, True):
                r = once(model, warm, work)
                results.setdefault((model, warm), []).append(r)
                print(
                    f"{model:4} warmup {'on ' if warm else 'off'}: first {r['first_ms']:7.2f} ms, then {r['steady_ms']:6.2f} ms",
                    flush=True,
                )
    print()
    print(f"{'model':5} {'warmup':6} {'first request ms (median)':>26} {'steady ms':>10}")
    for (model, warm), rs in results.items():
        first = statistics.median(r["first_ms"] for r in rs)
        steady = statistics.median(r["steady_ms"] for r in rs)
        print(f"{model:5} {'on' if warm else 'off':6} {first:26.2f} {steady:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
