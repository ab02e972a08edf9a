"""Helpers of the tests that deploy models of their own into the session's server and load them."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import onnx
import requests
from ray import serve

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}


def running(app: str) -> int:
    """Serve's count of RUNNING replicas of ``app``'s model deployment."""
    status = serve.status().applications.get(app)
    if status is None:
        return 0
    deployment = status.deployments[f"model-{app}"]
    return sum(n for state, n in deployment.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def deploy(server: str, registry, governance, folder: Path, name: str, model: onnx.ModelProto, config: dict) -> None:
    """Register ``model`` as ``name`` version 1 with ``config``, approve it, alias it, load it."""
    onnx.save(model, str(folder / "model.onnx"))
    registry.register(folder / "model.onnx", name, created_by="tester", config=config)
    governance.decide("approve", name, 1, actor="reviewer")
    registry.set_alias(name, "production", 1, actor="tester")
    r = requests.post(f"{server}/v2/repository/models/{name}/load", timeout=300)
    if r.status_code != 200:  # what the test's registry and the server each list
        index = requests.post(f"{server}/v2/repository/index", timeout=30)
        listed = index.json() if index.status_code == 200 else index.text
        raise AssertionError(
            f"{r.status_code} {r.text}; test registry {registry.engine.url} lists {registry.list_models()}; "
            f"the server's index: {listed}; answered by {r.headers.get('server')} {dict(r.headers)}"
        )


class Load:
    """``threads`` clients, each sending the next request as soon as the last one is answered,
    until stopped; every status (or exception name) is counted, the request ids of the answers
    kept, and a 503 without Retry-After counted apart."""

    def __init__(self, url: str, threads: int, body: dict = ROW) -> None:
        self.url, self.body, self.codes, self.stop = url, body, Counter(), threading.Event()
        self.answered: list[str] = []
        self.no_retry_after = 0
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for w in self.workers:
            w.start()

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    r = session.post(self.url, json=self.body, timeout=30)
                except requests.RequestException as e:
                    with self.lock:
                        self.codes[type(e).__name__] += 1
                    continue
                with self.lock:
                    self.codes[r.status_code] += 1
                    if r.status_code == 200:
                        self.answered.append(r.headers["lockgate-request-id"])
                    elif r.status_code == 503 and "retry-after" not in r.headers:
                        self.no_retry_after += 1

    def finish(self) -> Counter:
        self.stop.set()
        for w in self.workers:
            w.join(60)
        return self.codes
