"""Example lockgate plugin: a JSON-lines log of inference requests, batches and audit events.

Observers only, so a failure here never fails a request: lockgate logs and counts it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict

from lockgate.plugins import AuditEvent, InferenceEvent, Settings, hookimpl

LOCKGATE_PLUGIN_API = "1.0"

_lock = threading.Lock()
_path: str | None = None


def _write(record: dict) -> None:
    if _path is None:
        return
    line = json.dumps(record, default=str, sort_keys=True)
    with _lock, open(_path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@hookimpl
def lockgate_configure(settings: Settings) -> None:
    global _path
    _path = settings.options.get("request-log", {}).get("path") or os.environ.get("LOCKGATE_EXAMPLE_LOG")


@hookimpl
def lockgate_observe_inference(event: InferenceEvent) -> None:
    _write({"record": "inference", "at": time.time(), "pid": os.getpid(), **asdict(event)})


@hookimpl
def lockgate_observe_batch(model: str, version: int, rows: int, requests: int, queue_s: float, compute_s: float) -> None:
    _write({"record": "batch", "model": model, "version": version, "rows": rows, "requests": requests})


@hookimpl
def lockgate_audit_event(event: AuditEvent) -> None:
    _write({"record": "audit", "at": time.time(), **asdict(event)})
