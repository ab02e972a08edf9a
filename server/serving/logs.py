"""Structured logs: one JSON object per line, each line of a request carrying its ids.

``lockgate serve --log-format json`` sets ``LOCKGATE_LOG_FORMAT=json`` (``LockgateSettings.log_format``,
which every replica is given and applies with ``configure`` when it starts). A request's lines name its
``request_id`` (the ``lockgate-request-id`` response header) and ``trace_id`` (from the
client's W3C ``traceparent`` header, when it sent one), through a context variable that the
model's ASGI app sets per request only while JSON logs are on. ``--access-log`` adds one line
per inference request (logger ``lockgate.access``): model, version, status, latency, principal.

Messages are written as the code logs them: lockgate never logs a secret (API keys, database
passwords, object-store credentials), and the test of this module greps a governed run's logs
for them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO, Any

__all__ = [
    "ACCESS",
    "REQUEST",
    "JsonFormatter",
    "adopt",
    "configure",
    "json_line",
    "json_stdio",
    "json_enabled",
    "trace_id",
]

# (request id, trace id or None) of the request this task serves; None outside requests.
REQUEST: ContextVar[tuple[str, str | None] | None] = ContextVar("lockgate_request", default=None)
ACCESS = logging.getLogger("lockgate.access")
_configured: str | None = None
_HEX = frozenset("0123456789abcdef")


def _utc(epoch: float) -> str:
    """A log line's time: UTC, ISO 8601, milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: time (UTC, ISO 8601, ms), level, logger, message, pid,
    the request's ids when it was logged while serving one, ``exception`` with the traceback,
    and the record's ``fields`` (a dict given as ``extra={"fields": {...}}``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        ids = REQUEST.get()
        if ids is not None:
            line["request_id"] = ids[0]
            if ids[1] is not None:
                line["trace_id"] = ids[1]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(fmt: str, *, access: bool = False, stream: IO[str] | None = None) -> None:
    """Logs of this process in ``fmt`` ('text': Python's default, warnings and errors on stderr;
    'json': one object per line on ``stream``, default stderr). Idempotent."""
    global _configured
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    if access:
        ACCESS.setLevel(logging.INFO)
        if fmt == "text" and not ACCESS.handlers:  # Python's last-resort handler shows warnings only
            text = logging.StreamHandler(stream or sys.stderr)
            text.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
            ACCESS.addHandler(text)
            ACCESS.propagate = False
    if fmt == "text" or _configured == fmt:
        return
    # The process's own stderr, not what a host may have put in sys.stderr (Serve's replicas
    # capture it into their buffered log files): Ray forwards this one to ``lockgate serve``.
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    _configured = fmt


def adopt(*names: str) -> None:
    """JSON for the handlers that other libraries gave their own loggers (Ray's ``ray`` and
    ``ray.serve`` in the ``lockgate serve`` process)."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())


def json_line(message: str, *, logger: str, level: str = "INFO", **fields: Any) -> str:
    """One JSON log line for text that did not come through Python's logging (another process's
    output), in the same shape as ``JsonFormatter``'s."""
    line: dict[str, Any] = {
        "time": _utc(time.time()),
        "level": level,
        "logger": logger,
        "message": message,
    }
    line.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(line, ensure_ascii=False, default=str)


def json_enabled() -> bool:
    return _configured == "json"


def trace_id(headers: Any) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``) among
    ASGI ``headers``; None when there is none or it is malformed (the request is served anyway)."""
    for name, value in headers:
        if name == b"traceparent" or name.lower() == b"traceparent":
            parts = value.decode("latin-1").strip().lower().split("-")
            if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
                return None
            if not (set(parts[0] + parts[1] + parts[2] + parts[3]) <= _HEX) or parts[1] == "0" * 32:
                return None
            return str(parts[1])
    return None


def json_stdio() -> Callable[[], None]:
    """Make every line this process and the processes it starts write to stdout and stderr one
    JSON object: both file descriptors become pipes read by a thread, which passes JSON lines on
    to the real streams and wraps any other line (what a library or a child process prints
    directly) as a ``json_line`` of logger ``stdout``/``stderr``. Returns the function that
    restores the streams and drains what is left."""
    sys.stdout.flush()
    sys.stderr.flush()
    threads = []
    restore = []
    for fd, name in ((1, "stdout"), (2, "stderr")):
        real = os.dup(fd)
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        thread = threading.Thread(target=_pass_json, args=(read, real, name), name=f"lockgate-json-{name}", daemon=True)
        thread.start()
        threads.append(thread)
        restore.append((fd, real))

    def stop() -> None:
        if not restore:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, real in restore:
            os.dup2(real, fd)  # the pipe's last writer here is gone; children may still hold it
        restore.clear()
        for thread in threads:
            thread.join(2.0)

    atexit.register(stop)  # an exit on an error still shows its message
    return stop


def _pass_json(read: int, real: int, name: str) -> None:
    """Drain the pipe for as long as anything writes to it: a reader that stopped would, once the
    pipe is full, block every process writing a log line. A stream that can no longer be written
    (a reader of our output gone) loses the lines, not the server."""
    writable = True
    with os.fdopen(read, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if writable:
                writable = _write(real, b"".join(_as_json(line, name) for line in lines if line.strip()))
        if pending.strip() and writable:
            _write(real, _as_json(pending, name))
    os.close(real)


def _write(fd: int, data: bytes) -> bool:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        return False
    return True


def _as_json(raw: bytes, name: str) -> bytes:
    text = raw.decode("utf-8", "replace").rstrip("\r")
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text.encode() + b"\n"
        except ValueError:
            pass
    return json_line(text, logger=name, level="WARNING" if name == "stderr" else "INFO").encode() + b"\n"
