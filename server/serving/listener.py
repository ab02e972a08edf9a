"""The replica-owned HTTP listener: HAProxy -> this protocol -> ``ModelApp``, nothing between.

Serve's direct ingress starts a uvicorn server in each replica on a port the controller
assigns and registers that port with HAProxy; every request then crosses Serve's ASGI
wrapper (metrics, request context, concurrency semaphore). Measured in one replica here,
that path answers a no-op at about 4k req/s; an httptools protocol in the same replica at
about 120k (bench/prototypes/replica_listener.py). So a model replica replaces the server
Serve would start on that port with this one: Serve still assigns the port, registers it
with HAProxy, health-checks it (``/-/healthz`` and ``/-/routes`` are handed to Serve's own
ASGI app), drains and stops it (``should_exit``); only the model's routes skip the wrapper.

The hook point is a private Serve name, so it is installed from
``lockgate.server.hosting.serve_compat.install_listener``, which checks it first; this module
imports nothing of Ray.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import httptools

from .asgi import PRECHECK, WholeAnswer
from .limits import DEFAULT_LIMITS, LimitOptions

__all__ = ["FastServer"]

log = logging.getLogger("lockgate.server")

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
Whole = Callable[[Message, bytes], Awaitable[WholeAnswer]]
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_JSON = [(b"content-type", b"application/json")]
_SWEEP_S = 0.5  # how often connection deadlines are checked
_HEAD_SLICE = 4096  # while a request's head arrives, it is fed to the parser this much at a time
_LINGER_S = 2.0  # after an error answer, input is read and dropped this long, so the answer is not reset away


class _TooLarge(Exception):
    """Raised from a parser callback: the request is over a limit; answer ``status`` and close."""

    def __init__(self, status: int, message: bytes) -> None:
        self.status = status
        self.message = message


class FastServer:
    """A uvicorn.Server stand-in as Serve's replica uses it: ``should_exit`` stops it gracefully."""

    def __init__(
        self,
        app: ASGIApp,
        fallback: ASGIApp,
        prefix: str,
        limits: LimitOptions = DEFAULT_LIMITS,
        precheck: Callable[[Message], Any] | None = None,
        grpc: Any = None,
        announce: Callable[[int], None] | None = None,
        whole: Whole | None = None,
    ) -> None:
        self.app = app
        # ``app``'s entry without ASGI messages (``ModelApp.whole``): the scope and the body in,
        # the answer out whole, and what to call once it is sent. None: ``app`` as ASGI.
        self.whole = whole
        # Unary gRPC calls that the gRPC ingress forwards as HTTP/1.1 (``GrpcOverHttp``), and who
        # is told this listener's port once it listens (the gRPC ingress routes to it).
        self.grpc = grpc
        self.announce = announce
        self.fallback = fallback
        self.prefix = prefix
        self.limits = limits
        # Asked when a request for ``app`` has its headers in (``ModelApp.precheck``): None to go
        # on, or an answer with a ``refusal``; a refused request's body is dropped, not read.
        self.precheck = precheck
        self.max_body = limits.max_body_bytes
        # A request head (URL and headers) longer than this is cut as it arrives (431).
        self.max_head = limits.max_header_bytes + limits.max_url_bytes + _HEAD_SLICE
        self.should_exit = False
        self.connections: set[_Protocol] = set()
        self.in_flight = 0
        self.refused = 0  # connections over max_connections
        self.timed_out = 0  # requests not received within request_timeout_s

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Protocol(self), sock=sock, backlog=2048)
        if self.announce is not None:
            self.announce(sock.getsockname()[1])
        swept = time.monotonic()
        try:
            while not self.should_exit:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if now - swept >= _SWEEP_S:
                    swept = now
                    self.sweep(now)
        finally:
            server.close()
            for conn in list(self.connections):
                conn.close_when_idle()
            for _ in range(200):  # finish in-flight requests, up to 10 s
                if self.in_flight == 0:
                    break
                await asyncio.sleep(0.05)
            for conn in list(self.connections):
                conn.transport.close()

    def sweep(self, now: float) -> None:
        """Close connections past their deadline: 408 for a request still arriving, nothing for an idle one.
        A connection whose request is being answered has no deadline here."""
        for conn in list(self.connections):
            if conn.busy or not conn.deadline or now < conn.deadline:
                continue
            if conn.reading:
                self.timed_out += 1
                conn._error(408, b"the request did not arrive within %g s" % self.limits.request_timeout_s)
            else:
                conn.transport.close()


# One parsed request: method, URL, headers, body, its size, keep-alive, the precheck's answer.
_Request = tuple[str, bytes, list[tuple[bytes, bytes]], bytes, int, bool, Any]


class _Discard:
    """The parser of a connection that has been answered an error: input is dropped."""

    def feed_data(self, data: bytes) -> None:
        pass


class _Protocol(asyncio.Protocol):
    __slots__ = (
        "body",
        "body_size",
        "busy",
        "checked",
        "closing",
        "deadline",
        "dropping",
        "ended",
        "head_bytes",
        "headers",
        "header_bytes",
        "in_head",
        "parser",
        "pending",
        "reading",
        "server",
        "transport",
        "url",
        "url_parts",
        "client",
    )

    def __init__(self, server: FastServer) -> None:
        self.server = server
        # httptools' parser, then a _Discard once an error was answered
        self.parser: Any = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.url = b""
        self.url_parts: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.in_head = True  # between a request's first byte and the end of its headers
        self.head_bytes = 0  # bytes fed to the parser since the head began
        self.checked: Any = None  # the precheck's answer for the request being read
        self.dropping = False  # the request was refused at its headers: its body is dropped
        self.body: list[bytes] = []
        self.body_size = 0
        self.busy = False
        self.closing = False
        self.pending: list[_Request] = []  # pipelined requests waiting their turn
        self.client: tuple[str, int] | None = None
        self.reading = False  # between a request's first byte and its last
        self.ended = False  # an error was answered: nothing more is written
        self.deadline = 0.0  # time.monotonic() by which the next event must happen

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            server.refused += 1
            body = b'{"error": "the replica holds its limit of %d connections; retry shortly"}' % server.limits.max_connections
            transport.write(self._head(503, [*_JSON, (b"retry-after", b"1")], len(body), False) + body)
            self.parser, self.ended = _Discard(), True  # whatever it sent is not served
            transport.close()
            return
        server.connections.add(self)
        self.deadline = time.monotonic() + server.limits.idle_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True

    def close_when_idle(self) -> None:
        self.closing = True
        if not self.busy:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            return
        try:
            # While a head arrives it is fed a slice at a time and counted, so an endless URL or
            # header is cut at the limit: the parser never gathers more of it than that.
            limit = self.server.max_head
            while self.in_head and len(data) > _HEAD_SLICE and not (self.dropping or self.ended):
                piece, data = data[:_HEAD_SLICE], data[_HEAD_SLICE:]
                self.head_bytes += len(piece)
                if self.head_bytes > limit:
                    raise _TooLarge(431, b"the request's head (URL and headers) is larger than the limit of %d bytes" % limit)
                self.parser.feed_data(piece)
            if self.dropping or self.ended:
                return
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > limit:
                    raise _TooLarge(431, b"the request's head (URL and headers) is larger than the limit of %d bytes" % limit)
            self.parser.feed_data(data)
        except _TooLarge as limit_hit:
            self._error(limit_hit.status, limit_hit.message)
        except httptools.HttpParserUpgrade:
            self._error(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            over = e.__context__  # httptools wraps what a callback raised
            if isinstance(over, _TooLarge):
                self._error(over.status, over.message)
            else:
                self._error(400, f"malformed HTTP request: {e}".encode())

    def _error(self, status: int, message: bytes) -> None:
        """Answer ``status`` and end the connection. What the client still sends (the rest of a
        refused body) is read and dropped for a moment: closing with unread input would reset the
        connection, and the client could lose the answer."""
        if self.ended:  # answered already: whatever else it sent is dropped
            return
        body = b'{"error": "' + message.replace(b'"', b"'") + b'"}'
        transport = self.transport
        transport.write(self._head(status, _JSON, len(body), False) + body)
        self.reading = False
        self.closing = self.ended = True
        self.pending = []
        self.parser = _Discard()
        self.deadline = time.monotonic() + _LINGER_S
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.reading = True
        self.deadline = time.monotonic() + self.server.limits.request_timeout_s
        self.url = b""
        self.url_parts = []
        self.headers = []
        self.header_bytes = 0
        self.body = []
        self.body_size = 0
        self.checked = None

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)  # gathered once at the end of the head: no quadratic concatenation
        if sum(map(len, self.url_parts)) > self.server.limits.max_url_bytes:
            raise _TooLarge(414, b"the request URL is longer than the limit of %d bytes" % self.server.limits.max_url_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        limit = self.server.limits.max_header_bytes
        if self.header_bytes > limit:
            raise _TooLarge(400, b"the request's headers are larger than the limit of %d bytes" % limit)
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head, self.head_bytes = False, 0
        self.url = b"".join(self.url_parts)
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.server.max_body:
                # Refused before the body is read, so an oversized upload costs nothing.
                raise _TooLarge(413, b"request body is larger than the limit of %d bytes" % self.server.max_body)
        server = self.server
        if server.precheck is not None:
            path = self.url.split(b"?", 1)[0].decode("latin-1")
            if path.startswith(server.prefix):
                method = self.parser.get_method().decode("ascii")
                self.checked = server.precheck({"method": method, "path": path, "headers": self.headers, "client": self.client})
                if self.checked is not None and self.checked.refusal is not None:
                    self._refused_at_head(method)
                    return
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _refused_at_head(self, method: str) -> None:
        """The gate refused the request from its headers: answer it now (through the app, which
        records the refusal) and drop its body unread; the connection ends after the answer."""
        self.dropping = True
        self.reading = False
        self.deadline = 0.0
        request = (method, self.url, self.headers, b"", 0, False, self.checked)
        if self.busy:
            self.pending.append(request)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._handle(request))

    def on_body(self, chunk: bytes) -> None:
        if self.dropping:
            return
        self.body_size += len(chunk)
        if self.body_size > self.server.max_body:  # a chunked body that grew past the limit
            raise _TooLarge(413, b"request body is larger than the limit of %d bytes" % self.server.max_body)
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.dropping:
            return
        self.in_head = True
        self.reading = False
        self.deadline = 0.0
        request = (
            self.parser.get_method().decode("ascii"),
            self.url,
            self.headers,
            b"".join(self.body) if len(self.body) != 1 else self.body[0],
            self.body_size,
            self.parser.should_keep_alive(),
            self.checked,
        )
        if self.busy:
            self.pending.append(request)
            self.transport.pause_reading()
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._handle(request))

    # -- requests --------------------------------------------------------------------------

    async def _handle(self, request: _Request) -> None:
        while True:
            keep_alive = await self._one(*request)
            if not keep_alive or self.closing:
                self.busy = False
                if self.dropping:  # its body is still coming: read and drop it a moment, or the answer is reset away
                    self.ended = True
                    self.parser = _Discard()
                    self.deadline = time.monotonic() + _LINGER_S
                    if self.transport.can_write_eof():
                        self.transport.write_eof()
                        return
                self.transport.close()
                return
            if not self.pending:
                break
            request = self.pending.pop(0)
            self.transport.resume_reading()
        self.busy = False
        if not self.reading:
            self.deadline = time.monotonic() + self.server.limits.idle_timeout_s

    async def _one(
        self, method: str, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes, size: int, keep_alive: bool, checked: Any
    ) -> bool:
        server = self.server
        server.in_flight += 1
        try:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._write(400, [(b"content-type", b"application/json")], b'{"error": "malformed request URL"}', False, method)
                return False
            path = (parsed.path or b"/").decode("latin-1")
            grpc = server.grpc
            if grpc is not None and method == "POST" and grpc.is_call(path):
                payload, trailers = await grpc.handle(path, headers, body, self.client)
                self._write_grpc(payload, trailers, keep_alive)
                return keep_alive
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": parsed.path or b"/",
                "root_path": "",
                "query_string": parsed.query or b"",
                "headers": headers,
                "client": self.client,
                "server": None,
            }
            if checked is not None:
                scope[PRECHECK] = checked
            ours = path.startswith(server.prefix)
            if ours and server.whole is not None:
                return await self._whole(server.whole, scope, body, keep_alive, method, path)
            sent: dict[str, Any] = {}
            delivered = False

            async def receive() -> Message:
                nonlocal delivered
                if delivered:
                    return {"type": "http.disconnect"}
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    sent["status"] = message["status"]
                    sent["headers"] = message.get("headers", [])
                    sent["body"] = []
                elif message["type"] == "http.response.body":
                    sent["body"].append(message.get("body", b""))

            app = server.app if ours else server.fallback
            try:
                await app(scope, receive, send)
            except Exception:
                log.exception("request to %s failed", path)
                sent = {
                    "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                    "body": [b'{"error": "internal error"}'],
                }
            if "status" not in sent:
                sent = {"status": 500, "headers": [(b"content-type", b"application/json")], "body": [b'{"error": "no response"}']}
            out = b"".join(sent["body"])
            extra = [(k, v) for k, v in sent["headers"] if k.lower() not in (b"content-length", b"connection")]
            self._write(sent["status"], extra, out, keep_alive, method)
            return keep_alive
        finally:
            server.in_flight -= 1

    async def _whole(self, whole: Whole, scope: Message, body: bytes, keep_alive: bool, method: str, path: str) -> bool:
        """A request of the app's own routes, through its ``whole`` entry: no ASGI messages."""
        try:
            answered = await whole(scope, body)
        except Exception:
            log.exception("request to %s failed", path)
            self._write(500, _JSON, b'{"error": "internal error"}', keep_alive, method)
            return keep_alive
        if answered is None:  # nothing to answer (a client gone before its body was read)
            return False
        status, headers, out, done = answered
        self._write(status, headers, out, keep_alive, method)
        if done is not None:
            try:
                done()
            except Exception:  # observers fail open; the answer is sent
                log.exception("after the answer to %s", path)
        return keep_alive

    def _head(self, status: int, headers: list[tuple[bytes, bytes]], length: int, keep_alive: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        lines += [k + b": " + v + b"\r\n" for k, v in headers]
        lines.append(b"server: lockgate\r\ncontent-length: %d\r\n" % length)
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _write_grpc(self, payload: bytes, trailers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        """A gRPC answer over HTTP/1.1: 200, the message as one chunk, then the trailers."""
        if self.ended or self.transport.is_closing():
            return
        parts = [b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n"]
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if payload:
            parts += [b"%x\r\n" % len(payload), payload, b"\r\n"]
        parts.append(b"0\r\n")
        parts += [k + b": " + v + b"\r\n" for k, v in trailers]
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))

    def _write(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool, method: str) -> None:
        if self.ended or self.transport.is_closing():
            return
        head = self._head(status, headers, len(body), keep_alive)
        self.transport.write(head if method == "HEAD" else head + body)
