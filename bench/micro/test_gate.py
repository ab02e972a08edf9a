"""What the API-key check adds to one request: the model app's gate (headers, authenticate,
authorize through the plugin manager and the governance plugin) against a plain await; once with
the key's allow held by the app (as served: ``lockgate_reuse_allow``), once asked every time."""

from __future__ import annotations

import asyncio
import tempfile
from types import SimpleNamespace

import pytest

from lockgate.plugins import Settings, build_manager
from lockgate.server.serving.model_app import ModelApp, Outcome

N = 1000  # gates per benchmark call


@pytest.fixture(scope="module")
def gate():
    home = tempfile.mkdtemp()
    manager = build_manager(
        Settings(f"sqlite:///{home}/g.db", f"{home}/a", "production", {}, home, anonymous=True), allow=["registry", "governance"]
    )
    governance = manager.plugin("governance")
    governance.create_key("root", ["admin"], ["*"], actor="bench")
    key, _ = governance.create_key("bench", ["invoker"], ["iris", "digits"], actor="root")
    app = ModelApp(SimpleNamespace(manager=manager, name="iris", config=SimpleNamespace(autoscaling=None)))
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    scope = {"type": "http", "method": "POST", "path": "/v2/models/iris/infer", "headers": headers, "client": ("127.0.0.1", 5000)}
    return app, scope


async def _gated(app, scope):
    for _ in range(N):
        await app._gate(scope, "infer", None, Outcome())


async def _plain():
    for _ in range(N):
        await asyncio.sleep(0)
        Outcome()


@pytest.mark.benchmark(group=f"gate: {N} requests, API key checked")
def test_plain_await(benchmark):
    loop = asyncio.new_event_loop()
    benchmark(lambda: loop.run_until_complete(_plain()))


@pytest.mark.benchmark(group=f"gate: {N} requests, API key checked")
def test_gate(benchmark, gate):
    app, scope = gate
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_gated(app, scope))  # the key cache loads
    assert app.manager.plugin("governance").cache.check(scope["headers"][2][1].decode().split(" ")[1]).name == "bench"
    assert app.allows is not None and app.allows.on
    benchmark(lambda: loop.run_until_complete(_gated(app, scope)))


@pytest.mark.benchmark(group=f"gate: {N} requests, API key checked")
def test_gate_asked_every_time(benchmark, gate):
    app, scope = gate
    loop = asyncio.new_event_loop()
    app.allows.on = False
    try:
        loop.run_until_complete(_gated(app, scope))
        benchmark(lambda: loop.run_until_complete(_gated(app, scope)))
    finally:
        app.allows.on = True
