"""The audit plugin: options, and the hooks that feed the sequencer."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .. import hookimpl
from .._options import parse_section
from .._types import AuditEvent, CommandContext, Decision, InferenceEvent, Settings
from ..errors import AuditError, ConfigError
from ._chain import load_or_create_key
from ._log import AuditLog, CheckpointSink
from ._payloads import PayloadSealer
from ._sequencer import Sequencer, digest_bodies

__all__ = ["LOCKGATE_PLUGIN_API", "AuditOptions", "AuditPlugin", "plugin"]

LOCKGATE_PLUGIN_API = "1.4"

log = logging.getLogger("lockgate.audit")


class AuditOptions(BaseModel):
    """The ``audit`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the audit database. Default: the registry's database when it is "
        "PostgreSQL, else sqlite:///LOCKGATE_HOME/audit.db.",
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync: a response leaves only after its record is durable; async: records go through a "
        "bounded buffer and a crash can lose what it holds.",
    )
    buffer: int = Field(10_000, ge=1, description="async mode: records held at most; more are dropped and counted.")
    max_group: int = Field(1024, ge=1, description="Records written in one transaction at most (group commit).")
    linger_s: float | None = Field(
        None,
        ge=0,
        le=1,
        description="How long the writer gathers records before a write. Default: 0 in sync mode, 0.05 in async mode.",
    )
    checkpoint_every: int = Field(1000, ge=1, description="A signed checkpoint at least every N records.")
    checkpoint_interval_s: float = Field(10.0, gt=0, description="... and at least every T seconds while records come.")
    checkpoint_path: str | None = Field(
        None, description="The checkpoint sink (JSON lines). Default LOCKGATE_HOME/audit-checkpoints.jsonl."
    )
    key_file: str | None = Field(
        None,
        description="The checkpoint HMAC key (hex), kept out of the database; env LOCKGATE_AUDIT_KEY_FILE; default LOCKGATE_HOME/audit.key.",
    )
    payloads: bool = Field(
        False,
        description="Keep whole request and response bodies, not only their sha256, sealed with AES-256-GCM under "
        "payload_key_file (`lockgate audit replay` re-runs them).",
    )
    payload_key_file: str | None = Field(
        None, description="The payloads' key (hex), kept out of the database; default LOCKGATE_HOME/audit-payload.key."
    )
    retention_days: float = Field(
        183.0, gt=0, description="Records younger than this are never pruned (EU AI Act art. 19: 6 months at least)."
    )
    inference: bool = Field(True, description="Record every inference request (answered, refused, failed).")
    commit_alone: bool = Field(
        True,
        description="sync mode, SQLite: the record of a request that a replica serves alone is committed on its "
        "event loop when the writer thread is idle, sparing two thread wake-ups; under load the writer thread "
        "commits groups as before.",
    )


def default_url(settings: Settings, options: AuditOptions) -> str:
    if options.url:
        return options.url
    if settings.registry_url.startswith("postgresql"):
        return settings.registry_url
    return f"sqlite:///{Path(settings.home or '.').resolve()}/audit.db"


class AuditPlugin:
    """Builds this process's ``AuditLog`` and ``Sequencer`` on first use.

    Options that do not validate do not switch the audit off: the plugin stays registered and
    every record fails (inference answers withheld with 503), so a misconfiguration is loud."""

    LOCKGATE_PLUGIN_API = LOCKGATE_PLUGIN_API

    def __init__(self) -> None:
        self.options = AuditOptions()
        self.settings: Settings | None = None
        self.error: str | None = None
        self._log: AuditLog | None = None
        self._sequencer: Sequencer | None = None
        self._sealer: PayloadSealer | None = None
        self._atexit = False

    @hookimpl
    def lockgate_configure(self, settings: Settings, manager: Any) -> None:
        self.close()
        self._sealer = None
        self.settings = settings
        self.error = None
        try:
            self.options = parse_section(settings.options, "audit", AuditOptions)
        except ConfigError as e:
            self.error = str(e)
            log.error("%s; every record will fail until fixed", self.error)

    # -- the store, built on first use -------------------------------------------------------

    @property
    def audit_log(self) -> AuditLog:
        if self.error is not None:
            raise AuditError(self.error)
        if self._log is None:
            if self.settings is None:
                raise AuditError("the audit plugin is not configured")
            home = Path(self.settings.home or ".")
            key_file = os.environ.get("LOCKGATE_AUDIT_KEY_FILE") or self.options.key_file or str(home / "audit.key")
            sink = CheckpointSink(self.options.checkpoint_path or home / "audit-checkpoints.jsonl", load_or_create_key(key_file))
            self._log = AuditLog(
                default_url(self.settings, self.options),
                sink,
                durable=self.options.mode == "sync",
                checkpoint_every=self.options.checkpoint_every,
            )
        return self._log

    @property
    def sealer(self) -> PayloadSealer:
        """The key that seals kept request and response bodies (``payloads``), made on first use."""
        if self._sealer is None:
            if self.settings is None:
                raise AuditError("the audit plugin is not configured")
            path = self.options.payload_key_file or str(Path(self.settings.home or ".") / "audit-payload.key")
            self._sealer = PayloadSealer(load_or_create_key(path))
        return self._sealer

    @property
    def sequencer(self) -> Sequencer:
        if self._sequencer is None:
            sealer = self.sealer if self.options.payloads else None
            self._sequencer = Sequencer(
                self.audit_log,
                mode=self.options.mode,
                buffer=self.options.buffer,
                max_group=self.options.max_group,
                checkpoint_interval_s=self.options.checkpoint_interval_s,
                linger_s=self.options.linger_s
                if self.options.linger_s is not None
                else (0.05 if self.options.mode == "async" else 0.0),
                prepare=lambda entry: digest_bodies(entry, sealer),
                observe=_AuditMetrics(),
                withhold=withhold,
                follow_up=self._withheld_late,
            )
            if not self._atexit:
                atexit.register(self.close)
                self._atexit = True
        return self._sequencer

    def close(self) -> None:
        if self._sequencer is not None:
            self._sequencer.stop()
            self._sequencer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- hooks -------------------------------------------------------------------------------

    @hookimpl
    def lockgate_audit_event(self, event: AuditEvent) -> None:
        entry = _compact(
            {
                "at": time.time(),
                "kind": event.kind,
                "actor": event.actor,
                "model": event.model,
                "version": event.version,
                "detail": dict(event.detail),
            }
        )
        sequencer = self.sequencer
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a command or a thread: wait until the record is durable
            sequencer.record_blocking(entry)
        else:  # on an event loop: never block it; the sequencer writes it with the next group
            sequencer.submit(entry, droppable=self.options.mode == "async")

    @hookimpl
    def lockgate_record_inference(self, event: InferenceEvent) -> Any:
        if not self.options.inference:
            return None
        entry = inference_entry(event)
        sequencer = self.sequencer
        if self.options.mode == "sync":
            # A cancelled future (the recorder's timeout: the answer withheld) makes the record say
            # so: the sequencer's ``withhold`` and ``follow_up`` (``_withheld_late``).
            return sequencer.record(entry, now=self.options.commit_alone and event.in_flight == 1)
        sequencer.submit(entry)
        return None

    def _withheld_late(self, entry: dict[str, Any]) -> None:
        """The answer was withheld while its record was being written as answered: a record of
        its own says what the client got."""
        follow_up: dict[str, Any] = {
            key: entry[key] for key in ("actor", "model", "version", "request_id", "client_id") if key in entry
        }
        follow_up["at"] = time.time()
        follow_up["kind"] = "answer_withheld"
        follow_up["detail"] = {"status": 503, "error": WITHHELD, "of_kind": entry.get("kind")}
        self.sequencer.submit(follow_up, droppable=False)

    @hookimpl
    def lockgate_audit_records(
        self, since: float | None, until: float | None, kind: str | None, model: str | None
    ) -> Iterator[dict[str, Any]]:
        return self.audit_log.records(since=since, until=until, kind=kind, model=model)

    @hookimpl
    def lockgate_audit_record(self, request_id: str) -> dict[str, Any] | None:
        found = [r for r in self.audit_log.records(request_id=request_id) if r.get("kind") in ("infer", "explain")]
        exact = [r for r in found if r.get("request_id") == request_id]  # the server's id before a client's
        chosen = exact or found
        return chosen[-1] if chosen else None

    @hookimpl
    def lockgate_audit_payload(self, record: Mapping[str, Any], which: str) -> bytes | None:
        detail = record.get("detail") or {}
        sealed = detail.get(f"{which}_sealed")
        if sealed is None:
            return None
        return self.sealer.open(sealed, str(record.get("request_id") or ""), which, detail.get("payload_key"))

    @hookimpl
    def lockgate_startup_notes(self, host: str) -> list[str] | None:
        if self.error is not None:
            return None
        drop, create = self.audit_log.layout_changes()
        if not drop and not create:
            return None
        return [
            "the audit table has an earlier layout: each record writes more pages than it needs; "
            "`lockgate audit migrate` gives it the current indexes (the records stay as they are)"
        ]

    @hookimpl
    def lockgate_check_startup(self, host: str, insecure: bool) -> Decision | None:
        if self.error is not None:
            return Decision.deny(f"refusing to start: {self.error} (every answer would be withheld)")
        return None

    @hookimpl
    def lockgate_register_commands(self, cli: Any, context: CommandContext) -> None:
        from .cli import audit_commands

        cli.add_command(audit_commands(context, self))


class _AuditMetrics:
    """The sequencer's state as Prometheus metrics (made on the writer thread's first group)."""

    def __init__(self) -> None:
        self._made = False
        self._dropped = 0

    def _make(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = CollectorRegistry()
        self.records = Counter("lockgate_audit_records", "Audit records written.", registry=r)
        self.failures = Counter(
            "lockgate_audit_write_failures", "Audit writes that failed (retried; sync answers withheld).", registry=r
        )
        self.dropped = Counter("lockgate_audit_dropped_records", "Records dropped by a full async buffer.", registry=r)
        self.pending = Gauge(
            "lockgate_audit_pending_records", "Records waiting for the audit writer.", multiprocess_mode="livesum", registry=r
        )
        self.lag = Gauge(
            "lockgate_audit_lag_seconds",
            "Age of the oldest record of the last group written.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self._made = True

    def __call__(self, sequencer: Sequencer, written: int, lag_s: float, failed: bool) -> None:
        if not self._made:
            self._make()
        if failed:
            self.failures.inc()
        elif written:
            self.records.inc(written)
        if sequencer.dropped > self._dropped:
            self.dropped.inc(sequencer.dropped - self._dropped)
            self._dropped = sequencer.dropped
        self.pending.set(sequencer.pending)
        self.lag.set(lag_s)


WITHHELD = "the answer was withheld: its audit record was not durable within the recorder timeout"


def withhold(entry: dict[str, Any]) -> None:
    """Make a record not yet written say what its client got: 503, withheld, and no output
    (the server withheld the answer when the record was not durable within the recorder timeout)."""
    detail = entry.setdefault("detail", {})
    detail.update(status=503, error=WITHHELD)
    for key in ("output_bytes", "output_sha256", "output_size", "output_sealed"):
        detail.pop(key, None)


def inference_entry(event: InferenceEvent) -> dict[str, Any]:
    """The record of an inference request, as the sequencer takes it: fields that are None are
    left out (the request and response bytes become digests on the writer's thread). Built field
    by field: this runs on the event loop for every request, and two dictionaries filtered after
    they were built took twice as long."""
    detail: dict[str, Any] = {"status": event.status, "latency_ms": round(event.latency_s * 1000.0, 3)}
    if event.batch_rows:
        detail["rows"] = event.batch_rows
    if event.error is not None:
        detail["error"] = event.error
    if event.decided_by is not None:
        detail["decided_by"] = event.decided_by
    if event.sha256 is not None:
        detail["sha256"] = event.sha256
    if event.request_body is not None:
        detail["input_bytes"] = event.request_body
    if event.response_body is not None:
        detail["output_bytes"] = event.response_body
    if event.explains is not None:
        detail["explains"] = event.explains
    entry: dict[str, Any] = {"at": event.started_at or time.time(), "kind": event.action, "actor": event.principal}
    if event.model is not None:
        entry["model"] = event.model
    if event.version is not None:
        entry["version"] = event.version
    if event.request_id is not None:
        entry["request_id"] = event.request_id
    if event.client_id is not None:
        entry["client_id"] = event.client_id
    entry["detail"] = detail
    return entry


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


plugin = AuditPlugin()
