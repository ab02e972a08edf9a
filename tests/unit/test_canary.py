"""A canary through a model's request path: the default alias split between two versions by
weight; each caller always gets the same version while the weights hold, the shares follow the
weights, every answer names its version, and moving the weights reaches a serving replica on its
next refresh."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import onnx

from lockgate.plugins.registry import Registry
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from lockgate.server.tools.demo import build_mlp
from tests.asgi import call

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}).encode()


def test_callers_stick_to_a_version_and_the_shares_follow_the_weights(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path}/registry.db", tmp_path / "artifacts")
    for seed in (0, 1):
        onnx.save(build_mlp(seed=seed), str(tmp_path / f"mlp{seed}.onnx"))
        registry.register(tmp_path / f"mlp{seed}.onnx", "mlp", created_by="alice")
    registry.set_alias("mlp", "production", 1, actor="alice")
    registry.set_alias_split("mlp", "production", {1: 80, 2: 20}, actor="alice")
    service = ModelService("mlp", ModelConfig.model_validate(registry.model_config("mlp")), registry)
    app = ModelApp(service)

    async def ask(client: str) -> int:
        r = await call(app, "POST", "/v2/models/mlp/infer", BODY, {"lockgate-client": client}, root_path="/v2/models/mlp")
        assert r.status == 200, r.body
        return int(r.json()["model_version"])

    async def round_(clients: list[str]) -> dict[str, int]:
        return {c: await ask(c) for c in clients}

    clients = [f"c{i}" for i in range(400)]
    try:
        first = asyncio.run(round_(clients))
        again = asyncio.run(round_(clients))
        assert first == again  # sticky: the same caller, the same version
        shares = Counter(first.values())
        assert set(shares) == {1, 2} and 0.13 <= shares[2] / len(clients) <= 0.27, shares  # 20% of callers, by hash
        assert asyncio.run(ask("c0")) == first["c0"]
        # a version route is not split; the weights move and the replica follows on refresh
        r = asyncio.run(call(app, "POST", "/v2/models/mlp/versions/1/infer", BODY, root_path="/v2/models/mlp"))
        assert r.status == 200 and r.json()["model_version"] == "1"
        registry.set_alias_split("mlp", "production", {1: 20, 2: 80}, actor="alice")
        assert asyncio.run(service.refresh()) is True
        moved = Counter(asyncio.run(round_(clients)).values())
        assert 0.73 <= moved[2] / len(clients) <= 0.87, moved
        # callers of version 2 under 20% stay on it under 80% (bounds only grow for it)
        after = asyncio.run(round_([c for c, v in first.items() if v == 2]))
        assert set(after.values()) == {2}
        registry.set_alias("mlp", "production", 1, actor="alice")  # the canary ends
        assert asyncio.run(service.refresh()) is True and set(asyncio.run(round_(clients[:50])).values()) == {1}
    finally:
        service.close()
        registry.close()
