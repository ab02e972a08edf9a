"""The sequencer: this process's one writer of the audit chain, with group commit.

Producers (request handlers on a replica's event loop, CLI commands) put entries on a
queue; one thread takes everything queued, writes it as one transaction, and then wakes the
producers that wait. While a group commits, the next one gathers, so under load one commit
carries many records and the cost of durability is shared.

- sync mode: a producer waits for its record to be durable (an asyncio future, resolved
  from the thread in one call per group and loop). A failed write fails the group's futures.
- async mode: nothing waits; the writer gathers for ``linger_s`` before it writes; the queue is
  bounded (``buffer``); an entry that finds it full is dropped and counted; a failed write is
  retried with the entries kept. A crash loses what is queued: at most ``buffer`` records.
- a writer thread that dies (a bug, or killed) loses nothing: ``_abandon`` hands its group back
  and ``_respawn`` starts the next writer.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import AuditError, SequencerStopped
from ._log import AuditLog
from ._payloads import PayloadSealer

__all__ = ["Sequencer", "digest_bodies", "unrecordable"]

log = logging.getLogger("lockgate.audit")

Waiter = Any  # asyncio.Future | concurrent.futures.Future | None


class Sequencer:
    """Writes ``AuditLog`` groups from one thread. ``checkpoint_interval_s`` bounds how long
    records wait for a signed checkpoint; ``prepare`` turns a queued entry into record
    fields on the sequencer's thread (digests of request and response bodies).

    A sync waiter's future that is cancelled (the server withheld the answer: the record was not
    durable within its timeout) makes its record say so: ``withhold`` changes an entry whose
    future is cancelled when the store is locked for it, on the writer's thread; ``follow_up``
    gets, on the waiter's loop, an entry that was written as it was because its future was
    cancelled only while it was being written (it records a record of its own). No callback per
    request: the writer looks at its group's futures once, and the loop at what it resolves."""

    def __init__(
        self,
        audit_log: AuditLog,
        *,
        mode: str = "sync",
        buffer: int = 10_000,
        max_group: int = 1024,
        checkpoint_interval_s: float = 10.0,
        linger_s: float = 0.0,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        observe: Callable[[Sequencer, int, float, bool], None] | None = None,
        withhold: Callable[[dict[str, Any]], None] | None = None,
        follow_up: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.log = audit_log
        self.mode = mode
        self.buffer = buffer
        self.max_group = max_group
        self.checkpoint_interval_s = checkpoint_interval_s
        self.linger_s = linger_s
        self._checkpoint_checked = time.monotonic()
        self.prepare = prepare or (lambda entry: entry)
        # After each write attempt, on the writer's thread: (self, records written, lag in s of
        # the group's oldest record, failed); metrics only, an exception is logged and ignored.
        self.observe = observe
        self.withhold = withhold
        self.follow_up = follow_up
        self._queue: collections.deque[tuple[dict[str, Any], Waiter]] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stop = False
        self.written = 0
        self.inline = 0  # records committed on the caller's loop (``record(now=True)``)
        self.dropped = 0
        self.failed_writes = 0
        self.replaced = 0  # records that could not be stored, each replaced by one saying so
        self.groups = 0
        self.deaths = 0  # writer threads that died (killed, or a bug); each starts the next one
        self._streak = 0  # deaths since the last written group
        self.last_error: str | None = None
        self._group: list[tuple[dict[str, Any], Waiter]] = []  # what the writer holds: not lost if it dies
        self._sealed = False  # the store is locked for the writer's group: its entries are final
        self._seqs: list[int] | None = None  # set once that group is written
        self._withheld: set[int] = set()  # ids of the group's entries changed by ``withhold``

    # -- producers ---------------------------------------------------------------------------

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._ready:
            if self.alive():
                return
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="lockgate-audit-sequencer", daemon=True)
            self._thread.start()

    def submit(self, entry: dict[str, Any], waiter: Waiter = None, *, droppable: bool = True) -> bool:
        """Queue ``entry``; False when the buffer is full and nothing waits for it (it is
        dropped and counted; ``droppable=False`` queues it anyway)."""
        if not self.alive():
            if self._stop:
                raise SequencerStopped("the audit sequencer is stopped")
            self.start()
        with self._ready:
            if waiter is None and droppable and len(self._queue) >= self.buffer:
                self.dropped += 1
                return False
            self._queue.append((entry, waiter))
            # Wake the writer for the first entry of a group, or a full group: one wake-up per
            # group, not per record (each costs the event loop a GIL hand-over).
            if len(self._queue) == 1 or len(self._queue) >= self.max_group:
                self._ready.notify()
        return True

    def record(self, entry: dict[str, Any], *, now: bool = False) -> asyncio.Future:
        """Queue ``entry``; a future of the running loop that completes when it is durable (sync
        mode). A future, not a coroutine: awaiting it costs no task.

        ``now``: the caller's loop has nothing else to do (a replica serving one request), so
        when nothing is queued or being written the record is committed here, on the loop, and
        the future is done on return: no wake-up of the writer thread, none of the loop after
        the commit. Whatever keeps it from being written here at once (the writer is busy,
        another process holds the lock, the write fails) sends it to the writer thread."""
        future = asyncio.get_running_loop().create_future()
        if now and not self._queue and not self._group and self.alive():
            seqs = self.log.append_now([self.prepare(entry)])
            if seqs:
                self.written += 1
                self.inline += 1
                self._observe(1, [(entry, None)], failed=False)
                future.set_result(seqs[0])
                return future
        self.submit(entry, future)
        return future

    def record_blocking(self, entry: dict[str, Any], timeout: float = 30.0) -> int:
        """Queue ``entry`` and block until it is durable; its seq."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.submit(entry, future)
        return future.result(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (True) or ``timeout`` passes."""
        if not self.alive():
            return not self._queue
        return self.record_blocking({"__flush__": True}, timeout) is not None

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        if self.alive():
            try:
                self.flush(timeout)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        with self._ready:
            self._stop = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        try:  # sign the tail, so that cutting it is detected
            self.log.checkpoint()
        except Exception as e:  # noqa: BLE001
            log.warning("final audit checkpoint failed: %s", e)

    # -- the writer thread -------------------------------------------------------------------

    def _take(self, group: list[tuple[dict[str, Any], Waiter]], wait: bool = True) -> None:
        """Move the next group from the queue into ``group`` (the writer's ``_group``, so that
        a writer killed here loses nothing)."""
        with self._ready:
            if wait and not self._queue and not self._stop:
                self._ready.wait(self.checkpoint_interval_s)
            if self.linger_s and self._queue and not self._stop:
                # async mode: gather for up to linger_s, so a trickle of requests costs one
                # write per interval rather than one per request.
                deadline = time.monotonic() + self.linger_s
                while len(self._queue) < self.max_group and not self._stop and (left := deadline - time.monotonic()) > 0:
                    self._ready.wait(left)
            while self._queue and len(group) < self.max_group:
                group.append(self._queue.popleft())

    def _run(self, delay: float = 0.0) -> None:
        try:
            if delay:
                time.sleep(delay)
            self._loop()
        except BaseException as e:  # noqa: BLE001 - the thread is being killed, or a bug: its group is not lost
            self._abandon(e)
            self._respawn()  # and this thread ends here

    def _respawn(self) -> None:
        """Start the next writer from the dying one, later each time in a row (a writer that
        keeps dying must not spin); a written group resets the count."""
        self._streak += 1
        with self._ready:
            if self._stop:
                return
            delay = min(0.01 * 2 ** min(self._streak - 1, 10), 2.0)
            self._thread = threading.Thread(target=self._run, args=(delay,), name="lockgate-audit-sequencer", daemon=True)
            self._thread.start()

    def _abandon(self, error: BaseException) -> None:
        """The writer dies holding ``self._group``: its waiters learn the outcome at once (the
        records' seqs when they were written, an error when not) and its unwritten async
        entries go back to the head of the queue for the next writer (``_respawn``)."""
        group, seqs, self._group = self._group, self._seqs, []
        self.deaths += 1
        self.last_error = f"the audit writer stopped: {type(error).__name__}: {error}"
        log.error("%s; %d records in hand go back to the queue or fail their waiters", self.last_error, len(group))
        try:
            real = [(e, w) for e, w in group if "__flush__" not in e]
            if seqs is not None:
                _settle([(w, s, self._late(e)) for (e, w), s in zip(real, seqs) if w is not None], None)
                return
            _settle([(w, None, None) for _, w in group if w is not None], SequencerStopped(self.last_error))
            with self._ready:
                self._queue.extendleft(reversed([(e, None) for e, w in real if w is None]))
        except BaseException:  # noqa: BLE001 - dying anyway; what is left stays where it is
            pass

    def _loop(self) -> None:
        retry: list[tuple[dict[str, Any], Waiter]] = []
        backoff = 0.01
        while True:
            self._seqs = None
            self._sealed = False
            self._withheld = set()
            self._group = group = retry
            self._take(group, wait=not retry)
            retry = []
            if not group:
                if self._stop:
                    return
                self._checkpoint()
                continue
            flushes = [(e, w) for e, w in group if "__flush__" in e]
            real = [(e, w) for e, w in group if "__flush__" not in e]
            try:
                seqs = self._seqs = self.log.append([self.prepare(e) for e, _ in real], self._seal) if real else []
                error: Exception | None = None
            except Exception as e:  # noqa: BLE001 - a record or the store failed: one at a time tells which
                error = e
                seqs = self._seqs = self._one_by_one(real)
            written, unwritten = real[: len(seqs)], real[len(seqs) :]
            self.written += len(seqs)
            _settle(
                [(w, s, self._late(e)) for (e, w), s in zip(written, seqs) if w is not None] + [(w, 0, None) for _, w in flushes],
                None,
            )
            if unwritten:  # the store failed: sync waiters fail, async entries wait for the next try
                assert error is not None
                self.failed_writes += 1
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("audit write of %d records failed: %s", len(unwritten), self.last_error)
                _settle([(w, None, None) for _, w in unwritten if w is not None], error)
                retry = [(e_, w) for e_, w in unwritten if w is None]
                if len(retry) > self.buffer:
                    self.dropped += len(retry) - self.buffer
                    retry = retry[: self.buffer]
                self._group = retry  # the sync waiters have their answer; the async entries wait
                self._observe(len(seqs), real, failed=True)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.01
            self._streak = 0
            self.groups += 1
            self._group = []
            self._observe(len(seqs), real, failed=False)
            self._checkpoint()

    def _one_by_one(self, group: list[tuple[dict[str, Any], Waiter]]) -> list[int]:
        """Write a group that failed as a whole one record at a time, so that one record that
        cannot be stored (text no database or hash takes) can never stall or poison the chain:
        such a record is replaced by one saying so, with what can be kept of it. Returns the
        seqs of the records written, in order; it stops at the first record whose replacement
        fails too, for then the store itself is failing."""
        seqs: list[int] = []
        for entry, _ in group:
            try:
                seqs += self.log.append([self.prepare(entry)], self._seal)
                continue
            except Exception as e:  # noqa: BLE001 - this record, or the store: its replacement tells
                problem = e
            try:
                seqs += self.log.append([unrecordable(entry, problem)])
            except Exception:  # noqa: BLE001 - the store fails, not the record: the caller retries
                return seqs
            self.replaced += 1
            log.error("an audit record could not be stored (%s); a record saying so stands in its place", type(problem).__name__)
        return seqs

    def _seal(self) -> None:
        """The store is locked for the writer's group: from now on it is written as it is. An
        entry whose future was cancelled by now is changed by ``withhold`` first."""
        if self.withhold is not None:
            for entry, waiter in self._group:
                if isinstance(waiter, asyncio.Future) and waiter.cancelled() and id(entry) not in self._withheld:
                    self.withhold(entry)
                    self._withheld.add(id(entry))
        with self._ready:
            self._sealed = True

    def _late(self, entry: dict[str, Any]) -> _FollowUp | None:
        """What the loop calls when it finds ``entry``'s future cancelled as it resolves it (the
        answer was withheld while the record was being written): None when nothing is to be
        recorded then (no ``follow_up``, or the record already says so)."""
        if self.follow_up is None or id(entry) in self._withheld:
            return None
        return (self.follow_up, entry)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _observe(self, written: int, group: list[tuple[dict[str, Any], Waiter]], *, failed: bool) -> None:
        if self.observe is None:
            return
        try:
            lag = max(0.0, time.time() - float(group[0][0].get("at", time.time()))) if group else 0.0
            self.observe(self, written, lag, failed)
        except Exception as e:  # noqa: BLE001 - metrics never stop the writer
            log.warning("audit metrics failed: %s", e)

    def _checkpoint(self) -> None:
        # Cheap when not due: the time bound is checked here, not with a transaction per group.
        now = time.monotonic()
        if now - self._checkpoint_checked < self.checkpoint_interval_s:
            return
        self._checkpoint_checked = now
        try:
            self.log.checkpoint(older_than_s=self.checkpoint_interval_s)
        except Exception as e:  # noqa: BLE001 - the next write or tick tries again
            log.warning("audit checkpoint failed: %s", e)


_FollowUp = tuple[Callable[[dict[str, Any]], None], dict[str, Any]]


def _settle(waiters: list[tuple[Waiter, Any, _FollowUp | None]], error: BaseException | None) -> None:
    """Resolve futures: concurrent ones directly, asyncio ones with one call per loop. Each
    waiter comes with what to call, with its entry, if its future turns out to be cancelled."""
    by_loop: dict[Any, list[tuple[asyncio.Future, Any, _FollowUp | None]]] = {}
    for waiter, value, late in waiters:
        if isinstance(waiter, concurrent.futures.Future):
            if waiter.done():  # settled by a writer that died after settling it
                continue
            if error is None:
                waiter.set_result(value)
            else:
                waiter.set_exception(error)
        else:
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, value, late))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items, error)
        except RuntimeError:  # the loop closed: nobody waits any more
            pass


def _resolve(items: list[tuple[asyncio.Future, Any, _FollowUp | None]], error: BaseException | None) -> None:
    for future, value, late in items:
        if future.done():
            if late is not None and future.cancelled():  # withheld while its record was being written
                try:
                    late[0](late[1])
                except Exception as e:  # noqa: BLE001 - the other futures are still resolved
                    log.error("recording a withheld answer failed: %s", e)
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(AuditError(f"audit write failed: {type(error).__name__}: {error}"))


def unrecordable(entry: dict[str, Any], error: BaseException) -> dict[str, Any]:
    """The record that stands in for ``entry`` when it cannot be stored: its time, kind, model,
    version, status and a digest of its request id, and why (the error's type; its message may
    hold the very text that could not be stored)."""
    detail = entry.get("detail") or {}
    request_id = entry.get("request_id")
    kept: dict[str, Any] = {"reason": f"the record could not be stored: {type(error).__name__}"}
    if isinstance(entry.get("kind"), str) and _storable(entry["kind"]):
        kept["kind"] = entry["kind"]
    if type(detail.get("status")) is int:
        kept["status"] = detail["status"]
    if isinstance(request_id, str):
        kept["request_id_sha256"] = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()
    record: dict[str, Any] = {
        "at": float(entry.get("at") or time.time()),
        "kind": "unrecordable",
        "actor": "lockgate",
        "detail": kept,
    }
    if isinstance(entry.get("model"), str) and _storable(entry["model"]):
        record["model"] = entry["model"]
    if type(entry.get("version")) is int:
        record["version"] = entry["version"]
    return record


def _storable(text: str) -> bool:
    """Text every store and the hash take: UTF-8 (no lone surrogate), no NUL, not too long."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text and len(text) <= 256


def digest_bodies(entry: dict[str, Any], sealer: PayloadSealer | None = None) -> dict[str, Any]:
    """Replace request and response bytes by their sha256 and size, and, with a ``sealer``
    (``audit.payloads``), by the bodies themselves sealed at rest (``input_sealed``,
    ``output_sealed``, ``payload_key``: lockgate.plugins.audit._payloads)."""
    detail = entry.get("detail")
    if not detail:
        return entry
    for key in ("input", "output"):
        raw = detail.pop(f"{key}_bytes", None)
        if raw is None:
            continue
        detail[f"{key}_sha256"] = hashlib.sha256(raw).hexdigest()
        detail[f"{key}_size"] = len(raw)
        if sealer is not None:
            detail[f"{key}_sealed"] = sealer.seal(raw, str(entry.get("request_id") or ""), key)
            detail["payload_key"] = sealer.key_id
    return entry
