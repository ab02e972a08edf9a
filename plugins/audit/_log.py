"""The audit log's store: appending groups to the chain, checkpoints, verification, export,
retention. The sequencer (``_sequencer``) is its only writer within a process; across
processes the chain's head row is locked by each group's transaction, so the sequence stays
one gapless chain however many processes append.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from lockgate.fastpath.sqlite_group import GroupWriter

from .._storage import SQLITE_BUSY_S, create_tables, make_engine, sqlite_busy, sqlite_file, writing
from ..errors import PruneRefused
from . import _schema as t
from ._chain import GENESIS, canonical, checkpoint_mac, prune_mac, record_hash

__all__ = ["AuditLog", "CheckpointSink", "VerifyReport"]

HEAD_ID = 1
DAY_S = 86400.0


class CheckpointSink:
    """Signed checkpoints as JSON lines in a file outside the database (appended, fsynced)."""

    def __init__(self, path: str | Path, key: bytes) -> None:
        self.path = Path(path)
        self.key = key

    def append(self, seq: int, hash_: str, at: float) -> dict[str, Any]:
        checkpoint: dict[str, Any] = {"seq": seq, "hash": hash_, "at": at}
        checkpoint["mac"] = checkpoint_mac(self.key, checkpoint)
        self._write(checkpoint)
        return checkpoint

    def _write(self, line: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (canonical(line) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def mark_prune(self, pruned_through: int, hash_: str, cutoff: float, retention_days: float, at: float) -> dict[str, Any]:
        """Sign that records up to ``pruned_through`` (whose hash was ``hash_``) were deleted, at
        ``at``, with this cut-off under this retention period: the one anchor verify accepts
        for a chain that no longer starts at record 1."""
        marker: dict[str, Any] = {
            "pruned_through": pruned_through,
            "hash": hash_,
            "at": at,
            "cutoff": cutoff,
            "retention_days": retention_days,
        }
        marker["mac"] = prune_mac(self.key, marker)
        self._write(marker)
        return marker

    def markers(self) -> dict[int, dict[str, Any]]:
        """The signed prune markers, by the last seq each deleted (unsigned ones are ignored)."""
        found: dict[int, dict[str, Any]] = {}
        for line in self._lines():
            try:
                marker = json.loads(line)
                if "pruned_through" in marker and prune_mac(self.key, marker) == marker.get("mac"):
                    found[int(marker["pruned_through"])] = marker
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()] if self.path.exists() else []

    def read(self) -> tuple[dict[int, dict[str, Any]], list[str]]:
        """Checkpoints by seq whose signature holds, and a problem for each line that does not."""
        good: dict[int, dict[str, Any]] = {}
        problems: list[str] = []
        if not self.path.exists():
            return good, problems
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                checkpoint = json.loads(line)
                if "pruned_through" in checkpoint:  # a prune marker: markers() reads those
                    valid = prune_mac(self.key, checkpoint) == checkpoint.get("mac")
                    if not valid:
                        problems.append(f"prune marker on line {number} of {self.path} has a bad signature or format")
                    continue
                valid = checkpoint_mac(self.key, checkpoint) == checkpoint.get("mac")
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                problems.append(f"checkpoint line {number} of {self.path} has a bad signature or format")
                continue
            seq = int(checkpoint["seq"])
            if seq in good and good[seq]["hash"] != checkpoint["hash"]:
                problems.append(f"two signed checkpoints for seq {seq} disagree")
            good[seq] = checkpoint
        return good, problems


@dataclass
class VerifyReport:
    """What ``AuditLog.verify`` found: ``ok`` when ``problems`` is empty."""

    records: int = 0
    first: int | None = None
    last: int | None = None
    checkpoints: int = 0
    anchored_at: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """The chain in a SQLAlchemy database (``url``) with its checkpoint ``sink``.

    ``durable``: SQLite syncs every commit (the sync mode's promise); ``checkpoint_every``:
    a checkpoint at least every N records (the time bound is the sequencer's).
    """

    def __init__(self, url: str, sink: CheckpointSink, *, durable: bool = True, checkpoint_every: int = 1000) -> None:
        self.url = url
        self.engine = make_engine(url, durable=durable)
        self.sink = sink
        self.checkpoint_every = checkpoint_every
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._durable = durable
        self._file = sqlite_file(url, plain=True)  # a plain SQLite file: groups go through a GroupWriter
        self._raw: Any = None  # the writer's group connection (``_group_connection``)
        self._raw_now: Any = None  # append_now's: SQLite's busy timeout 0
        self._writer_lock = threading.Lock()
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        columns = [c.name for c in t.records.columns]
        self._sql_insert = f"INSERT INTO {t.records.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
        lock = "" if self._sqlite else " FOR UPDATE"
        self._sql_head = f"SELECT seq, hash, checkpoint_seq FROM {t.head.name} WHERE id = {HEAD_ID}{lock}"
        self._sql_head_update = f"UPDATE {t.head.name} SET seq = {mark}, hash = {mark} WHERE id = {HEAD_ID}"
        self._sql_head_checkpoint = f"UPDATE {t.head.name} SET seq = {mark}, hash = {mark}, checkpoint_seq = {mark}, checkpoint_at = {mark} WHERE id = {HEAD_ID}"
        create_tables(self.engine, t.metadata)
        with writing(self.engine) as c, c.begin():
            if c.execute(sa.select(t.head.c.id).where(t.head.c.id == HEAD_ID)).first() is None:
                try:
                    with c.begin_nested():
                        c.execute(
                            t.head.insert().values(id=HEAD_ID, seq=0, hash=GENESIS, checkpoint_seq=0, checkpoint_at=time.time())
                        )
                except sa.exc.IntegrityError:  # another process created it
                    pass

    # -- the table's indexes -----------------------------------------------------------------

    def layout_changes(self) -> tuple[list[str], list[str]]:
        """What ``migrate_indexes`` would do to a table made with an earlier layout: the indexes
        it would drop (ones the current layout does not have) and the ones it would create. Both
        empty when the table has the current layout."""
        with self.engine.connect() as c:
            drop, create = _index_changes(c)
        return drop, [str(index.name) for index in create]

    def migrate_indexes(self) -> tuple[list[str], list[str]]:
        """Give a table made with an earlier layout the current indexes (``_schema``): drop the
        ones the current layout does without, create the ones it adds, in one transaction that
        holds the chain's head, so no record is written meanwhile and a second process finds the
        work done. Building an index reads the whole table: on a large one, the audit writes of a
        running server wait for it. Returns (dropped, created). On SQLite a ``seq`` made before
        it was the rowid keeps its own index: only a rebuild of the table would remove it."""
        with writing(self.engine) as c, c.begin():
            self._lock_head(c)
            drop, create = _index_changes(c)
            for name in drop:
                c.exec_driver_sql(f"DROP INDEX {name}")
            for index in create:
                index.create(c)
        return drop, [str(index.name) for index in create]

    # -- writing -----------------------------------------------------------------------------

    def _lock_head(self, c: sa.Connection) -> Any:
        q = sa.select(t.head).where(t.head.c.id == HEAD_ID)
        if c.dialect.name != "sqlite":  # SQLite's BEGIN IMMEDIATE already holds the write lock
            q = q.with_for_update()
        return c.execute(q).one()

    def append(self, entries: list[dict[str, Any]], seal: Callable[[], None] | None = None) -> list[int]:
        """Append ``entries`` (record fields without seq) as one transaction; their seqs.

        Every entry has ``at``, ``kind``, ``actor`` and optional ``model``, ``version``,
        ``request_id``, ``client_id``, ``detail``. The group goes through one connection kept by
        this log (``_group_connection``), not SQLAlchemy's statement layer, which cost more than
        the commit itself. ``seal`` is called once the store is locked for the write, just
        before the entries are read: what changes them after it is not written."""
        with self._writer_lock:
            try:
                if self._raw is None:
                    self._raw = self._group_connection(SQLITE_BUSY_S)
                return self._append(self._raw, entries, seal)
            except BaseException:
                connection, self._raw = self._raw, None
                _discard(connection)
                raise

    def append_now(self, entries: list[dict[str, Any]]) -> list[int] | None:
        """``append`` for a caller that must not wait (an event loop): None, having written
        nothing, when another thread of this process is writing or, on SQLite, another process
        holds the write lock, or when the write fails; the caller then hands the entries to the
        writer thread (which retries, and isolates a record that cannot be stored). Only SQLite:
        on a server database every statement is a network round trip (None there)."""
        if not self._sqlite or not self._writer_lock.acquire(blocking=False):
            return None
        try:
            if self._raw_now is None:
                self._raw_now = self._group_connection(0.0)  # a held lock is an answer, not a wait
            return self._append(self._raw_now, entries, None)
        except Exception as e:  # noqa: BLE001 - nothing was committed: the writer thread does it
            connection = self._raw_now
            if connection is not None and sqlite_busy(e):  # another process's lock keeps the connection
                try:
                    connection.rollback()
                    return None
                except Exception:  # noqa: BLE001 - a broken connection: dropped below
                    pass
            self._raw_now = None
            _discard(connection)
            return None
        finally:
            self._writer_lock.release()

    def _group_connection(self, busy_timeout_s: float) -> Any:
        """A connection for appending groups: on an SQLite file a ``GroupWriter``
        (lockgate.fastpath.sqlite_group: compiled, a group's statements let the interpreter lock
        go once, not once a row), else one of the engine's DBAPI connections behind the same
        calls. ``busy_timeout_s``: SQLite's wait for another process's write lock."""
        if self._file is not None:
            synchronous = "FULL" if self._durable else "NORMAL"
            return GroupWriter(self._file, synchronous=synchronous, busy_timeout_ms=int(busy_timeout_s * 1000))
        raw = self.engine.raw_connection()
        if self._sqlite:
            cur = raw.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.close()
        return _DbapiGroup(raw, sqlite=self._sqlite)

    def _append(self, connection: Any, entries: list[dict[str, Any]], seal: Callable[[], None] | None) -> list[int]:
        head_seq, prev, checkpoint_seq = connection.begin(self._sql_head)
        if seal is not None:
            seal()
        seq = head_seq
        rows = []
        for entry in entries:
            seq += 1
            body = canonical({"seq": seq, **entry})
            digest = record_hash(prev, body)
            rows.append(
                (
                    seq,
                    entry["at"],
                    entry["kind"],
                    entry["actor"],
                    entry.get("model"),
                    entry.get("version"),
                    entry.get("request_id"),
                    entry.get("client_id"),
                    body,
                    prev,
                    digest,
                )
            )
            prev = digest
        if seq - checkpoint_seq >= self.checkpoint_every:
            # Signed before the commit: the records it names are in this transaction, and a
            # checkpoint whose transaction failed is caught by verify as a cut tail.
            now = time.time()
            self.sink.append(seq, prev, now)
            connection.write(self._sql_insert, rows, self._sql_head_checkpoint, (seq, prev, seq, now))
        else:
            connection.write(self._sql_insert, rows, self._sql_head_update, (seq, prev))
        return [r[0] for r in rows]

    def checkpoint(self, *, older_than_s: float = 0.0) -> dict[str, Any] | None:
        """Sign the head now when records came since the last checkpoint (and it is older than
        ``older_than_s``); the checkpoint, or None."""
        with writing(self.engine) as c, c.begin():
            head = self._lock_head(c)
            now = time.time()
            if head.seq <= head.checkpoint_seq or now - head.checkpoint_at < older_than_s:
                return None
            checkpoint = self.sink.append(head.seq, head.hash, now)
            c.execute(t.head.update().where(t.head.c.id == HEAD_ID).values(checkpoint_seq=head.seq, checkpoint_at=now))
        return checkpoint

    # -- reading -----------------------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.head).where(t.head.c.id == HEAD_ID)).one()
        return row.seq, row.hash

    def count(self, kind: str | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(t.records)
        if kind is not None:
            q = q.where(t.records.c.kind == kind)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar() or 0)

    def records(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        model: str | None = None,
        kind: str | None = None,
        request_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Records in seq order, as their hashed bodies plus ``hash``."""
        q = sa.select(t.records.c.body, t.records.c.hash).order_by(t.records.c.seq)
        if since is not None:
            q = q.where(t.records.c.at >= since)
        if until is not None:
            q = q.where(t.records.c.at < until)
        if model is not None:
            q = q.where(t.records.c.model == model)
        if kind is not None:
            q = q.where(t.records.c.kind == kind)
        if request_id is not None:
            q = q.where(sa.or_(t.records.c.request_id == request_id, t.records.c.client_id == request_id))
        with self.engine.connect() as c:
            for row in c.execution_options(yield_per=1000).execute(q):
                yield {**json.loads(row.body), "hash": row.hash}

    # -- verification ------------------------------------------------------------------------

    def verify(self, retention_days: float | None = None) -> VerifyReport:
        """Walk the chain: every hash, every link, no gap, the signed checkpoints, the tail. A
        chain that does not start at record 1 must start right after a signed prune marker, one
        that kept ``retention_days`` (when given) when it was made."""
        report = VerifyReport()
        checkpoints, problems = self.sink.read()
        markers = self.sink.markers()
        report.problems.extend(problems)
        report.checkpoints = len(checkpoints)
        columns = ("at", "kind", "actor", "model", "version", "request_id", "client_id")
        q = sa.select(t.records).order_by(t.records.c.seq)
        prev = None
        expected = None
        with self.engine.connect() as c:
            head = c.execute(sa.select(t.head).where(t.head.c.id == HEAD_ID)).one()
            for row in c.execution_options(yield_per=2000).execute(q):
                if expected is None:  # the first record left: genesis, or anchored by a prune marker
                    report.first = row.seq
                    prev = GENESIS if row.seq == 1 else self._anchor(row.seq, markers, retention_days, report)
                    if prev is None:
                        prev = row.prev_hash
                    expected = row.seq
                if row.seq != expected:
                    report.problems.append(f"records {expected}..{row.seq - 1} are missing (deleted or moved)")
                try:
                    body = json.loads(row.body)
                except ValueError:
                    body = {}
                if body.get("seq") != row.seq:
                    report.problems.append(f"record at seq {row.seq} carries seq {body.get('seq')} (records reordered or moved)")
                if row.prev_hash != prev:
                    report.problems.append(
                        f"record {row.seq} does not link to the record before it (chain broken: reordered, inserted or deleted)"
                    )
                digest = record_hash(row.prev_hash, row.body)
                if digest != row.hash:
                    report.problems.append(f"record {row.seq} was edited: its content no longer hashes to its stored hash")
                changed = [
                    k for k in columns if body.get(k) != getattr(row, k) and not (k == "at" and _close(body.get(k), row.at))
                ]
                if changed:
                    report.problems.append(
                        f"record {row.seq}: column(s) {', '.join(changed)} differ from the hashed record (edited)"
                    )
                signed = checkpoints.get(row.seq)
                if signed is not None and signed["hash"] != row.hash:
                    report.problems.append(
                        f"record {row.seq} differs from the signed checkpoint of seq {row.seq}: the chain was rewritten"
                    )
                prev = row.hash
                expected = row.seq + 1
                report.records += 1
                report.last = row.seq
        last = report.last or 0
        beyond = [s for s in checkpoints if s > last]
        if beyond:
            report.problems.append(
                f"the log ends at seq {last} but a signed checkpoint names seq {max(beyond)}: its tail was cut"
            )
        if head.seq > last:
            report.problems.append(f"the chain head names seq {head.seq} but the log ends at seq {last}: its tail was cut")
        return report

    @staticmethod
    def _anchor(first: int, markers: dict[int, dict[str, Any]], retention_days: float | None, report: VerifyReport) -> str | None:
        """The hash the first record left must link to: its prune marker's (None: a problem)."""
        marker = markers.get(first - 1)
        if marker is None:
            report.problems.append(
                f"records before seq {first} are missing and no signed prune marker says they were pruned (deleted outside `audit prune`)"
            )
            return None
        report.anchored_at = first - 1
        if retention_days is not None and marker["cutoff"] > marker["at"] - retention_days * DAY_S:
            report.problems.append(
                f"the prune of records up to seq {first - 1} cut records younger than the retention period ({retention_days:g} days)"
            )
        return str(marker["hash"])

    # -- export and retention ----------------------------------------------------------------

    def export(self, out: IO[str], fmt: str, **filters: Any) -> int:
        """Write the records matching ``filters`` as JSON lines or CSV; the number written."""
        n = 0
        if fmt == "jsonl":
            for record in self.records(**filters):
                out.write(canonical(record) + "\n")
                n += 1
            return n
        fields = ["seq", "time", "kind", "actor", "model", "version", "request_id", "client_id", "status", "detail", "hash"]
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for record in self.records(**filters):
            detail = record.get("detail") or {}
            writer.writerow(
                {
                    "seq": record["seq"],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record["at"]))
                    + f".{int(record['at'] % 1 * 1000):03d}Z",
                    "kind": record["kind"],
                    "actor": record["actor"],
                    "model": record.get("model") or "",
                    "version": "" if record.get("version") is None else record["version"],
                    "request_id": record.get("request_id") or "",
                    "client_id": record.get("client_id") or "",
                    "status": detail.get("status", ""),
                    "detail": canonical(detail),
                    "hash": record["hash"],
                }
            )
            n += 1
        return n

    def prune(self, before: float, *, retention_days: float, now: float | None = None) -> tuple[int, int]:
        """Delete the records older than ``before`` up to the last signed checkpoint among them,
        so the remaining chain starts from a checkpoint and still verifies.

        Refused when ``before`` is later than the retention period allows. Returns (records
        deleted, the anchoring checkpoint's seq); (0, 0) when nothing can go."""
        now = time.time() if now is None else now
        limit = now - retention_days * DAY_S
        if before > limit:
            raise PruneRefused(
                f"records younger than the retention period ({retention_days:g} days) cannot be pruned; "
                f"the latest allowed cut-off is {time.strftime('%Y-%m-%d', time.gmtime(limit))}"
            )
        checkpoints, _ = self.sink.read()
        with writing(self.engine) as c, c.begin():
            self._lock_head(c)
            eligible = sorted(s for s in checkpoints if s > 0)
            anchor = 0
            for seq in eligible:
                at = c.execute(sa.select(t.records.c.at).where(t.records.c.seq == seq)).scalar()
                if (
                    at is not None
                    and at < before
                    and checkpoints[seq]["hash"] == c.execute(sa.select(t.records.c.hash).where(t.records.c.seq == seq)).scalar()
                ):
                    anchor = seq
            if anchor == 0:
                return 0, 0
            # Signed before the delete commits: a marker whose delete failed names records that
            # are still there, which verify ignores; a delete without its marker would not verify.
            self.sink.mark_prune(anchor, checkpoints[anchor]["hash"], before, retention_days, now)
            deleted = c.execute(t.records.delete().where(t.records.c.seq <= anchor)).rowcount
        return int(deleted or 0), anchor

    def close(self) -> None:
        with self._writer_lock:
            connections, self._raw, self._raw_now = (self._raw, self._raw_now), None, None
            for connection in connections:
                _discard(connection)
        self.engine.dispose()


def _index_changes(c: sa.Connection) -> tuple[list[str], list[sa.Index]]:
    """The records table's indexes of an earlier layout that it still has, and those of the
    current layout that it lacks."""
    present = {str(ix["name"]) for ix in sa.inspect(c).get_indexes(t.records.name)}
    lacking = sorted((ix for ix in t.records.indexes if ix.name not in present), key=lambda ix: str(ix.name))
    return sorted(present & t.EARLIER_INDEXES), lacking


class _DbapiGroup:
    """``GroupWriter``'s calls on a DBAPI connection of the engine: PostgreSQL (``SELECT ... FOR
    UPDATE`` locks the head row), and SQLite that is not a plain file."""

    def __init__(self, raw: Any, *, sqlite: bool) -> None:
        self.raw = raw
        self.sqlite = sqlite

    def begin(self, select_sql: str) -> tuple[Any, ...] | None:
        cur = self.raw.cursor()
        try:
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(select_sql)
            row = cur.fetchone()
            return None if row is None else tuple(row)
        finally:
            cur.close()

    def write(self, insert_sql: str, rows: list[tuple[Any, ...]], update_sql: str, update_parameters: tuple[Any, ...]) -> None:
        cur = self.raw.cursor()
        try:
            cur.executemany(insert_sql, rows)
            cur.execute(update_sql, update_parameters)
            cur.execute("COMMIT") if self.sqlite else self.raw.commit()
        finally:
            cur.close()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()

    def invalidate(self) -> None:
        self.raw.invalidate()


def _discard(connection: Any) -> None:
    """Roll back and close a group connection; one whose rollback fails is broken (a pooled DBAPI
    connection is invalidated, not handed out again)."""
    if connection is None:
        return
    try:
        connection.rollback()
    except Exception:  # noqa: BLE001 - the connection is broken: discard it
        invalidate = getattr(connection, "invalidate", None)
        if invalidate is not None:
            invalidate()
    finally:
        connection.close()


def _close(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) < 1e-6
