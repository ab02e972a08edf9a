"""OpenTelemetry spans of an inference request, with the SDK's in-memory exporter: the client's
W3C traceparent is the parent, the answer carries the request span's traceparent, and the
request span has its children (gate, queue, batch, compute, encode, audit) inside it, with the
model, version, request id and batch rows as attributes. Off, nothing is traced."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lockgate.plugins import Settings, build_manager
from lockgate.server.serving import tracing
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from lockgate.server.tools.demo import write_demo_repository
from lockgate.server.tools.repository import announce_imports, import_repository
from tests.asgi import call

IRIS = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def traced(tmp_path, monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", None)
    monkeypatch.setattr(tracing, "_configured", False)
    tracing.setup(provider)
    write_demo_repository(tmp_path / "repo", ["iris"])
    home = tmp_path / "home"
    manager = build_manager(
        Settings(f"sqlite:///{home}/registry.db", str(home / "artifacts"), "production", {}, str(home), anonymous=True)
    )
    registry = manager.registry()
    import_repository(tmp_path / "repo", registry, actor="t", before_alias=announce_imports(manager, "t"))
    service = ModelService("iris", ModelConfig.model_validate(registry.model_config("iris")), registry, manager=manager)
    yield ModelApp(service), exporter
    service.close()
    manager.plugin("audit").close()


def test_a_request_is_a_server_span_under_the_clients_trace_with_its_stages(traced):
    app, exporter = traced
    r = asyncio.run(
        call(app, "POST", "/v2/models/iris/infer", IRIS, {"traceparent": f"00-{TRACE}-{PARENT}-01"}, root_path="/v2/models/iris")
    )
    assert r.status == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["lockgate infer iris"]
    assert f"{root.context.trace_id:032x}" == TRACE and f"{root.parent.span_id:016x}" == PARENT
    assert r.headers["traceparent"] == f"00-{TRACE}-{root.context.span_id:016x}-01"
    attributes = dict(root.attributes)
    assert attributes["lockgate.model"] == "iris" and attributes["lockgate.version"] == 1
    assert attributes["lockgate.request_id"] == r.headers["lockgate-request-id"] and attributes["lockgate.batch_rows"] == 1
    assert attributes["http.response.status_code"] == 200
    for name in ("lockgate.gate", "lockgate.queue", "lockgate.batch", "lockgate.compute", "lockgate.encode", "lockgate.audit"):
        child = spans[name]
        assert child.parent.span_id == root.context.span_id and child.context.trace_id == root.context.trace_id, name
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time, name
    assert spans["lockgate.compute"].attributes["lockgate.batch_rows"] == 1


def test_without_a_traceparent_a_trace_starts_here_and_refusals_are_traced(traced):
    app, exporter = traced
    r = asyncio.run(call(app, "POST", "/v2/models/iris/infer", b"{", root_path="/v2/models/iris"))
    assert r.status == 400
    root = next(s for s in exporter.get_finished_spans() if s.name == "lockgate infer iris")
    assert root.parent is None and root.attributes["http.response.status_code"] == 400
    assert r.headers["traceparent"].startswith(f"00-{root.context.trace_id:032x}-")


def test_off_by_default(monkeypatch):
    monkeypatch.setattr(tracing, "_tracer", None)
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.delenv("LOCKGATE_TRACING", raising=False)
    assert tracing.setup() is None and tracing.tracer() is None
