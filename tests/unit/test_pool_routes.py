"""Pools of shared replicas, without Ray: the control routes forward a pooled model's request
whole and send its answer back; readiness follows the pool; the pool options are validated."""

from __future__ import annotations

import asyncio

import pytest


def test_a_pooled_models_request_is_forwarded_whole_and_its_answer_sent_as_it_is():
    """The control routes hand a pooled model's request to its pool (forward) and send back what
    the pool answered; readiness follows the pool's application; a body over the limit is 413."""
    from lockgate.server.serving.control_app import ControlApp
    from tests.asgi import call

    seen = []

    async def forward(name, scope, body):
        seen.append((name, scope["method"], scope["path"], body))
        return 200, [(b"content-type", b"application/json"), (b"x-from", b"pool")], b'{"model_name": "m1"}'

    async def status():
        return {"lockgate-pool-shared": "RUNNING", "own": "RUNNING"}

    app = ControlApp(["m1", "own"], status, pooled={"m1": "lockgate-pool-shared"}, forward=forward, max_body_bytes=2000)
    r = asyncio.run(call(app, "POST", "/v2/models/m1/infer", b"x" * 1500))
    assert r.status == 200 and r.json() == {"model_name": "m1"} and r.headers.get("x-from") == "pool"
    assert seen == [("m1", "POST", "/v2/models/m1/infer", b"x" * 1500)]
    assert asyncio.run(call(app, "GET", "/v2/health/ready")).status == 200
    r = asyncio.run(call(app, "POST", "/v2/models/m1/infer", b"x" * 2500))
    assert r.status == 413 and "limit of 2000 bytes" in r.json()["error"] and len(seen) == 1

    async def down(name, scope, body):
        raise RuntimeError("pool replica died")

    r = asyncio.run(call(ControlApp(["m1"], status, pooled={"m1": "lockgate-pool-shared"}, forward=down), "GET", "/v2/models/m1"))
    assert r.status == 503 and "its pool did not answer (RuntimeError)" in r.json()["error"]

    async def pool_starting():
        return {"lockgate-pool-shared": "DEPLOYING"}

    r = asyncio.run(
        call(ControlApp(["m1"], pool_starting, pooled={"m1": "lockgate-pool-shared"}, forward=forward), "GET", "/v2/health/ready")
    )
    assert r.status == 503 and "m1" in r.json()["error"]


def test_pools_are_validated_and_a_model_names_one():
    from lockgate.server.errors import ConfigError
    from lockgate.server.serving.config import ModelConfig, pool_options

    pools = pool_options({"pools": {"shared": {"replicas": 2, "memory_budget_bytes": 1000}}})
    assert pools["shared"].replicas == 2 and pools["shared"].max_models == 64
    with pytest.raises(ConfigError, match="shared.memory_budget_bytes"):
        pool_options({"pools": {"shared": {"memory_budget_bytes": 0}}})
    with pytest.raises(ConfigError, match="shared.replica"):
        pool_options({"pools": {"shared": {"replica": 2}}})
    assert ModelConfig.model_validate({"pool": "shared"}).pool == "shared"
    with pytest.raises(ValueError):
        ModelConfig.model_validate({"pool": "has space"})
