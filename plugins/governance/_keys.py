"""API keys: created once and shown once, stored as salted hashes, checked in-process.

A key reads ``lg_<key id>_<secret>``: the id (public, 16 hex) finds the row, the secret
(32 random bytes, base64url) is checked against ``sha256(domain, salt, secret)`` with a
constant-time comparison. Keys carry 256 bits of randomness, so a fast salted hash is
enough (there is nothing to brute-force), and the check costs about a microsecond.

``KeyCache`` holds every active key in memory and reloads the table from a background
thread every ``refresh_s``: a revoked key stops working within ``refresh_s`` plus one read.
When reloads fail for longer than ``max_stale_s`` the cache refuses every key (fail closed).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .._storage import create_tables, writing
from .._types import Principal
from . import _schema as t

__all__ = ["ROLES", "ROLE_ACTIONS", "KeyCache", "KeyInfo", "KeyStore", "parse_expiry"]

log = logging.getLogger("lockgate.governance")

PREFIX = "lg"
KEY_DOMAIN = b"lockgate/api-key/v1\x00"
MAX_TOKEN = 200

# What each role may do. 'explain' is the explanation endpoint, 'metrics' the Prometheus scrape,
# 'report' the SLO report, 'reference' setting a drift baseline; 'keys', 'audit', 'policy' the
# administration commands.
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"metadata", "sbom", "metrics", "report"}),
    "invoker": frozenset({"metadata", "infer", "explain"}),
    "deployer": frozenset({"metadata", "sbom", "metrics", "register", "alias", "load", "unload", "reference"}),
    "approver": frozenset({"metadata", "sbom", "metrics", "report", "approve", "reject", "revoke"}),
    "admin": frozenset(
        {
            "metadata",
            "sbom",
            "metrics",
            "report",
            "infer",
            "explain",
            "register",
            "alias",
            "load",
            "unload",
            "reference",
            "approve",
            "reject",
            "revoke",
            "keys",
            "audit",
            "policy",
        }
    ),
}
ROLES = tuple(ROLE_ACTIONS)


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(KEY_DOMAIN + bytes.fromhex(salt) + secret.encode("ascii")).hexdigest()


def parse_expiry(text: str | None, now: float | None = None) -> float | None:
    """'30d', '12h', '90m', or an ISO date/time (UTC when no zone) -> epoch seconds; None: never."""
    if not text:
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[-1:] in units and text[:-1].isdigit():
        return now + int(text[:-1]) * units[text[-1]]
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--expires {text!r}: use a duration (30d, 12h, 90m) or an ISO date such as 2027-06-30") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as listed (never its secret)."""

    key_id: str
    principal: str
    roles: tuple[str, ...]
    models: tuple[str, ...]
    created_by: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    revoked_by: str | None

    def state(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (time.time() if now is None else now):
            return "expired"
        return "active"


class KeyStore:
    """The key table: create (returns the key once), list, revoke."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        create_tables(engine, t.metadata)

    def create(
        self, principal: str, roles: Iterable[str], models: Iterable[str], *, created_by: str, expires_at: float | None = None
    ) -> tuple[str, KeyInfo]:
        roles = tuple(sorted(set(roles)))
        models = tuple(sorted(set(models))) or ("*",)
        unknown = [r for r in roles if r not in ROLE_ACTIONS]
        if not roles or unknown:
            raise ValueError(f"role(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(ROLES)}")
        if not principal or len(principal) > 256:
            raise ValueError("a key needs a principal name (1-256 characters)")
        if expires_at is not None and expires_at <= time.time():
            raise ValueError("the expiry lies in the past")
        key_id = os.urandom(8).hex()
        secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")
        salt = os.urandom(16).hex()
        now = time.time()
        row = dict(
            key_id=key_id,
            salt=salt,
            digest=_digest(salt, secret),
            principal=principal,
            roles=list(roles),
            models=list(models),
            created_by=created_by,
            created_at=now,
            expires_at=expires_at,
        )
        with writing(self.engine) as c, c.begin():
            c.execute(t.api_keys.insert().values(**row))
        info = KeyInfo(key_id, principal, roles, models, created_by, now, expires_at, None, None)
        return f"{PREFIX}_{key_id}_{secret}", info

    def list(self) -> list[KeyInfo]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.api_keys).order_by(t.api_keys.c.created_at)).all()
        return [_info(r) for r in rows]

    def any(self) -> bool:
        """Whether any key was ever created (revoked and expired ones count)."""
        with self.engine.connect() as c:
            return c.execute(sa.select(t.api_keys.c.key_id).limit(1)).first() is not None

    def revoke(self, key_id: str, *, actor: str) -> KeyInfo:
        key_id = key_id.removeprefix(f"{PREFIX}_").split("_")[0]
        with writing(self.engine) as c, c.begin():
            row = c.execute(sa.select(t.api_keys).where(t.api_keys.c.key_id == key_id)).first()
            if row is None:
                raise LookupError(f"no API key with id {key_id!r} (see `lockgate keys list`)")
            if row.revoked_at is None:
                c.execute(
                    t.api_keys.update().where(t.api_keys.c.key_id == key_id).values(revoked_at=time.time(), revoked_by=actor)
                )
            row = c.execute(sa.select(t.api_keys).where(t.api_keys.c.key_id == key_id)).one()
        return _info(row)

    def active_rows(self) -> builtins.list[Any]:
        with self.engine.connect() as c:
            return list(c.execute(sa.select(t.api_keys).where(t.api_keys.c.revoked_at.is_(None))).all())


def _info(r: Any) -> KeyInfo:
    return KeyInfo(
        r.key_id,
        r.principal,
        tuple(r.roles),
        tuple(r.models),
        r.created_by,
        r.created_at,
        r.expires_at,
        r.revoked_at,
        r.revoked_by,
    )


class _Entry:
    __slots__ = ("digest", "expires_at", "principal", "salt")

    def __init__(self, salt: bytes, digest: bytes, expires_at: float | None, principal: Principal) -> None:
        self.salt = salt
        self.digest = digest
        self.expires_at = expires_at
        self.principal = principal


class KeyCache:
    """Active keys in memory, reloaded every ``refresh_s`` by a daemon thread (started on first use)."""

    def __init__(self, store: KeyStore, *, refresh_s: float = 1.0, max_stale_s: float = 5.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.max_stale_s = max_stale_s
        self._entries: dict[str, _Entry] = {}
        self.open = True  # no key was ever created
        self.loaded_at = 0.0
        self.reload_errors = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._stopped = threading.Event()

    def reload(self) -> None:
        # One reload at a time: a slow read that started earlier must not overwrite a newer table.
        with self._reload_lock:
            self._reload()

    def _reload(self) -> None:
        rows = self.store.active_rows()
        ever = bool(rows) or self.store.any()
        entries = {}
        for r in rows:
            actions = frozenset().union(*(ROLE_ACTIONS.get(role, frozenset()) for role in r.roles))
            models = None if "*" in r.models else frozenset(r.models)
            principal = Principal(r.principal, frozenset(r.roles), {"key_id": r.key_id, "actions": actions, "models": models})
            entries[r.key_id] = _Entry(bytes.fromhex(r.salt), bytes.fromhex(r.digest), r.expires_at, principal)
        self._entries, self.open, self.loaded_at = entries, not ever, time.monotonic()

    def ensure_started(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self.loaded_at == 0.0:
                try:
                    self.reload()
                except Exception as e:  # noqa: BLE001 - stale and fail closed until a reload works
                    self.reload_errors += 1
                    log.warning("cannot read API keys: %s", e)
            self._thread = threading.Thread(target=self._run, name="lockgate-keys", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self.refresh_s):
            try:
                self.reload()
            except Exception as e:  # noqa: BLE001 - keep the last table until max_stale_s
                self.reload_errors += 1
                log.warning("reloading API keys failed: %s", e)

    def reusable_until(self, principal: Principal, *, anonymous: bool = False) -> float | None:
        """Until when (``time.monotonic()``) an allow of ``principal`` may stand without its key
        being checked again: the start of this table's next reload, or the key's expiry when
        sooner. ``anonymous``: ``principal`` is open mode's anonymous caller, whose allow stands
        while the table has no key (the first key ends open mode). None for a principal this
        table did not make (another authenticator's, or one of an earlier table: its key may have
        been revoked since), for an anonymous caller once keys exist, and when a reload landed
        while this was read (the load time is read first and again last)."""
        loaded = self.loaded_at
        if anonymous:
            held, expires_at = bool(self.open), None
        else:
            key_id = principal.attributes.get("key_id")
            entry = self._entries.get(key_id) if isinstance(key_id, str) else None
            held = entry is not None and entry.principal is principal
            expires_at = entry.expires_at if entry is not None else None
        if not held or self.loaded_at != loaded:
            return None
        until = loaded + self.refresh_s
        if expires_at is not None:
            until = min(until, time.monotonic() + (expires_at - time.time()))
        return until

    def stale(self) -> bool:
        return time.monotonic() - self.loaded_at > self.max_stale_s

    def check(self, token: str) -> Principal | str:
        """The key's principal, or why the token is refused (the same words for an unknown
        id and a wrong secret, so the answer tells nothing about which part was wrong)."""
        if len(token) > MAX_TOKEN:
            return "API key too long"
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return "malformed API key (expected lg_<id>_<secret>)"
        entry = self._entries.get(parts[1])
        try:
            secret = parts[2].encode("ascii")
        except UnicodeEncodeError:
            return "malformed API key (expected lg_<id>_<secret>)"
        if entry is None:
            # Spend the same work as a real check, so timing does not reveal which ids exist.
            hmac.compare_digest(hashlib.sha256(KEY_DOMAIN + secret).digest(), bytes(32))
            return "invalid API key"
        if not hmac.compare_digest(hashlib.sha256(KEY_DOMAIN + entry.salt + secret).digest(), entry.digest):
            return "invalid API key"
        if entry.expires_at is not None and entry.expires_at <= time.time():
            return "API key expired"
        return entry.principal
