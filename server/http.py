"""The HTTP surface: lean ASGI applications for a model and for the control routes.

Each model's Serve replica hands its requests straight to ``ModelApp`` (Serve's
direct ingress, behind HAProxy), so nothing but this module's routing sits between
the socket and the model. ``ControlApp`` answers ``/v2`` itself: health, server
metadata, and OIP 404s for models that do not exist.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._errors import (
    BadRequest,
    ConfigError,
    MethodNotAllowed,
    ModelFailed,
    NotFound,
    PayloadTooLarge,
    RequestError,
    Unavailable,
)
from .batching import Batcher
from .model import ModelVersion, load_version
from .protocol import HEADER_LENGTH, encode_infer_response, parse_infer_request
from .repository import ModelEntry

__all__ = ["ControlApp", "ModelApp", "ModelService", "SERVER_NAME", "server_version"]

log = logging.getLogger("lockgate.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SERVER_NAME = "lockgate"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_JSON = [(b"content-type", b"application/json")]
_VERSION_ROUTE = re.compile(r"^/versions/([^/]+)(/ready|/infer)?/?$")


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lockgate")
    except PackageNotFoundError:
        return "0+unknown"


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: RequestError) -> None:
    headers = [*_JSON, *((k.encode(), v.encode()) for k, v in error.headers.items())]
    await respond(send, error.status, error.body(), headers)


def _json_body(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


class _Served:
    __slots__ = ("batcher", "max_batch_size", "model")

    def __init__(self, model: ModelVersion, max_batch_size: int, batcher: Batcher) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batcher = batcher


class ModelService:
    """Every version of one model that this replica serves, each with its batcher."""

    def __init__(self, entry: ModelEntry, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.name = entry.name
        self.config = entry.config
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"onnxruntime-{entry.name}")
        self.served: dict[int, _Served] = {}
        for number, path in entry.files.items():
            model = load_version(entry.name, number, path, entry.config.onnxruntime)
            size = self._max_batch_size(model)
            batcher = Batcher(model.run, [s.name for s in model.outputs], size, self.config.dynamic_batching, self.executor)
            self.served[number] = _Served(model, size, batcher)
        self.default_version = max(self.served)

    def _max_batch_size(self, model: ModelVersion) -> int:
        configured = self.config.max_batch_size
        if configured is None:
            return 32 if model.batchable() else 0
        if configured > 0 and not model.batchable():
            raise ConfigError(
                f"max_batch_size {configured} needs a dynamic first dimension on every input and output of "
                f"version {model.version}; set max_batch_size: 0",
                source=f"model {self.name}",
            )
        return configured

    def version(self, text: str | None) -> _Served:
        if text is None:
            return self.served[self.default_version]
        if not text.isdigit() or int(text) not in self.served:
            served = ", ".join(str(v) for v in sorted(self.served))
            raise NotFound(f"model '{self.name}' has no version '{text}' being served; served: {served}")
        return self.served[int(text)]

    def metadata(self, version: str | None) -> dict[str, object]:
        served = self.version(version)
        meta = served.model.metadata()
        meta["versions"] = [str(v) for v in sorted(self.served)] if version is None else [version]
        meta["max_batch_size"] = served.max_batch_size
        return meta

    async def infer(self, version: str | None, body: bytes, header_length: bytes | None) -> tuple[bytes, list]:
        served = self.version(version)
        length = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length[:20]!r}") from None
        request = parse_infer_request(body, length, served.model, served.max_batch_size)
        timeout = None
        if request.parameters and "timeout" in request.parameters:
            timeout = request.parameters["timeout"]
            if type(timeout) is not int or timeout < 0:
                raise BadRequest("parameter 'timeout' must be a non-negative integer of microseconds")
        try:
            results = await served.batcher.submit(request.inputs, request.rows, timeout)
        except RequestError:
            raise
        except Exception as e:
            kind = type(e).__name__
            if kind in ("InvalidArgument", "InvalidGraph") or "INVALID_ARGUMENT" in str(e):
                raise BadRequest(f"model '{self.name}' rejected the input: {e}") from None
            log.exception("model %s version %s failed", self.name, served.model.version)
            raise ModelFailed(f"model '{self.name}' version {served.model.version} failed: {kind}: {e}") from None
        return encode_infer_response(request, self.name, served.model.version, results)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class ModelApp:
    """ASGI app for one model, mounted at ``/v2/models/<name>``."""

    def __init__(self, service: ModelService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except RequestError as e:
            await respond_error(send, e)
        except ConnectionAbortedError:
            return
        except Exception as e:  # a bug of ours: say so, keep the replica up
            log.exception("unhandled error on %s", scope.get("path"))
            await respond_error(send, RequestError(f"internal error: {type(e).__name__}"))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        rest = path[len(root) :] if root and path.startswith(root) else path
        prefix = f"/v2/models/{self.service.name}"
        if rest.startswith(prefix):  # mounted without a root_path
            rest = rest[len(prefix) :]
        if rest and not rest.startswith("/"):
            raise NotFound(f"unknown model '{self.service.name}{rest.split('/')[0]}'")
        method = scope["method"]
        version: str | None = None
        action = rest.rstrip("/")
        match = _VERSION_ROUTE.match(rest)
        if match:
            version, action = match.group(1), (match.group(2) or "")
        if action == "/infer":
            if method != "POST":
                raise MethodNotAllowed(f"{method} is not allowed on /infer; use POST")
            body = await read_body(receive, self.service.max_body_bytes)
            out, headers = await self.service.infer(version, body, _header(scope, HEADER_LENGTH.encode()))
            await respond(send, 200, out, headers)
        elif action == "":
            self._get_only(method)
            await respond(send, 200, _json_body(self.service.metadata(version)), _JSON)
        elif action == "/ready":
            self._get_only(method)
            self.service.version(version)
            await respond(send, 200, _json_body({"name": self.service.name, "ready": True}), _JSON)
        else:
            raise NotFound(f"no route {path}; model routes are '', /ready, /infer, optionally after /versions/<v>")

    @staticmethod
    def _get_only(method: str) -> None:
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed here; use GET")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class ControlApp:
    """ASGI app for ``/v2``: health, server metadata, and answers for unknown models.

    ``readiness`` returns the names of models that are not ready yet; it is called
    at most once a second.
    """

    def __init__(self, models: list[str], readiness: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        self.models = sorted(models)
        self.readiness = readiness
        self.version = server_version()

    async def _not_ready(self) -> list[str]:
        return await self.readiness() if self.readiness is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body = await self._route(scope)
        except RequestError as e:
            await respond_error(send, e)
            return
        except Exception as e:
            log.exception("unhandled error on %s", scope.get("path"))
            await respond_error(send, RequestError(f"internal error: {type(e).__name__}"))
            return
        await respond(send, status, _json_body(body), _JSON)

    async def _route(self, scope: Scope) -> tuple[int, object]:
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        if path in ("/v2", "/v2/health/live", "/v2/health/ready") and method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET")
        if path == "/v2":
            return 200, {"name": SERVER_NAME, "version": self.version, "extensions": ["binary_tensor_data"]}
        if path == "/v2/health/live":
            return 200, {"live": True}
        if path == "/v2/health/ready":
            waiting = await self._not_ready()
            if waiting:
                raise Unavailable(f"not ready: waiting for model(s) {', '.join(waiting)}")
            return 200, {"ready": True}
        if path.startswith("/v2/models/"):
            name = path[len("/v2/models/") :].split("/")[0]
            if name in self.models:
                raise Unavailable(f"model '{name}' is not ready yet")
            known = ", ".join(self.models) or "none"
            raise NotFound(f"unknown model '{name}'; served models: {known}")
        raise NotFound(f"no route {scope['path']}")
