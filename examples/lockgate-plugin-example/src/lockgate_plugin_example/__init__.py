"""Example lockgate plugin: a JSON-lines log of inference requests, batches and audit events,
and a gatekeeper that denies calls to the models it is told to close.

The observers fail open (a failure here is logged and counted, the request goes on); the
gatekeeper fails closed (an exception in it is a deny).

Options (section ``request-log`` of the server configuration, or environment variables):
``path`` / LOCKGATE_EXAMPLE_LOG, where to write; ``deny_models`` / LOCKGATE_EXAMPLE_DENY_MODELS
(comma-separated), models nobody may call.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict

from lockgate.plugins import AuditEvent, Decision, InferenceEvent, Principal, Settings, hookimpl

LOCKGATE_PLUGIN_API = "1.1"

_lock = threading.Lock()
_path: str | None = None
_denied: frozenset[str] = frozenset()


def _write(record: dict) -> None:
    if _path is None:
        return
    line = json.dumps(record, default=str, sort_keys=True)
    with _lock, open(_path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@hookimpl
def lockgate_configure(settings: Settings) -> None:
    global _path
    global _denied
    options = settings.options.get("request-log", {})
    _path = options.get("path") or os.environ.get("LOCKGATE_EXAMPLE_LOG")
    names = options.get("deny_models") or os.environ.get("LOCKGATE_EXAMPLE_DENY_MODELS", "")
    _denied = frozenset(n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip())


@hookimpl
def lockgate_authorize(principal: Principal, action: str, model: str | None, version: str | None) -> Decision | None:
    if model in _denied and action in ("infer", "explain"):
        return Decision.deny(f"model '{model}' is closed by the request-log plugin's deny_models")
    return None  # abstain: the other gatekeepers decide


@hookimpl
def lockgate_observe_inference(event: InferenceEvent) -> None:
    record = asdict(event)
    record.pop("request_body", None)
    record.pop("response_body", None)
    _write({"record": "inference", "at": time.time(), "pid": os.getpid(), **record})


@hookimpl
def lockgate_observe_batch(model: str, version: int, rows: int, requests: int, queue_s: float, compute_s: float) -> None:
    _write({"record": "batch", "model": model, "version": version, "rows": rows, "requests": requests})


@hookimpl
def lockgate_audit_event(event: AuditEvent) -> None:
    _write({"record": "audit", "at": time.time(), **asdict(event)})
