"""Many models per replica: 50 registered models behind a pool of 2 replicas whose budget holds
10 models each. Mixed traffic gets every answer right; models are loaded on demand and evicted
least recently used, counted; each replica stays within its budget; and a model's requests go to
a replica that already holds it."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import requests
import yaml

from .conftest import free_port, isolated_haproxy_env, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
MODELS = 50


def body_of(row: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_fifty_models_behind_two_pool_replicas_within_their_budget(tmp_path):
    import onnxruntime as ort

    from lockgate.server.tools.demo import build_mlp

    repo = tmp_path / "repo"
    sessions, size = {}, 0
    for i in range(MODELS):
        name = f"m{i:02d}"
        folder = repo / name / "1"
        folder.mkdir(parents=True)
        model = build_mlp(seed=i, sizes=(4, 16, 3))
        onnx.save(model, str(folder / "model.onnx"))
        size = max(size, (folder / "model.onnx").stat().st_size)
        (repo / name / "config.yaml").write_text("pool: shared\nmax_batch_size: 8\n")
        sessions[name] = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    budget = 10 * size + size // 2  # ten models a replica, not eleven
    home = tmp_path / "home"
    home.mkdir()
    (home / "lockgate.yaml").write_text(
        yaml.safe_dump({"pools": {"shared": {"replicas": 2, "memory_budget_bytes": budget, "num_cpus": 0.1}}})
    )
    port, grpc_port = free_port(), free_port()
    grpc_address = f"127.0.0.1:{grpc_port}"
    env = {**os.environ, **isolated_haproxy_env(), "LOCKGATE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "--model-repository", str(repo), "--port", str(port), "--grpc-port", str(grpc_port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout=300, log=tmp_path / "serve.log")
        rng = random.Random(0)
        # mixed traffic: a few hot models and a long tail, so replicas must load and evict
        names = [f"m{rng.choice(range(8)) if rng.random() < 0.5 else rng.randrange(MODELS):02d}" for _ in range(300)]
        rows = np.random.default_rng(0).standard_normal((len(names), 4)).astype(np.float32)

        def infer(i: int) -> tuple[str, int, list[float], str]:
            r = requests.post(f"{base}/v2/models/{names[i]}/infer", json=body_of(rows[i]), timeout=60)
            data = r.json()["outputs"][0]["data"] if r.status_code == 200 else []
            return names[i], r.status_code, data, r.text

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(infer, range(len(names))))
        for i, (name, status, data, text) in enumerate(answers):
            assert status == 200, (name, text)
            session = sessions[name]
            want = session.run(None, {session.get_inputs()[0].name: rows[i : i + 1]})[0][0]
            np.testing.assert_allclose(data, want, rtol=1e-5, atol=1e-6, err_msg=name)
        text = requests.get(f"{base}/metrics", timeout=30).text
        loads = _metric(text, "lockgate_pool_loads_total", pool="shared")
        evictions = _metric(text, "lockgate_pool_evictions_total", pool="shared")
        assert loads >= len(set(names)) and evictions > 0, (loads, evictions)
        assert loads - evictions == _metric(text, "lockgate_pool_resident_models", pool="shared") <= 20
        assert 0 < _metric(text, "lockgate_pool_resident_bytes", pool="shared") <= budget
        # a model's requests go to a replica that holds it: one at a time, it is not loaded again
        before = _metric(text, "lockgate_pool_loads_total", pool="shared", model="m03")
        for _ in range(20):
            r = requests.post(
                f"{base}/v2/models/m03/infer",
                json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        after = _metric(requests.get(f"{base}/metrics", timeout=30).text, "lockgate_pool_loads_total", pool="shared", model="m03")
        assert after - before <= 1, (before, after)
        # over gRPC too: the control replica's gRPC server hands the call to the pool
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(grpc_address)
        x = grpcclient.InferInput("input", [1, 4], "FP32")
        x.set_data_from_numpy(rows[:1])
        got = client.infer("m11", [x]).as_numpy(sessions["m11"].get_outputs()[0].name)
        session = sessions["m11"]
        np.testing.assert_allclose(got, session.run(None, {session.get_inputs()[0].name: rows[:1]})[0], rtol=1e-5, atol=1e-6)
        client.close()
        # the repository API's load and unload do not apply to a pooled model: said so, nothing changed
        r = requests.post(f"{base}/v2/repository/models/m05/unload", json={}, timeout=30)
        assert r.status_code == 400 and "hosted in a pool" in r.json()["error"], r.text
        assert requests.post(f"{base}/v2/models/m05/infer", json=body_of(rows[0]), timeout=60).status_code == 200
        # an unknown model is still the control routes' 404, naming the served ones
        r = requests.post(f"{base}/v2/models/nope/infer", json={}, timeout=30)
        assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
        assert re.search(r"starting pool shared \(50 models", (tmp_path / "serve.log").read_text())
    finally:
        proc.terminate()
        proc.wait(120)
