"""Re-running a recorded inference request: ``lockgate audit replay`` and ``lockgate audit explain``.

The audit record of a request names the model, the version and the sha256 of the artifact that
answered, and the digests of the request and response bodies; with ``audit.payloads`` it also
keeps both bodies, sealed. A replay loads that version through the registry (its artifact
hash-checked), answers the stored request (or a file the client kept) through the same request
path as the server (``ModelService`` and ``ModelApp`` in this process, no plugins: the replay
is neither gated nor recorded as an inference), and compares the answer's sha256 with the
recorded one. Whatever keeps the answer from being the recorded one is named: an artifact that
changed, an input that is not the recorded request, another version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lockgate.plugins import PluginManager

from ..errors import LockgateError
from ..serving.asgi import call_whole
from ..serving.config import ModelConfig
from ..serving.model_app import ModelApp
from ..serving.service import ModelService

__all__ = ["Replay", "replay"]


@dataclass
class Replay:
    """What a replay found. ``identical``: the replayed answer's sha256 is the recorded one."""

    request_id: str
    record: dict[str, Any]
    model: str
    version: int  # the version replayed
    recorded_version: int
    input_from: str  # "the audit record" or the file given
    input_sha256: str
    status: int = 0
    recorded_output_sha256: str | None = None
    output_sha256: str | None = None
    identical: bool = False
    problems: list[str] = field(default_factory=list)  # each reason the answer may differ, named
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # by output, when both answers are JSON
    explanation: dict[str, Any] | None = None  # the replayed request's attributions (explain)
    output_body: bytes | None = None  # the replayed answer

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("record", "output_body")}


def replay(
    manager: PluginManager,
    request_id: str,
    *,
    input_body: bytes | None = None,
    input_from: str | None = None,
    version: int | None = None,
    explain: bool = False,
    actor: str = "lockgate",
) -> Replay:
    """Replay the request the audit log recorded as ``request_id``; LockgateError when it cannot
    be replayed at all (no record, no body kept and none given)."""
    record = manager.provide("lockgate_audit_record", request_id=request_id)
    if record is None:
        raise LockgateError(f"no audit record of an inference request '{request_id}'")
    record = dict(record)
    detail = record.get("detail") or {}
    if record.get("kind") != "infer":
        raise LockgateError(f"request '{request_id}' was a {record.get('kind')} request; only inference requests replay")
    if record.get("model") is None or record.get("version") is None:
        raise LockgateError(f"the record of request '{request_id}' names no served version (status {detail.get('status')})")
    if input_body is None:
        input_body = manager.provide("lockgate_audit_payload", record=record, which="input")
        input_from = "the audit record"
        if input_body is None:
            raise LockgateError(
                f"the record of request '{request_id}' keeps no request body (audit.payloads was off): "
                "give the request the client kept with --input FILE"
            )
    recorded = int(record["version"])
    found = Replay(
        request_id=str(record.get("request_id") or request_id),
        record=record,
        model=str(record["model"]),
        version=recorded if version is None else version,
        recorded_version=recorded,
        input_from=input_from or "the file given",
        input_sha256=hashlib.sha256(input_body).hexdigest(),
        recorded_output_sha256=detail.get("output_sha256"),
    )
    if detail.get("input_sha256") and found.input_sha256 != detail["input_sha256"]:
        found.problems.append(
            f"the input is not the recorded request: sha256 {found.input_sha256[:16]}..., recorded {detail['input_sha256'][:16]}..."
        )
    if found.version != recorded:
        found.problems.append(f"another version: replayed version {found.version}, the record names version {recorded}")
    registry = manager.registry()
    registered = registry.resolve(found.model, str(found.version))
    if found.version == recorded and detail.get("sha256") and registered.sha256 != detail["sha256"]:
        found.problems.append(
            f"version {recorded} of '{found.model}' is registered with artifact sha256 {registered.sha256[:16]}..., "
            f"not the {detail['sha256'][:16]}... that answered"
        )
    try:
        registry.read_verified(registered)
    except Exception as e:  # noqa: BLE001 - a changed or missing artifact: named, not replayed
        found.problems.append(f"the artifact of version {found.version} cannot be used: {e}")
        return found
    asyncio.run(_answer(found, registry, input_body, explain))
    recorded_output = _recorded_output(manager, record)
    if found.status != detail.get("status"):
        found.problems.append(f"the replay answered {found.status}, the recorded request {detail.get('status')}")
    found.identical = found.output_sha256 is not None and found.output_sha256 == found.recorded_output_sha256
    if recorded_output is not None and found.output_body is not None:
        found.max_abs_diff = _differences(recorded_output, found.output_body)
    if not found.identical and not found.problems:
        found.problems.append("the answer differs although model, version, artifact and input are the recorded ones")
    manager.audit(
        "audit_replay",
        actor,
        model=found.model,
        version=found.version,
        detail={"request_id": found.request_id, "identical": found.identical, "problems": found.problems},
    )
    return found


async def _answer(found: Replay, registry: Any, body: bytes, explain: bool) -> None:
    config = ModelConfig.model_validate(registry.model_config(found.model))
    service = ModelService(found.model, config, registry)  # no plugins: not gated, not recorded
    try:
        app = ModelApp(service)
        headers = [(b"content-type", b"application/json")]
        length = _json_header_length(body)
        if length is not None:  # a binary tensor request: the JSON header's length
            headers = [(b"content-type", b"application/octet-stream"), (b"inference-header-content-length", str(length).encode())]
        path = f"/v2/models/{found.model}/versions/{found.version}/infer"
        found.status, _, answer = await call_whole(app, _scope(path, headers), body)
        found.output_body = answer
        found.output_sha256 = hashlib.sha256(answer).hexdigest()
        if explain and length is None:
            path = path.replace("/infer", "/explain")
            status, _, explained = await call_whole(app, _scope(path, headers), body)
            found.explanation = json.loads(explained) if status == 200 else {"status": status, "error": _error(explained)}
    finally:
        service.close()


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
    }


def _json_header_length(body: bytes) -> int | None:
    """None for a JSON request; for a binary tensor request (a JSON header, then raw tensor
    bytes), the header's length in bytes, which the stored body no longer says."""
    text = body.decode("utf-8", "surrogateescape")
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    rest = text[end:]
    if not rest.strip():
        return None
    return len(text[:end].encode("utf-8", "surrogateescape"))


def _recorded_output(manager: PluginManager, record: dict[str, Any]) -> bytes | None:
    try:
        kept = manager.provide("lockgate_audit_payload", record=record, which="output")
    except Exception:  # noqa: BLE001 - the digest comparison stands without it
        return None
    return kept if isinstance(kept, bytes) else None


def _differences(recorded: bytes, replayed: bytes) -> dict[str, float]:
    """The largest absolute difference of each output between two JSON answers."""
    try:
        a = {o["name"]: o for o in json.loads(recorded)["outputs"]}
        b = {o["name"]: o for o in json.loads(replayed)["outputs"]}
    except (ValueError, KeyError, TypeError):
        return {}
    out = {}
    for name in a.keys() & b.keys():
        try:
            x = np.asarray(a[name]["data"], dtype=np.float64).ravel()
            y = np.asarray(b[name]["data"], dtype=np.float64).ravel()
        except (ValueError, TypeError):
            continue
        if x.shape == y.shape:
            out[name] = float(np.max(np.abs(x - y))) if x.size else 0.0
    return out


def _error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")
