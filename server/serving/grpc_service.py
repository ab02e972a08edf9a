"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2 / Triton),
answered by the same ASGI applications that answer HTTP.

Each RPC becomes the HTTP request it stands for (``ModelInfer`` -> ``POST /v2/models/<m>/infer``
with binary tensors, ``ModelConfig`` -> ``GET .../config``, ...), handed to the app in-process:
no socket, no second event loop. So a gRPC request passes the same gate (the API key in the
``authorization`` metadata), the same batcher, the same audit record, metrics and statistics as
HTTP, and an error is the HTTP error's message with the gRPC code Triton answers with.
A model replica serves its ``ModelApp``; the control replica its ``ControlApp`` (server health,
metadata, the repository, statistics of every model, and errors for unknown models).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from .asgi import SERVER_NAME, Scope, call_whole, server_version
from .control_app import MODEL_EXTENSIONS
from .grpc_codec import STATUS_CODES, infer_request_body, infer_response
from .protocol import HEADER_LENGTH
from .settings import host_port

__all__ = ["GrpcOverHttp", "OipGrpcService", "start_grpc_server"]

log = logging.getLogger("lockgate.server")

_HEADER_LENGTH = HEADER_LENGTH.encode()
_NOT_FORWARDED = frozenset({_HEADER_LENGTH, b"content-length", b"transfer-encoding", b"content-type", b"te"})
_NOT_IMPLEMENTED = (
    "ModelStreamInfer",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)


class _Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(b"".join(self.body))


def _model_path(name: str, version: str) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


class OipGrpcService(pbg.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over ``app``, an OIP ASGI app (``ModelApp`` of ``model``,
    or ``ControlApp`` with ``model`` None)."""

    def __init__(self, app: Any, model: str | None = None) -> None:
        self.app = app
        self.model = model

    async def _http(self, context: Any, method: str, path: str, body: bytes = b"", header_length: int | None = None) -> _Answer:
        raw = getattr(context, "raw_headers", None)  # _HttpContext: the listener's bytes as they are
        if raw is None:  # grpc.aio: the call's metadata
            raw = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in (context.invocation_metadata() or ())
                if isinstance(v, str) and not k.startswith(":") and k.isascii() and v.isascii()
            ]
        # The call's own framing headers are not the OIP request's; the header length is ours to set.
        headers = [(k, v) for k, v in raw if k not in _NOT_FORWARDED and not k.endswith(b"-bin")]
        if header_length is not None:
            headers.append((_HEADER_LENGTH, str(header_length).encode()))
        peer = context.peer() or ""
        host = peer.split(":")[1] if peer.startswith(("ipv4:", "ipv6:")) else None
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "2",
            "scheme": "grpc",
            "method": method,
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": (host, 0) if host else None,
        }
        answer = _Answer()
        answer.status, answer.headers, whole = await call_whole(self.app, scope, body)
        answer.body = [whole]
        request_id = answer.header(b"lockgate-request-id")
        if request_id is not None:
            context.set_trailing_metadata((("lockgate-request-id", request_id.decode()),))
        return answer

    async def _fail(self, context: Any, answer: _Answer) -> Any:
        try:
            message = answer.json().get("error", "")
        except ValueError:
            message = b"".join(answer.body).decode("utf-8", "replace")
        code = getattr(grpc.StatusCode, STATUS_CODES.get(answer.status, "INTERNAL"))
        retry = answer.header(b"retry-after")
        if retry is not None:
            message = f"{message} (retry after {retry.decode()} s)"
            context.set_trailing_metadata((("retry-after", retry.decode()),))
        await context.abort(code, message)

    def _misrouted(self, name: str) -> str | None:
        if self.model is not None and name != self.model:
            return f"model '{name}' is not served by this replica of '{self.model}'"
        return None

    async def _model_get(self, context: Any, name: str, version: str, rest: str = "") -> _Answer:
        wrong = self._misrouted(name)
        if wrong is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, wrong)
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request names no model")
        answer = await self._http(context, "GET", _model_path(name, version) + rest)
        if answer.status != 200:
            await self._fail(context, answer)
        return answer

    # -- server ---------------------------------------------------------------------------------

    # A model replica answers the server calls for itself (the ingress sends them to the control
    # replica; a client that dials a replica directly gets the replica's view).

    async def ServerLive(self, request: Any, context: Any) -> Any:
        if self.model is not None:
            return pb.ServerLiveResponse(live=True)
        answer = await self._http(context, "GET", "/v2/health/live")
        return pb.ServerLiveResponse(live=answer.status == 200)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        path = "/v2/health/ready" if self.model is None else f"/v2/models/{self.model}/ready"
        answer = await self._http(context, "GET", path)
        return pb.ServerReadyResponse(ready=answer.status == 200)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        if self.model is not None:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=MODEL_EXTENSIONS)
        answer = await self._http(context, "GET", "/v2")
        if answer.status != 200:
            await self._fail(context, answer)
        doc = answer.json()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])

    # -- models ---------------------------------------------------------------------------------

    async def ModelReady(self, request: Any, context: Any) -> Any:
        wrong = self._misrouted(request.name)
        if wrong is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, wrong)
        answer = await self._http(context, "GET", _model_path(request.name, request.version) + "/ready")
        if answer.status in (200, 503):  # 503: known, not serving now
            return pb.ModelReadyResponse(ready=answer.status == 200)
        return await self._fail(context, answer)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        doc = (await self._model_get(context, request.name, request.version)).json()
        response = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"])
        for tensor in doc["inputs"]:
            response.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        for tensor in doc["outputs"]:
            response.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return response

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        doc = (await self._model_get(context, request.name, request.version, "/config")).json()
        response = pb.ModelConfigResponse()
        json_format.ParseDict(doc, response.config)
        return response

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        if request.name:
            doc = (await self._model_get(context, request.name, request.version, "/stats")).json()
        else:
            answer = await self._http(context, "GET", "/v2/models/stats")
            if answer.status != 200:
                return await self._fail(context, answer)
            doc = answer.json()
        return json_format.ParseDict(doc, pb.ModelStatisticsResponse())

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        wrong = self._misrouted(request.model_name)
        if wrong is not None:
            await context.abort(grpc.StatusCode.NOT_FOUND, wrong)
        try:
            body, length = infer_request_body(request)
        except Exception as e:  # noqa: BLE001 - a BadRequest, or contents numpy refuses: the client's mistake
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, getattr(e, "message", None) or str(e))
        answer = await self._http(
            context, "POST", _model_path(request.model_name, request.model_version) + "/infer", body, length
        )
        if answer.status != 200:
            return await self._fail(context, answer)
        data = b"".join(answer.body)
        header = answer.header(_HEADER_LENGTH)
        return infer_response(data, int(header) if header is not None else len(data))

    # -- the repository extension ------------------------------------------------------------------

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        answer = await self._http(context, "POST", "/v2/repository/index", b"{}")
        if answer.status != 200:
            return await self._fail(context, answer)
        response = pb.RepositoryIndexResponse()
        for entry in answer.json():
            if request.ready and entry.get("state") != "READY":
                continue
            response.models.add(
                name=entry["name"], version=entry.get("version", ""), state=entry.get("state", ""), reason=entry.get("reason", "")
            )
        return response

    async def _repository(self, context: Any, name: str, action: str) -> None:
        answer = await self._http(context, "POST", f"/v2/repository/models/{name}/{action}", b"{}")
        if answer.status != 200:
            await self._fail(context, answer)

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._repository(context, request.model_name, "load")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._repository(context, request.model_name, "unload")
        return pb.RepositoryModelUnloadResponse()


def _unimplemented(name: str) -> Any:
    async def rpc(self: OipGrpcService, request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"lockgate does not implement {name} (not among the extensions in ServerMetadata)"
        )

    rpc.__name__ = name
    return rpc


for _name in _NOT_IMPLEMENTED:
    setattr(OipGrpcService, _name, _unimplemented(_name))


class _Aborted(Exception):
    def __init__(self, code: Any, message: str) -> None:
        self.code = code
        self.message = message


class _HttpContext:
    """The part of grpc.aio's ServicerContext that ``OipGrpcService`` uses, for a call that
    arrived as an HTTP/1.1 request (``GrpcOverHttp``)."""

    __slots__ = ("client", "raw_headers", "trailing")

    def __init__(self, headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None) -> None:
        self.raw_headers = headers
        self.client = client
        self.trailing: list[tuple[str, str]] = []

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers if not k.endswith(b"-bin")]

    def peer(self) -> str:
        return f"ipv4:{self.client[0]}:{self.client[1]}" if self.client else ""

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing.extend(metadata)

    async def abort(self, code: Any, details: str = "") -> None:
        raise _Aborted(code, details)


_PREFIX = "/inference.GRPCInferenceService/"
_METHODS = {m.name: getattr(pb, m.input_type.name) for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}


def _grpc_message(text: str) -> bytes:
    """gRPC's ``grpc-message`` encoding: UTF-8, percent-encoded outside printable ASCII and '%'."""
    return "".join(c if " " <= c <= "~" and c != "%" else "".join(f"%{b:02X}" for b in c.encode()) for c in text).encode("ascii")


class GrpcOverHttp:
    """Unary gRPC calls of ``service`` that reach a model replica's HTTP/1.1 listener: the gRPC
    ingress (HAProxy) speaks HTTP/2 to clients and HTTP/1.1 to the replica, which answers with a
    chunked body and the ``grpc-status`` trailer. ``handle`` gives the response body (a length-
    prefixed message, or empty) and the trailers."""

    def __init__(self, service: OipGrpcService) -> None:
        self.service = service

    @staticmethod
    def is_call(path: str) -> bool:
        return path.startswith(_PREFIX)

    async def handle(
        self, path: str, headers: list[tuple[bytes, bytes]], body: bytes, client: tuple[str, int] | None
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        context = _HttpContext(headers, client)
        name = path[len(_PREFIX) :]
        try:
            message_type = _METHODS.get(name)
            if message_type is None:
                raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, f"no method {name} in inference.GRPCInferenceService")
            if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
                raise _Aborted(grpc.StatusCode.INTERNAL, "the request is not one length-prefixed gRPC message")
            if body[0] != 0:
                raise _Aborted(grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not accepted; send them uncompressed")
            request = message_type.FromString(body[5:])
            response = await getattr(self.service, name)(request, context)
            data = response.SerializeToString()
            payload = b"\x00" + len(data).to_bytes(4, "big") + data
            trailers = [(b"grpc-status", b"0")]
        except _Aborted as e:
            payload = b""
            trailers = [(b"grpc-status", str(e.code.value[0]).encode()), (b"grpc-message", _grpc_message(e.message))]
        except DecodeError as e:
            payload = b""
            trailers = [(b"grpc-status", b"13"), (b"grpc-message", _grpc_message(f"malformed {name} message: {e}"))]
        except Exception as e:  # a bug of ours: the call fails, the replica stays
            log.exception("gRPC %s failed", name)
            payload = b""
            trailers = [(b"grpc-status", b"13"), (b"grpc-message", _grpc_message(f"internal error: {type(e).__name__}"))]
        trailers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in context.trailing]
        return payload, trailers


async def start_grpc_server(service: OipGrpcService, host: str, port: int, max_message_bytes: int) -> tuple[Any, int]:
    """Serve ``service`` on ``host:port`` (0: a free port) on the running event loop; the server and its port."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pbg.add_GRPCInferenceServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(host_port(host, port))
    await server.start()
    return server, bound
