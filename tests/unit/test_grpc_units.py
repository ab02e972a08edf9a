"""The gRPC pieces without Ray: message conversion, gRPC over the replica's HTTP/1.1 listener
(framing, trailers, errors), and the ingress's routing configuration."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from lockgate.server.errors import BadRequest
from lockgate.server.hosting.grpc_ingress import EXPIRE_S, GrpcIngress, model_acl
from lockgate.server.serving.grpc_codec import infer_request_body, infer_response, parameters_json, set_parameters
from lockgate.server.serving.grpc_service import GrpcOverHttp, OipGrpcService
from lockgate.server.serving.listener import FastServer
from lockgate.server.serving.model_app import ModelApp
from tests.unit.test_protocol import service


def test_typed_contents_become_the_binary_tensors_an_http_client_sends():
    request = pb.ModelInferRequest(model_name="m", id="x")
    request.inputs.add(name="a", datatype="INT16", shape=[1, 2]).contents.int_contents.extend([-3, 300])
    request.inputs.add(name="b", datatype="BYTES", shape=[1]).contents.bytes_contents.extend([b"hi"])
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    request.parameters["timeout"].int64_param = 5
    body, length = infer_request_body(request)
    import json

    doc = json.loads(body[:length])
    assert doc["id"] == "x" and doc["parameters"] == {"timeout": 5, "binary_data_output": True}
    assert doc["inputs"][0] == {"name": "a", "datatype": "INT16", "shape": [1, 2], "parameters": {"binary_data_size": 4}}
    assert doc["outputs"] == [{"name": "y", "parameters": {"classification": 2, "binary_data": True}}]
    assert body[length:] == np.array([-3, 300], "<i2").tobytes() + b"\x02\x00\x00\x00hi"


def test_a_typed_value_outside_its_datatype_is_refused_naming_the_input():
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="UINT8", shape=[1]).contents.uint_contents.extend([256])
    with pytest.raises(BadRequest, match="input 'a': a value of uint_contents is outside UINT8's range \\[0, 255\\]"):
        infer_request_body(request)


def test_raw_and_typed_contents_in_one_request_are_refused():
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 4])
    request.inputs.add(name="a", datatype="FP32", shape=[1]).contents.fp32_contents.extend([1.0])
    with pytest.raises(BadRequest, match="input 'a' has typed contents and the request raw_input_contents"):
        infer_request_body(request)


def test_parameters_round_trip_between_grpc_and_json():
    request = pb.ModelInferRequest()
    set_parameters(request.parameters, {"s": "v", "i": -4, "u": 1 << 63, "f": 0.5, "b": True})
    assert parameters_json(request.parameters) == {"s": "v", "i": -4, "u": 1 << 63, "f": 0.5, "b": True}


def test_a_binary_http_answer_becomes_raw_output_contents():
    header = b'{"model_name":"m","model_version":"2","id":"q","outputs":[{"name":"y","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}'
    blob = np.array([1.5, -2], "<f4").tobytes()
    response = infer_response(header + blob, len(header))
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "q")
    assert list(response.outputs[0].shape) == [1, 2] and response.raw_output_contents[0] == blob


def test_the_ingress_matches_whole_model_names_and_routes_server_calls_to_control():
    assert model_acl("mlp") == "req.body,bytes(5,5) -m bin 0A036D6C70"
    long = "m" * 128  # a two-byte varint length
    assert model_acl(long).startswith("req.body,bytes(5,131) -m bin 0A8001")
    ingress = GrpcIngress("127.0.0.1", 8001, 40000)
    ingress.register("mlp", "127.0.0.1", 30001, False)
    ingress.register("mlp", "127.0.0.1", 30002, True)
    ingress.register("gone", "10.0.0.9", 30003, False)
    ingress.replicas[("gone", "10.0.0.9", 30003, False)] = time.monotonic() - EXPIRE_S - 1
    text = ingress.render()
    assert "bind 127.0.0.1:8001 proto h2" in text and "option http-buffer-request" in text
    assert "server r0 127.0.0.1:30001 check" in text and "server r1 127.0.0.1:30002 proto h2 check" in text
    assert "gone" not in text and "10.0.0.9" not in text  # not heard from: taken out
    assert "use_backend control if server_call" in text and text.rstrip().endswith("server control 127.0.0.1:40000 proto h2")


def _frame(message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


@pytest.fixture(scope="module")
def iris(demo_registry):
    s = service(demo_registry, "iris")
    yield s
    s.close()


def test_grpc_over_http_answers_with_a_message_and_grpc_status(iris):
    bridge = GrpcOverHttp(OipGrpcService(ModelApp(iris), "iris"))
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    path = "/inference.GRPCInferenceService/ModelInfer"
    payload, trailers = asyncio.run(bridge.handle(path, [], _frame(request), None))
    assert dict(trailers)[b"grpc-status"] == b"0" and b"lockgate-request-id" in dict(trailers)
    response = pb.ModelInferResponse.FromString(payload[5:])
    assert int.from_bytes(payload[1:5], "big") == len(payload) - 5 and len(response.raw_output_contents) == 2
    cases = [
        (path, b"\x00\x00\x00\x00\x09abc", 13, b"not one length-prefixed gRPC message"),
        (path, b"\x01\x00\x00\x00\x00", 12, b"compressed messages are not accepted"),
        (path, b"\x00\x00\x00\x00\x03\xff\xff\xff", 13, b"malformed ModelInfer message"),
        ("/inference.GRPCInferenceService/Nope", _frame(request), 12, b"no method Nope"),
        ("/inference.GRPCInferenceService/ModelStreamInfer", _frame(request), 12, b"does not implement ModelStreamInfer"),
    ]
    for where, body, code, fragment in cases:
        payload, trailers = asyncio.run(bridge.handle(where, [], body, None))
        found = dict(trailers)
        assert payload == b"" and found[b"grpc-status"] == str(code).encode(), (where, found)
        assert fragment in found[b"grpc-message"], found
    other = pb.ModelInferRequest(model_name="digits")
    _, trailers = asyncio.run(bridge.handle(path, [], _frame(other), None))
    assert dict(trailers)[b"grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0]).encode()


def test_grpc_message_is_percent_encoded():
    from lockgate.server.serving.grpc_service import _grpc_message

    assert _grpc_message("100% é\n") == b"100%25 %C3%A9%0A"


def test_the_listener_answers_grpc_with_chunked_trailers_and_keeps_the_connection(iris):
    """An HTTP/1.1 request as HAProxy forwards a gRPC call: a chunked request body, then an
    answer of one chunk and the grpc-status trailer, on a connection that serves the next call too."""
    app = ModelApp(iris)
    server = FastServer(app, app, "/v2/models/iris", grpc=GrpcOverHttp(OipGrpcService(app, "iris")))
    request = pb.ModelReadyRequest(name="iris")
    body = _frame(request)
    call = (
        b"POST /inference.GRPCInferenceService/ModelReady HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc\r\n"
        b"te: trailers\r\ntransfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    )

    async def go() -> bytes:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        task = asyncio.ensure_future(server.serve(sock))
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        got = b""
        for _ in range(2):
            writer.write(call)
            await writer.drain()
            got += await asyncio.wait_for(reader.readuntil(b"grpc-status: 0\r\n\r\n"), 10)
        writer.close()
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        return got

    got = asyncio.run(go())
    first = got[: got.index(b"grpc-status: 0\r\n\r\n")]
    assert got.count(b"HTTP/1.1 200 OK") == 2 and b"content-type: application/grpc" in first
    head, chunked = first.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head
    size, rest = chunked.split(b"\r\n", 1)
    message = rest[: int(size, 16)]
    assert pb.ModelReadyResponse.FromString(message[5:]).ready is True


@pytest.mark.parametrize(
    "status,headers,code,retry",
    [
        (400, [], grpc.StatusCode.INVALID_ARGUMENT, None),
        (401, [(b"www-authenticate", b"Bearer")], grpc.StatusCode.UNAUTHENTICATED, None),
        (403, [], grpc.StatusCode.PERMISSION_DENIED, None),
        (404, [], grpc.StatusCode.NOT_FOUND, None),
        (503, [(b"retry-after", b"1")], grpc.StatusCode.UNAVAILABLE, b"1"),
        (504, [], grpc.StatusCode.DEADLINE_EXCEEDED, None),
        (500, [], grpc.StatusCode.INTERNAL, None),
    ],
)
def test_http_errors_become_tritons_grpc_status_codes(status, headers, code, retry):
    """An app answering ``status`` with an OIP error body: the call fails with Triton's code, the
    message of the body, and a retry hint where HTTP gives Retry-After."""

    async def app(scope, receive, send):
        assert scope["path"] == "/v2/models/m/infer" and (b"authorization", b"Bearer k") in scope["headers"]
        # the call's framing is not the OIP request's, and a sent header length never overrides the real one
        lengths = [v for k, v in scope["headers"] if k == b"inference-header-content-length"]
        body = (await receive())["body"]
        assert lengths == [str(len(body) - 4).encode()] and b"content-type" not in dict(scope["headers"])  # 4: the raw input
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), *headers]}
        )
        await send({"type": "http.response.body", "body": b'{"error": "what went wrong"}'})

    bridge = GrpcOverHttp(OipGrpcService(app, "m"))
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 4])
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    sent = [
        (b"authorization", b"Bearer k"),
        (b"inference-header-content-length", b"3"),
        (b"content-type", b"application/grpc"),
    ]
    payload, trailers = asyncio.run(bridge.handle("/inference.GRPCInferenceService/ModelInfer", sent, _frame(request), None))
    found = dict(trailers)
    assert payload == b"" and found[b"grpc-status"] == str(code.value[0]).encode()
    assert found[b"grpc-message"].startswith(b"what went wrong")
    assert found.get(b"retry-after") == retry


def test_a_model_not_routed_by_the_grpc_ingress_yet_keeps_the_server_unready_and_the_call_retries():
    """A model's running replicas register with the gRPC ingress after Serve reports them: until
    they do, server readiness waits, and a gRPC call that fell through to the control replica is
    UNAVAILABLE with a retry hint, not a 404. A model with no running replica (scaled to zero)
    says so."""
    from lockgate.server.serving.control_app import ControlApp

    unrouted = {"iris"}

    async def running():
        return {"iris": "RUNNING", "mlp": "RUNNING"}

    app = ControlApp(["iris", "mlp"], running, grpc_unrouted=lambda: unrouted)
    bridge = GrpcOverHttp(OipGrpcService(app))
    ready = asyncio.run(bridge.handle("/inference.GRPCInferenceService/ServerReady", [], _frame(pb.ServerReadyRequest()), None))
    assert dict(ready[1])[b"grpc-status"] == b"0" and not pb.ServerReadyResponse.FromString(ready[0][5:]).ready
    model_ready = asyncio.run(
        bridge.handle("/inference.GRPCInferenceService/ModelReady", [], _frame(pb.ModelReadyRequest(name="iris")), None)
    )
    assert not pb.ModelReadyResponse.FromString(model_ready[0][5:]).ready
    for name, fragment in [
        ("iris", b"not reachable over gRPC yet"),
        ("mlp", b"no running replica to answer gRPC"),
    ]:
        request = pb.ModelInferRequest(model_name=name, raw_input_contents=[b"\x00" * 16])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        payload, trailers = asyncio.run(bridge.handle("/inference.GRPCInferenceService/ModelInfer", [], _frame(request), None))
        found = dict(trailers)
        assert payload == b"" and found[b"grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0]).encode(), found
        assert fragment in found[b"grpc-message"] and found.get(b"retry-after") == b"1", found
    unrouted.clear()
    ready = asyncio.run(bridge.handle("/inference.GRPCInferenceService/ServerReady", [], _frame(pb.ServerReadyRequest()), None))
    assert pb.ServerReadyResponse.FromString(ready[0][5:]).ready


def test_the_ingress_routes_a_new_replica_at_once_and_reports_what_it_routes(monkeypatch):
    ingress = GrpcIngress("127.0.0.1", 1, 2)
    applied = []
    monkeypatch.setattr(ingress, "apply", lambda: applied.append(sorted({k[0] for k in ingress._live()})) or True)

    async def scenario():
        follower = asyncio.get_running_loop().create_task(ingress.run())
        await asyncio.sleep(0.6)  # one timed round
        rounds = len(applied)
        ingress.register("iris", "127.0.0.1", 9000, True)
        await asyncio.sleep(0.05)  # far less than a round: woken by the registration
        follower.cancel()
        return rounds

    rounds = asyncio.run(scenario())
    assert rounds == 1 and applied[-1] == ["iris"] and len(applied) == 2
