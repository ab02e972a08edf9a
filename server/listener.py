"""The replica-owned HTTP listener: HAProxy -> this protocol -> ``ModelApp``, nothing between.

Serve's direct ingress starts a uvicorn server in each replica on a port the controller
assigns and registers that port with HAProxy; every request then crosses Serve's ASGI
wrapper (metrics, request context, concurrency semaphore). Measured in one replica here,
that path answers a no-op at about 4k req/s; an httptools protocol in the same replica at
about 120k (bench/prototypes/replica_listener.py). So a model replica replaces the server
Serve would start on that port with this one: Serve still assigns the port, registers it
with HAProxy, health-checks it (``/-/healthz`` and ``/-/routes`` are handed to Serve's own
ASGI app), drains and stops it (``should_exit``); only the model's routes skip the wrapper.

The hook point is ``ray.serve._private.replica.start_asgi_http_server``, a private name:
``install`` checks its signature and, when it has moved, leaves Serve's path in place and
says so in the log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import httptools

__all__ = ["FastServer", "install"]

log = logging.getLogger("lockgate.server")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_MAX_HEADERS_BYTES = 64 * 1024


class FastServer:
    """A uvicorn.Server stand-in as Serve's replica uses it: ``should_exit`` stops it gracefully."""

    def __init__(self, app: ASGIApp, fallback: ASGIApp, prefix: str, max_body: int) -> None:
        self.app = app
        self.fallback = fallback
        self.prefix = prefix
        self.max_body = max_body
        self.should_exit = False
        self.connections: set[_Protocol] = set()
        self.in_flight = 0

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Protocol(self), sock=sock, backlog=2048)
        try:
            while not self.should_exit:
                await asyncio.sleep(0.05)
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


class _Protocol(asyncio.Protocol):
    __slots__ = (
        "body", "body_size", "busy", "closing", "headers", "header_bytes", "parser", "pending", "server",
        "transport", "url", "client",
    )

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.busy = False
        self.closing = False
        self.pending: list[tuple] = []  # pipelined requests waiting their turn
        self.client: tuple | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True

    def close_when_idle(self) -> None:
        self.closing = True
        if not self.busy:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError as e:
            self._error(400, f"malformed HTTP request: {e}".encode())

    def _error(self, status: int, message: bytes) -> None:
        body = b'{"error": "' + message.replace(b'"', b"'") + b'"}'
        self.transport.write(self._head(status, [(b"content-type", b"application/json")], len(body), False) + body)
        self.transport.close()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.body = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > _MAX_HEADERS_BYTES:
            raise httptools.HttpParserError("headers too large")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size <= self.server.max_body:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        request = (
            self.parser.get_method().decode("ascii"),
            self.url,
            self.headers,
            b"".join(self.body) if len(self.body) != 1 else self.body[0],
            self.body_size,
            self.parser.should_keep_alive(),
        )
        if self.busy:
            self.pending.append(request)
            self.transport.pause_reading()
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._handle(request))

    # -- requests --------------------------------------------------------------------------

    async def _handle(self, request: tuple) -> None:
        while True:
            keep_alive = await self._one(*request)
            if not keep_alive or self.closing:
                self.busy = False
                self.transport.close()
                return
            if not self.pending:
                break
            request = self.pending.pop(0)
            self.transport.resume_reading()
        self.busy = False

    async def _one(self, method: str, url: bytes, headers: list, body: bytes, size: int, keep_alive: bool) -> bool:
        server = self.server
        server.in_flight += 1
        try:
            if size > server.max_body:
                body = b'{"error": "request body is larger than the limit of %d bytes"}' % server.max_body
                self._write(413, [(b"content-type", b"application/json")], body, False, method)
                return False
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._write(400, [(b"content-type", b"application/json")], b'{"error": "malformed request URL"}', False, method)
                return False
            path = (parsed.path or b"/").decode("latin-1")
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
            sent: dict[str, Any] = {}
            delivered = False

            async def receive() -> dict:
                nonlocal delivered
                if delivered:
                    return {"type": "http.disconnect"}
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    sent["status"] = message["status"]
                    sent["headers"] = message.get("headers", [])
                    sent["body"] = []
                elif message["type"] == "http.response.body":
                    sent["body"].append(message.get("body", b""))

            app = server.app if path.startswith(server.prefix) else server.fallback
            try:
                await app(scope, receive, send)
            except Exception:  # noqa: BLE001 - the app answers its own errors; this is a bug
                log.exception("request to %s failed", path)
                sent = {"status": 500, "headers": [(b"content-type", b"application/json")], "body": [b'{"error": "internal error"}']}
            if "status" not in sent:
                sent = {"status": 500, "headers": [(b"content-type", b"application/json")], "body": [b'{"error": "no response"}']}
            out = b"".join(sent["body"])
            extra = [(k, v) for k, v in sent["headers"] if k.lower() not in (b"content-length", b"connection")]
            self._write(sent["status"], extra, out, keep_alive, method)
            return keep_alive
        finally:
            server.in_flight -= 1

    def _head(self, status: int, headers: list, length: int, keep_alive: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        lines += [k + b": " + v + b"\r\n" for k, v in headers]
        lines.append(b"server: lockgate\r\ncontent-length: %d\r\n" % length)
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _write(self, status: int, headers: list, body: bytes, keep_alive: bool, method: str) -> None:
        if self.transport.is_closing():
            return
        head = self._head(status, headers, len(body), keep_alive)
        self.transport.write(head if method == "HEAD" else head + body)


def install(app: ASGIApp, prefix: str, max_body: int) -> bool:
    """Make this replica process serve ``prefix`` through FastServer. False (and a log line)
    when Serve's hook point is not what it was built against."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    original = getattr(replica, "start_asgi_http_server", None)
    if original is None or list(inspect.signature(original).parameters)[:2] != ["app", "http_options"]:
        log.warning("Serve's replica HTTP hook is not available; serving through Serve's direct ingress")
        return False

    async def start(serve_app: ASGIApp, http_options: Any, *, event_loop: asyncio.AbstractEventLoop, enable_so_reuseport: bool = False):
        host = http_options.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if enable_so_reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, http_options.port))
        except OSError as e:
            sock.close()
            raise RuntimeError(f"Failed to bind to address '{host}:{http_options.port}'.") from e
        server = FastServer(app, serve_app, prefix, max_body)
        task = event_loop.create_task(server.serve(sock))
        return task, server

    replica.start_asgi_http_server = start
    return True
