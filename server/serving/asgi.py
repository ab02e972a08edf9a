"""ASGI helpers shared by the model and control applications: types, body, answers, lifespan."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import PayloadTooLarge, RequestError

__all__ = [
    "CHALLENGE",
    "JSON_HEADERS",
    "METRICS_CONTENT_TYPE",
    "PRECHECK",
    "RETRY_AFTER",
    "SERVER_NAME",
    "Receive",
    "Scope",
    "Send",
    "WholeAnswer",
    "body_in_hand",
    "error_headers",
    "header",
    "call_whole",
    "json_body",
    "lifespan",
    "read_body",
    "respond",
    "respond_error",
    "server_version",
    "with_length",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
# An answer whole (``ModelApp.whole``): status, headers without content-length, body, and what to
# call once it is sent (the observers), if anything; None when there is nothing to send.
WholeAnswer = tuple[int, Headers, bytes, Callable[[], None] | None] | None

SERVER_NAME = "lockgate"
# The scope key under which the replica listener hands the model app the gate's early answer.
PRECHECK = "lockgate.precheck"
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
RETRY_AFTER = {"retry-after": "1"}
CHALLENGE = {"www-authenticate": 'Bearer realm="lockgate"'}


def server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lockgate")
    except PackageNotFoundError:
        return "0+unknown"


def body_in_hand(body: bytes, limit: int) -> bytes:
    """A request body already read (the replica listener's): PayloadTooLarge past ``limit``
    bytes, as ``read_body`` says it."""
    if len(body) > limit:
        raise _too_large(limit)
    return body


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; PayloadTooLarge past ``limit`` bytes, ConnectionAbortedError when
    the client leaves first."""
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
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def call_whole(app: Any, scope: Scope, body: bytes) -> tuple[int, Headers, bytes]:
    """Run ASGI ``app`` in-process on one request whose ``body`` is all there (a gRPC call, a
    request a pool replica was handed, a replayed one); its answer, whole: status, headers (a
    content-length among them), body.

    An app with a ``whole`` entry (``ModelApp``: the replica listener's) answers through it, with
    no ASGI messages; what it gives to call once the answer is sent (the observers) is called
    before this returns, as the ASGI entry calls it once its last message is sent."""
    whole = getattr(app, "whole", None)
    if whole is not None:
        answered = await whole(scope, body)
        if answered is None:  # the client left before its body was read: not with the body in hand
            return 499, [], b""
        status, out_headers, out, done = answered
        if done is not None:
            done()
        return status, with_length(out_headers, out), out
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # the body was read; an app that waits for more learns the request ended
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 500
    headers: Headers = []
    chunks: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


def with_length(headers: Headers, body: bytes) -> Headers:
    """``headers`` and the content-length of ``body``."""
    return [*headers, (b"content-length", str(len(body)).encode())]


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": with_length(headers, body)})
    await send({"type": "http.response.body", "body": body})


def error_headers(error: RequestError) -> Headers:
    return [*JSON_HEADERS, *((k.encode(), v.encode()) for k, v in error.headers.items())]


async def respond_error(send: Send, error: RequestError) -> None:
    await respond(send, error.status, error.body(), error_headers(error))


def json_body(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in ``scope``, or None."""
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return bytes(v)
    return None


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
