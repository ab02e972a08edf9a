"""The replica-owned listener, driven over real sockets (no Ray): keep-alive, pipelining, limits, fallback, stop."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from lockgate.plugins import Decision, PluginManager, Principal, hookimpl
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.limits import LimitOptions
from lockgate.server.serving.listener import FastServer
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService

LIMITS = LimitOptions(max_body_bytes=10_000, max_header_bytes=4096, request_timeout_s=1.0, idle_timeout_s=2.0, max_connections=8)
IRIS = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()


async def fallback(scope, receive, send):
    body = json.dumps({"fallback": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


@pytest.fixture(params=["asgi", "whole"])
def serve(demo_registry, request):
    """Runs ``scenario(reader, writer, server)`` against a FastServer serving iris: the model
    app through ASGI, or through its ``whole`` entry as a replica's listener calls it."""
    service = ModelService("iris", ModelConfig.model_validate(demo_registry.model_config("iris")), demo_registry, limits=LIMITS)
    app = ModelApp(service)
    whole = app.whole if request.param == "whole" else None

    yield lambda scenario: talk(FastServer(app, fallback, "/v2/models/iris", LIMITS, whole=whole), scenario)
    service.close()


def talk(server: FastServer, scenario):
    """Serve on a free loopback port, run ``scenario(reader, writer, server)`` over one
    connection, stop the server; what the scenario returned."""

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        task = asyncio.get_running_loop().create_task(server.serve(sock))
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        try:
            return await scenario(reader, writer, server)
        finally:
            writer.close()
            server.should_exit = True
            await asyncio.wait_for(task, 5)

    return asyncio.run(main())


def test_keep_alive_and_pipelined_requests_answer_in_order(serve):
    async def scenario(reader, writer, server):
        writer.write(
            post("/v2/models/iris/infer", IRIS)
            + post("/v2/models/iris/versions/9/infer", IRIS)
            + b"GET /v2/models/iris/ready HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        return [await read_response(reader) for _ in range(3)]

    (s1, h1, b1), (s2, _, b2), (s3, _, b3) = serve(scenario)
    assert s1 == 200 and h1["server"] == "lockgate" and json.loads(b1)["model_name"] == "iris"
    assert s2 == 404 and "no version '9'" in json.loads(b2)["error"]
    assert s3 == 200 and json.loads(b3) == {"name": "iris", "ready": True}


def test_other_paths_go_to_serves_app(serve):
    async def scenario(reader, writer, server):
        writer.write(b"GET /-/healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        return await read_response(reader)

    status, _, body = serve(scenario)
    assert status == 200 and json.loads(body) == {"fallback": "/-/healthz"}


def test_expect_continue_is_answered(serve):
    async def scenario(reader, writer, server):
        head = post("/v2/models/iris/infer", IRIS, "expect: 100-continue\r\n")
        split = head.index(b"\r\n\r\n") + 4
        writer.write(head[:split])
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(head[split:])
        return interim, await read_response(reader)

    interim, (status, _, _) = serve(scenario)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n" and status == 200


def test_oversized_body_is_413_and_closes(serve):
    async def scenario(reader, writer, server):
        writer.write(post("/v2/models/iris/infer", b" " * 20_000))
        response = await read_response(reader)
        return response, await reader.read()

    (status, headers, body), rest = serve(scenario)
    assert status == 413 and headers["connection"] == "close" and b"limit of 10000 bytes" in body and rest == b""


def test_malformed_http_is_400_and_closes(serve):
    async def scenario(reader, writer, server):
        writer.write(b"POST /v2/models/iris/infer HTTP/1.1\r\ncontent-length: abc\r\n\r\n")
        return await read_response(reader), await reader.read()

    (status, _, body), rest = serve(scenario)
    assert status == 400 and b"malformed HTTP request" in body and rest == b""


def test_connection_close_is_honoured_and_client_errors_stay_4xx(serve):
    async def scenario(reader, writer, server):
        writer.write(post("/v2/models/iris/infer", b"{broken", "connection: close\r\n"))
        return await read_response(reader), await reader.read()

    (status, headers, body), rest = serve(scenario)
    assert status == 400 and headers["connection"] == "close" and "malformed JSON body" in json.loads(body)["error"]
    assert rest == b""


def test_malformed_url_is_400_and_closes(serve):
    async def scenario(reader, writer, server):
        writer.write(b"GET http://[bad HTTP/1.1\r\nhost: x\r\n\r\n")
        return await read_response(reader), await reader.read()

    (status, _, body), rest = serve(scenario)
    assert status == 400 and rest == b""


def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(serve):
    async def scenario(reader, writer, server):
        writer.write(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000000\r\n\r\n")
        return await asyncio.wait_for(read_response(reader), 5), await reader.read()

    (status, headers, body), rest = serve(scenario)
    assert status == 413 and headers["connection"] == "close" and b"limit of 10000 bytes" in body and rest == b""


def test_a_chunked_body_that_grows_past_the_limit_is_413(serve):
    async def scenario(reader, writer, server):
        writer.write(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(5):
            writer.write(b"1000\r\n" + b" " * 4096 + b"\r\n")
        return await asyncio.wait_for(read_response(reader), 5)

    status, _, body = serve(scenario)
    assert status == 413 and b"limit of 10000 bytes" in body


def test_headers_over_the_limit_are_400_naming_it(serve):
    async def scenario(reader, writer, server):
        writer.write(b"GET /v2/models/iris HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + b"a" * 8000 + b"\r\n\r\n")
        return await asyncio.wait_for(read_response(reader), 5)

    status, _, body = serve(scenario)
    assert status == 400 and json.loads(body)["error"] == "the request's headers are larger than the limit of 4096 bytes"


@pytest.mark.parametrize(
    "partial", [b"POST /v2/models/iris/in", post("/v2/models/iris/infer", IRIS)[:-20]], ids=["headers", "body"]
)
def test_a_request_that_arrives_too_slowly_is_408(serve, partial):
    async def scenario(reader, writer, server):
        t0 = time.monotonic()
        writer.write(partial)
        response = await asyncio.wait_for(read_response(reader), 5)
        return response, time.monotonic() - t0, server.timed_out

    (status, _, body), waited, timed_out = serve(scenario)
    assert status == 408 and b"did not arrive within 1 s" in body and timed_out == 1
    assert 1.0 <= waited < 3.0


def test_an_idle_connection_is_closed_after_the_idle_timeout(serve):
    async def scenario(reader, writer, server):
        writer.write(post("/v2/models/iris/infer", IRIS))
        status = (await read_response(reader))[0]
        t0 = time.monotonic()
        rest = await asyncio.wait_for(reader.read(), 5)
        return status, rest, time.monotonic() - t0

    status, rest, waited = serve(scenario)
    assert status == 200 and rest == b"" and 2.0 <= waited < 4.0


def test_connections_over_the_limit_get_503_and_the_others_keep_working(serve):
    async def scenario(reader, writer, server):
        host, port = writer.get_extra_info("peername")[:2]
        others = [await asyncio.open_connection(host, port) for _ in range(7)]  # 8 with the fixture's
        r9, w9 = await asyncio.open_connection(host, port)
        refused = await asyncio.wait_for(read_response(r9), 5), await r9.read()
        writer.write(post("/v2/models/iris/infer", IRIS))
        still = (await read_response(reader))[0]
        for _, w in others:
            w.close()
        await asyncio.sleep(0.1)
        r10, w10 = await asyncio.open_connection(host, port)
        w10.write(post("/v2/models/iris/infer", IRIS))
        again = (await read_response(r10))[0]
        w10.close()
        return refused, still, again, server.refused

    ((status, headers, body), rest), still, again, refused = serve(scenario)
    assert status == 503 and headers["retry-after"] == "1" and b"limit of 8 connections" in body and rest == b""
    assert still == 200 and again == 200 and refused == 1


def test_clients_that_leave_mid_request_leave_nothing_behind(serve):
    async def scenario(reader, writer, server):
        host, port = writer.get_extra_info("peername")[:2]
        for round_ in range(10):
            conns = [await asyncio.open_connection(host, port) for _ in range(6)]
            for _, w in conns:
                w.write(post("/v2/models/iris/infer", IRIS) if round_ % 2 else post("/v2/models/iris/infer", IRIS)[:-10])
            await asyncio.sleep(0.001 * round_)
            for _, w in conns:
                w.transport.abort()  # gone, with its request queued, running or half-sent
        for _ in range(100):
            if server.in_flight == 0 and len(server.connections) == 1:
                break
            await asyncio.sleep(0.02)
        depth = server.app.service.served[1].batcher.depth
        writer.write(post("/v2/models/iris/infer", IRIS))
        return server.in_flight, len(server.connections), depth, (await read_response(reader))[0]

    assert serve(scenario) == (0, 1, 0, 200)


class Gatekeeper:
    """Lets 'Bearer ok' in, refuses everyone else (401); counts the checks and records requests."""

    LOCKGATE_PLUGIN_API = "1.3"

    def __init__(self) -> None:
        self.checks = 0
        self.recorded: list = []

    @hookimpl
    def lockgate_authenticate(self, request):
        self.checks += 1
        if request.headers.get("authorization") == "Bearer ok":
            return Principal("app", frozenset({"invoker"}))
        return Decision.deny("missing or wrong key")

    @hookimpl
    def lockgate_record_inference(self, event):
        self.recorded.append(event)


@pytest.fixture(params=["asgi", "whole"])
def gated(demo_registry, request):
    """``run(scenario, limits)`` against a FastServer whose model app has a gatekeeper and a
    recorder, through ASGI or the app's ``whole`` entry."""
    keeper = Gatekeeper()
    manager = PluginManager()
    manager.register(keeper, "keeper")
    big = LimitOptions(max_body_bytes=64 * 1024 * 1024, max_header_bytes=4096, max_url_bytes=1024, request_timeout_s=30.0)
    service = ModelService(
        "iris", ModelConfig.model_validate(demo_registry.model_config("iris")), demo_registry, manager=manager, limits=big
    )
    app = ModelApp(service)

    def run(scenario):
        whole = app.whole if request.param == "whole" else None
        return talk(FastServer(app, fallback, "/v2/models/iris", big, precheck=app.precheck, whole=whole), scenario)

    yield run, keeper
    service.close()


def test_a_refused_request_is_answered_from_its_headers_and_its_body_is_never_read(gated):
    """The gate runs when the headers are in: a caller without a key who announces 60 MB gets
    401 at once, the body is neither awaited nor buffered, and the refusal is recorded."""
    run, keeper = gated

    async def scenario(reader, writer, server):
        writer.write(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 60000000\r\n\r\n" + b"x" * 65536)
        await writer.drain()
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)  # 60 MB never sent
        held = [conn.body_size for conn in server.connections]
        return status, headers, json.loads(body), held

    status, headers, body, held = run(scenario)
    assert status == 401 and body == {"error": "missing or wrong key"} and headers["connection"] == "close"
    assert held == [0]  # nothing of the body was kept
    assert [(e.status, e.decided_by) for e in keeper.recorded] == [(401, "keeper")]


def test_an_allowed_request_is_gated_once(gated):
    run, keeper = gated

    async def scenario(reader, writer, server):
        writer.write(post("/v2/models/iris/infer", IRIS, "authorization: Bearer ok\r\n"))
        return await read_response(reader)

    status, _, _ = run(scenario)
    assert status == 200 and keeper.checks == 1
    assert [(e.status, e.principal) for e in keeper.recorded] == [(200, "app")]


def test_an_endless_url_or_header_is_cut_at_the_limit_as_it_arrives(gated):
    run, _ = gated

    async def long_url(reader, writer, server):
        writer.write(b"GET /v2/models/iris/" + b"a" * 5000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        return await asyncio.wait_for(read_response(reader), 5)

    async def endless_header(reader, writer, server):
        writer.write(b"GET /v2/models/iris HTTP/1.1\r\nx-filler: ")
        for _ in range(64):  # 4 MiB of one header value that never ends
            writer.write(b"y" * 65536)
            try:
                await writer.drain()
            except ConnectionError:
                break
        return await asyncio.wait_for(read_response(reader), 5)

    status, _, body = run(long_url)
    assert status == 414 and b"longer than the limit of 1024 bytes" in body
    status, _, body = run(endless_header)
    assert status == 431 and b"head (URL and headers) is larger than the limit" in body


class Observer:
    """Counts the inference events observers get, and when they come."""

    LOCKGATE_PLUGIN_API = "1.3"

    def __init__(self) -> None:
        self.events: list = []

    @hookimpl
    def lockgate_observe_inference(self, event):
        self.events.append(event)


def observed_iris(demo_registry) -> tuple[ModelApp, ModelService, Observer]:
    """The iris app with an observer plugin and a body limit of 1,024 bytes; its service (to
    close) and the observer."""
    observer = Observer()
    manager = PluginManager()
    manager.register(observer, "observer")
    small = LimitOptions(max_body_bytes=1024)
    service = ModelService(
        "iris", ModelConfig.model_validate(demo_registry.model_config("iris")), demo_registry, manager=manager, limits=small
    )
    return ModelApp(service), service, observer


def test_the_whole_entry_answers_what_asgi_sends_and_observers_come_after(demo_registry):
    """``ModelApp.whole`` (the listener's entry without ASGI messages) gives each request the
    status, headers and body the ASGI entry sends: an answer, a client mistake, a body over the
    model's own limit, a method the route refuses, a metadata route. The observers get the
    inference only from ``done``, once the listener has sent the answer."""
    from tests.asgi import call

    app, service, observer = observed_iris(demo_registry)
    requests = [
        ("POST", "/infer", IRIS),
        ("POST", "/infer", b'{"inputs": [{"name": "nope"'),
        ("POST", "/infer", IRIS + b" " * (1025 - len(IRIS))),
        ("GET", "/infer", b""),
        ("GET", "", b""),
        ("GET", "/ready", b""),
    ]

    async def both():
        out = []
        for method, route, body in requests:
            path = "/v2/models/iris" + route
            via_asgi = await call(app, method, path, body, root_path="")
            scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "", "headers": []}
            seen = len(observer.events)
            status, headers, answer, done = await app.whole(scope, body)
            before_done = len(observer.events) - seen
            if done is not None:
                done()
            out.append((via_asgi, (status, dict((k.decode(), v.decode()) for k, v in headers), answer), before_done))
        return out

    try:
        results = asyncio.run(both())
    finally:
        service.close()
    statuses = [whole[0] for _, whole, _ in results]
    assert statuses == [200, 400, 413, 405, 200, 200]
    for (via_asgi, (status, headers, answer), before_done), (method, route, _) in zip(results, requests):
        assert status == via_asgi.status, (method, route)
        expected = {k: v for k, v in via_asgi.headers.items() if k != "content-length"}
        if "lockgate-request-id" in expected:  # each request gets an id of its own
            assert len(headers.pop("lockgate-request-id")) == 32
            expected.pop("lockgate-request-id")
        assert headers == expected, (method, route)
        if status == 200 and route == "/infer":
            assert json.loads(answer)["outputs"] == json.loads(via_asgi.body)["outputs"]
        else:
            assert answer == via_asgi.body, (method, route)
        assert before_done == 0
    # Each inference request (answered or refused) was observed twice: once per entry.
    assert [e.status for e in observer.events] == [200, 200, 400, 400, 413, 413, 405, 405]


def test_call_whole_answers_a_model_app_through_its_whole_entry(demo_registry):
    """``asgi.call_whole`` (gRPC calls, pool replicas, replays) runs a ``ModelApp`` through
    ``whole``, not its ASGI messages, and answers what the ASGI entry does: status, headers with
    the body's content-length, body; the observers have the inference when it returns. An app
    without ``whole`` still answers through ASGI."""
    from lockgate.server.serving.asgi import call_whole

    app, service, observer = observed_iris(demo_registry)
    entered = []
    whole = app.whole

    async def counted(scope, body):
        entered.append(isinstance(body, bytes))  # the body in hand, or ASGI's receive
        return await whole(scope, body)

    app.whole = counted

    class AsgiOnly:  # the same app, seen as ASGI alone
        async def __call__(self, scope, receive, send):
            await ModelApp.__call__(app, scope, receive, send)

    requests = [("POST", "/infer", IRIS), ("POST", "/infer", b'{"inputs": 1}'), ("POST", "/infer", b"x" * 1025), ("GET", "", b"")]

    async def both():
        out = []
        for method, route, body in requests:
            path = "/v2/models/iris" + route
            scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "", "headers": []}
            seen = len(observer.events)
            through_whole = await call_whole(app, dict(scope), body)
            observed = len(observer.events) - seen
            out.append((through_whole, await call_whole(AsgiOnly(), dict(scope), body), observed))
        return out

    try:
        results = asyncio.run(both())
    finally:
        service.close()
    assert entered == [True, False] * len(requests)  # call_whole handed the bytes; the ASGI entry, its receive
    assert [r[0][0] for r in results] == [200, 400, 413, 200]
    for (status, headers, body), (asgi_status, asgi_headers, asgi_body), _ in results:
        assert status == asgi_status
        mine, theirs = dict(headers), dict(asgi_headers)
        assert mine[b"content-length"] == str(len(body)).encode()
        if b"lockgate-request-id" in theirs:
            assert len(mine.pop(b"lockgate-request-id")) == 32
            theirs.pop(b"lockgate-request-id")
        assert mine == {**theirs, b"content-length": str(len(body)).encode()}
        if status == 200 and b'"outputs"' in asgi_body:
            assert json.loads(body)["outputs"] == json.loads(asgi_body)["outputs"]
        else:
            assert body == asgi_body
    assert [observed for _, _, observed in results] == [1, 1, 1, 0]  # inference requests, observed by return
