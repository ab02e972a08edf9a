"""The request gate: who sends a request and whether they may, asked of the gatekeeper hooks
once per request before its body is read."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from lockgate.plugins import Decision, PluginManager, Principal, RequestInfo

from ..errors import Forbidden, RequestError, Unauthorized, Unavailable
from .asgi import CHALLENGE, RETRY_AFTER, Scope

__all__ = ["Allows", "Headers", "Identified", "gate", "gate_now", "new_request_id"]


class Identified(Protocol):
    """Something that learns the caller's name as soon as authentication says it."""

    principal: str


class Headers(Mapping[str, str]):
    """A request's headers as gatekeepers see them: a read-only mapping with lower-case names,
    decoded when asked for (a gatekeeper reads one or two of them). A header sent more than
    once reads as its values joined with ', ' (RFC 9110), so a second Authorization header
    makes the credentials malformed instead of choosing one of them."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def get(self, name: str, default: Any = None) -> Any:
        key = name.lower().encode("latin-1")
        found: bytes | None = None
        for k, v in self._raw:
            if k == key or k.lower() == key:
                found = v if found is None else found + b", " + v
        return default if found is None else found.decode("latin-1")

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.decode("latin-1").lower() for k, _ in self._raw))

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._raw})


class Allows:
    """Allows that the request gatekeepers said may be reused (``lockgate_reuse_allow``), held by
    one model's app until the time they gave, by the request's credentials (its Authorization
    header as sent), action and version. A request that finds its allow here asks no
    gatekeeper. The governance plugin gives its key table's next reload as the time, so a
    revoked key stops working as soon as it did without this (``key_refresh_s``), and an
    expiring key at its expiry. Refusals are never held: each is decided and counted."""

    LIMIT = 4096  # credentials held at most; past it the oldest half goes

    __slots__ = ("_held", "manager", "on")

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager
        self.on = manager.allows_reusable() and manager.request_gates_are_sync()
        self._held: dict[tuple[str | None, str, str | None], tuple[float, Principal]] = {}

    def get(self, key: tuple[str | None, str, str | None]) -> Principal | None:
        found = self._held.get(key)
        if found is None:
            return None
        if time.monotonic() < found[0]:
            return found[1]
        del self._held[key]
        return None

    def put(self, key: tuple[str | None, str, str | None], who: Principal) -> Decision | None:
        """Hold the allow just given to ``who`` as long as the gatekeepers say; a deny when one
        of them failed to say (fail closed)."""
        until = self.manager.reuse_allow(who)
        if isinstance(until, Decision):
            return until
        if until is not None and until > time.monotonic():
            held = self._held
            if len(held) >= self.LIMIT:
                for stale in list(held)[: self.LIMIT // 2]:
                    del held[stale]
            held[key] = (until, who)
        return None


async def gate(
    manager: PluginManager,
    scope: Scope,
    action: str,
    model: str | None,
    version: str | None,
    outcome: Identified | None = None,
    allows: Allows | None = None,
) -> Principal:
    """Run the request gatekeepers: the caller's Principal, or the OIP error of the first deny
    (401, 403 or 503), carrying the deciding plugin's name as ``decided_by``. ``outcome``
    learns who the caller is as soon as authentication says so (for the audit record of a
    request that authorization then refuses). ``allows``: the model's held allows."""
    if manager.request_gates_are_sync():  # no coroutine per gatekeeper: about half the cost
        return gate_now(manager, scope, action, model, version, outcome, allows)
    who, denied = await manager.check_request_async(_info(scope, model, version), action)
    return _decided(who, denied, action, model, outcome)


def gate_now(
    manager: PluginManager,
    scope: Scope,
    action: str,
    model: str | None,
    version: str | None,
    outcome: Identified | None = None,
    allows: Allows | None = None,
) -> Principal:
    """``gate`` without a coroutine, for plain-function gatekeepers only
    (``manager.request_gates_are_sync()``): what the replica listener asks as soon as a
    request's headers are in, before it reads the body. With ``allows``, an allow held for the
    request's credentials, action and version answers without asking the gatekeepers."""
    headers = Headers(scope.get("headers", ()))
    key = None
    if allows is not None and allows.on:
        # What an allow is held by: the credentials as gatekeepers read them, the action, the version.
        key = (headers.get("authorization"), action, version)
        held = allows.get(key)
        if held is not None:
            return _decided(held, None, action, model, outcome)
    who, denied = manager.check_request(_info(scope, model, version, headers), action)
    if key is not None and allows is not None and denied is None and who is not None:
        denied = allows.put(key, who)
    return _decided(who, denied, action, model, outcome)


def _info(scope: Scope, model: str | None, version: str | None, headers: Headers | None = None) -> RequestInfo:
    client = scope.get("client")
    if headers is None:
        headers = Headers(scope.get("headers", ()))
    return RequestInfo(scope["method"], scope["path"], headers, client[0] if client else None, model, version)


def _decided(
    who: Principal | None, denied: Decision | None, action: str, model: str | None, outcome: Identified | None
) -> Principal:
    if who is not None and outcome is not None:
        outcome.principal = who.name
    if denied is not None:
        fallback = (
            "authentication failed" if who is None else f"'{who.name}' may not {action}" + (f" model '{model}'" if model else "")
        )
        raise refusal(denied, denied.reason or fallback)
    assert who is not None
    return who


def refusal(decision: Decision, reason: str) -> RequestError:
    """The OIP error a gatekeeper's deny is answered with (401, 403 or 503)."""
    if decision.status == 503:
        return Unavailable(reason, headers=RETRY_AFTER, decided_by=decision.plugin)
    if decision.status == 401:
        return Unauthorized(reason, headers=CHALLENGE, decided_by=decision.plugin)
    return Forbidden(reason, decided_by=decision.plugin)


_ids = bytearray()


def _forget_ids() -> None:  # a forked child must not draw the ids its parent draws
    _ids.clear()


os.register_at_fork(after_in_child=_forget_ids)


def new_request_id() -> str:
    """A request id unique across replicas and restarts: a UUIDv7 (RFC 9562) in 32 hex digits,
    the Unix time in milliseconds then 74 random bits. Ids made later sort later, so the audit
    log's request-id index grows at its end: random ids put each record's index entry on a page
    of its own, and a group commit wrote one index page per record to SQLite's WAL.

    The random bits come from a pool of OS randomness filled 4 KiB at a time: one
    ``os.urandom`` per request released the interpreter lock for a system call on every
    request, and the audit writer took it each time."""
    if len(_ids) < 10:
        _ids[:] = os.urandom(4090)
    draw = _ids[-10:]
    del _ids[-10:]
    draw[0] = 0x70 | (draw[0] & 0x0F)  # version 7
    draw[2] = 0x80 | (draw[2] & 0x3F)  # variant 10
    return (time.time_ns() // 1_000_000).to_bytes(6, "big").hex() + draw.hex()
