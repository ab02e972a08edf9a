"""OpenTelemetry through a live `lockgate serve` (LOCKGATE_TRACING=otlp) and an OTLP/HTTP receiver
started by the test (opentelemetry-proto's ExportTraceServiceRequest): a request with a W3C
traceparent arrives as a span of that trace, with its stages and attributes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from .conftest import free_port, isolated_haproxy_env, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
TRACE = "0af7651916cd43dd8448eb211c80319c"


class Receiver(BaseHTTPRequestHandler):
    spans: list = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    Receiver.spans.append((service, span))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_an_otlp_collector_under_the_clients_trace(tmp_path):
    from lockgate.server.tools.demo import write_demo_repository

    collector = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    write_demo_repository(tmp_path / "repo", ["iris"])
    env = {
        **os.environ,
        **isolated_haproxy_env(),
        "LOCKGATE_HOME": str(tmp_path / "home"),
        "LOCKGATE_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}/v1/traces",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",  # 1%: the client's sampled flag decides for its trace
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "--model-repository", str(tmp_path / "repo"), "--port", str(port), "--grpc-port", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_ready(base, proc, log=tmp_path / "server.log")
        for _ in range(20):  # no traceparent: a new trace, sampled at 1%
            assert requests.post(f"{base}/v2/models/iris/infer", json=IRIS, timeout=10).status_code == 200
        r = requests.post(
            f"{base}/v2/models/iris/infer", json=IRIS, headers={"traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}, timeout=10
        )
        assert r.status_code == 200 and r.headers["traceparent"].startswith(f"00-{TRACE}-")
        deadline = time.monotonic() + 20
        mine: list = []
        while time.monotonic() < deadline:
            mine = [(svc, s) for svc, s in Receiver.spans if s.trace_id.hex() == TRACE]
            if any(s.name == "lockgate infer iris" for _, s in mine) and any(s.name == "lockgate.compute" for _, s in mine):
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        collector.shutdown()
    names = {s.name for _, s in mine}
    assert {"lockgate infer iris", "lockgate.queue", "lockgate.compute", "lockgate.encode", "lockgate.audit"} <= names, names
    root = next(s for _, s in mine if s.name == "lockgate infer iris")
    assert root.parent_span_id.hex() == "b7ad6b7169203331" and {svc for svc, _ in mine} == {"lockgate"}
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["lockgate.model"].string_value == "iris" and attributes["lockgate.version"].int_value == 1
    assert attributes["lockgate.request_id"].string_value == r.headers["lockgate-request-id"]
    # the 20 requests without a parent were sampled at 1%: 6 or more exported has a chance below 1e-8
    # (an always-on sampler exports all 20)
    unparented = [s for _, s in Receiver.spans if s.name == "lockgate infer iris" and s.trace_id.hex() != TRACE]
    assert len(unparented) <= 5, len(unparented)
