"""The Serve application builder on a real Serve: an application built by
``lockgate.server.app:build`` from its config-file args serves through the same ingress."""

from __future__ import annotations

import numpy as np
import onnx
import requests

from lockgate.server.demo import build_mlp


def test_an_application_from_the_builder_serves(server, registry, governance, settings, tmp_path, monkeypatch):
    from ray import serve

    from lockgate.server.app import BuildArgs, build

    onnx.save(build_mlp(seed=4), str(tmp_path / "model.onnx"))
    registry.register(tmp_path / "model.onnx", "built", created_by="tester", config={"max_batch_size": 8, "num_cpus": 0.05})
    governance.decide("approve", "built", 1, actor="reviewer")
    registry.set_alias("built", "production", 1, actor="tester")
    # what a Serve config file's runtime_env gives the builder
    monkeypatch.setenv("LOCKGATE_HOME", settings.home)
    monkeypatch.setenv("LOCKGATE_REGISTRY_URL", settings.registry_url)
    monkeypatch.setenv("LOCKGATE_ARTIFACTS", settings.artifact_dir)
    app = build(BuildArgs.model_validate({"model": "built"}))
    serve.run(app, name="built", route_prefix="/v2/models/built")
    try:
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x.reshape(-1).tolist()}]}
        r = requests.post(f"{server}/v2/models/built/infer", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["model_name"] == "built" and r.json()["model_version"] == "1"
        assert len(r.headers["lockgate-request-id"]) == 24
    finally:
        serve.delete("built")
