"""Dynamic batching for one model version.

A lone request never waits for a timer: when the model is idle the queue is
dispatched at once; requests that arrive while a batch runs queue up and form the
next batch. Only requests whose non-batch shapes agree share a batch. The queue is
bounded (503 with Retry-After when full) and a request whose deadline passed
before compute is answered with a timeout and never runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from lockgate.fastpath import DATATYPES, assemble_into

from ..errors import BadRequest, DeadlineExceeded, Unavailable
from .config import DynamicBatchingConfig
from .stats import VersionStats

__all__ = ["Assembler", "Batcher"]

log = logging.getLogger("lockgate.server")


# A padded batch holds at most this many times the elements of the requests in it: a request
# whose length would pad the batch beyond it waits for the next batch. With the buffers' rows
# rounded up to a power of two, a padded input's buffer is at most twice that again.
PADDING_FACTOR = 4


class Assembler:
    """Copies the requests of a batch into preallocated, reused batch buffers, one per input.

    Declared preprocessing (cast, per-channel scale and shift, HWC to CHW) is fused into
    that copy (``lockgate.fastpath.assemble_into``). A lone request whose input needs no
    preprocessing is passed through as it is: no copy. Buffers are allocated once per input
    and row shape, up to ``max_rows`` rows, and reused while batches keep that shape.
    """

    MAX_SHAPES = 8  # row shapes kept per input (dynamic dimensions); older ones are dropped

    def __init__(
        self,
        inputs: list[str],
        preprocess: dict[str, Any],
        max_rows: int,
        batching: bool,
        padding: dict[str, float] | None = None,
    ) -> None:
        self.inputs = inputs
        self.preprocess = preprocess
        self.padding = padding or {}
        self.max_rows = max(max_rows, 1)
        self.batching = batching
        self._buffers: dict[tuple[Any, ...], np.ndarray] = {}
        self.allocations = 0

    def _buffer(self, name: str, inner: tuple[int, ...], dtype: np.dtype, rows: int | None = None) -> np.ndarray:
        """The reused buffer of ``name`` for rows of ``inner``: ``max_rows`` rows, or, when
        ``rows`` is given (padded inputs, whose row shape follows the batch's longest request),
        ``rows`` rounded up to a power of two, so a long request does not cost max_rows of it."""
        capacity = self.max_rows if rows is None else min(self.max_rows, 1 << max(rows - 1, 0).bit_length())
        key = (name, inner, dtype.str, capacity)
        buf = self._buffers.get(key)
        if buf is None:
            if sum(1 for k in self._buffers if k[0] == name) >= self.MAX_SHAPES:
                del self._buffers[next(k for k in self._buffers if k[0] == name)]
            buf = self._buffers[key] = np.empty((capacity, *inner), dtype=dtype)
            self.allocations += 1
        return buf

    def assemble(self, requests: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name in self.inputs:
            pre = self.preprocess.get(name)
            arrays = [r[name] for r in requests]
            if pre is None and len(arrays) == 1:
                feeds[name] = arrays[0]
                continue
            if not self.batching:  # one request, no batch dimension: give it one for the kernel
                arrays = [arrays[0][np.newaxis]]
            first = arrays[0]
            pad = self.padding.get(name)
            if pad is not None and len(arrays) > 1:
                feeds[name] = self._padded(name, arrays, pad)
                continue
            inner = first.shape[1:]
            if pre is not None and pre.hwc_to_chw:
                inner = (inner[-1], *inner[:-1])
            dtype = DATATYPES[pre.model_datatype].dtype if pre is not None else first.dtype
            buf = self._buffer(name, tuple(inner), dtype)
            offset = 0
            for a in arrays:
                if pre is None:
                    buf[offset : offset + a.shape[0]] = a
                else:
                    assemble_into(buf, offset, a, pre.scale, pre.shift, pre.hwc_to_chw)
                offset += a.shape[0]
            feeds[name] = buf[:offset] if self.batching else buf[0]
        return feeds

    def _padded(self, name: str, arrays: list[np.ndarray], pad: float) -> np.ndarray:
        """Requests padded with ``pad`` up to the batch's largest size in every non-batch dimension."""
        inner = tuple(max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim))
        rows = sum(a.shape[0] for a in arrays)
        buf = self._buffer(name, inner, arrays[0].dtype, rows)[:rows]
        buf.fill(pad)
        offset = 0
        for a in arrays:
            region = (slice(offset, offset + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))
            buf[region] = a
            offset += a.shape[0]
        return buf


class _Pending:
    """One queued request. A plain slotted class: it is made once per request."""

    __slots__ = ("deadline", "enqueued", "future", "inputs", "key", "priority", "rows", "timing")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        key: tuple[Any, ...],
        future: asyncio.Future[dict[str, np.ndarray]],
        deadline: float,
        now: float,
        priority: int = 0,
        timing: list[int] | None = None,
    ) -> None:
        self.timing = timing  # filled with (queue ns, batch input ns, batch infer ns) when it ran
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.future = future
        self.deadline = deadline  # time.monotonic(); 0 for none
        self.enqueued = now
        self.priority = priority  # 1 is served first (Triton's levels); 0 when the model has none


class Batcher:
    """Queues requests for ``run`` (a blocking call, run on ``executor``) and batches them.

    ``max_batch_size`` 0 means the model takes no batch dimension: each request runs alone.
    """

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
        output_names: list[str],
        max_batch_size: int,
        config: DynamicBatchingConfig,
        executor: Executor,
        on_batch: Callable[[int, int, float, float, int, dict[str, np.ndarray], list[np.ndarray]], None] | None = None,
        assembler: Assembler | None = None,
        dynamic_dims: dict[str, tuple[bool, ...]] | None = None,
        stats: VersionStats | None = None,
        cpu_timed: bool = False,
    ) -> None:
        self._run = run
        # The inline choice weighs a batch by the running thread's CPU time when ``run`` does all
        # its work on that thread (onnxruntime's CPU provider, one thread per operator), else by
        # wall time (a device or a thread pool computes while the caller waits).
        self._cpu_timed = cpu_timed
        self._output_names = output_names
        self._max_rows = max(max_batch_size, 1)
        self._batching = max_batch_size > 0
        self._config = config
        self._preferred = sorted(s for s in config.preferred_batch_sizes if s <= self._max_rows)
        self._executor = executor
        # (rows, requests, oldest queue wait s, compute s, still queued, feeds, outputs), after each batch
        self._on_batch = on_batch
        self._feeds: dict[str, np.ndarray] = {}
        self._last_compute = 0.0
        self._last_cpu = 0.0
        self._last_assembly = 0.0
        self._stats = stats  # Triton's statistics (lockgate.server.serving.stats)
        self._assembler = assembler
        # Padded inputs: which non-batch dimensions may differ inside one batch.
        self._padded = {n: m for n, m in (dynamic_dims or {}).items() if n in config.padding}
        self._first_padded = next((n for n in (dynamic_dims or {}) if n in config.padding), None)
        self._cut = set(config.padded_outputs)
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._arrived = asyncio.Event()
        self._delay = config.max_queue_delay_us > 0 and max_batch_size > 0
        self._inline_s = config.inline_compute_us / 1e6
        self._compute_s = float("inf")  # moving average of a batch's cost (above); unknown at first
        self.batches = 0
        self.requests = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def check_room(self) -> None:
        """Unavailable (503, Retry-After) when the queue is full: called before a request is
        decoded too, so that shedding load costs no decode."""
        if len(self._queue) >= self._config.max_queue_size:
            raise Unavailable(
                f"the model's queue is full ({self._config.max_queue_size} requests waiting); retry shortly",
                headers={"retry-after": "1"},
            )

    def priority(self, requested: int | None) -> int:
        """The queue level of a request that asked for ``requested`` (Triton's ``priority``
        parameter: 1 is served first, 0 or none the model's default level)."""
        levels = self._config.priority_levels
        if requested is None or requested == 0:
            return self._config.default_priority_level or levels
        if requested > levels:
            raise BadRequest(
                f"parameter 'priority' must be 0 (the default level) or 1 to {levels}, got {requested}"
                if levels
                else f"parameter 'priority' {requested}: this model declares no priority levels (dynamic_batching.priority_levels)"
            )
        return requested

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        timeout_us: int | None = None,
        priority: int | None = None,
        timing: list[int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` (``rows`` rows) in some batch; returns every output, cut to this request's rows.
        ``priority``: Triton's level (1 first); the queue stays ordered by level, then arrival.
        ``timing``: a list to receive the request's queue wait and its batch's compute times (ns)."""
        self.check_room()
        level = self.priority(priority) if priority is not None or self._config.priority_levels else 0
        now = time.monotonic()
        timeout = self._config.default_timeout_us if timeout_us is None else timeout_us
        deadline = now + timeout / 1e6 if timeout > 0 else 0.0
        if not self._batching:
            key: tuple[Any, ...] = ()
        elif self._padded:
            key = tuple([(n, a.dtype.char, self._shape_key(n, a)) for n, a in inputs.items()])
        else:
            key = tuple([(n, a.dtype.char, a.shape[1:]) for n, a in inputs.items()])
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, rows, key, loop.create_future(), deadline, now, level, timing)
        queue = self._queue
        if level and queue and queue[-1].priority > level:
            at = len(queue)
            while at and queue[at - 1].priority > level:
                at -= 1
            queue.insert(at, pending)
        else:
            queue.append(pending)
        if self._delay:  # only a waiting drain loop listens for arrivals
            self._arrived.set()
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await pending.future

    def _shape_key(self, name: str, array: np.ndarray) -> tuple[Any, ...]:
        mask = self._padded.get(name)
        if mask is None or len(mask) != array.ndim - 1:
            return array.shape[1:]
        return tuple(-1 if dyn else d for dyn, d in zip(mask, array.shape[1:]))

    def _take(self) -> list[_Pending]:
        """The next batch: the oldest request and those behind it that fit and share its shapes."""
        now = time.monotonic()
        batch: list[_Pending] = []
        rows = 0
        kept: deque[_Pending] = deque()
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():  # the client went away
                continue
            if p.deadline and now > p.deadline:
                p.future.set_exception(
                    DeadlineExceeded(
                        f"the request's deadline passed after {1e3 * (now - p.enqueued):.1f} ms in the queue; it was not run"
                    )
                )
                continue
            fits = self._batching and p.key == batch[0].key and rows + p.rows <= self._max_rows if batch else True
            if fits and batch and self._padded:
                padded, own = self._padded_size(batch, p)
                fits = padded <= PADDING_FACTOR * own
            if fits:
                batch.append(p)
                rows += p.rows
                if not self._batching or rows == self._max_rows:
                    break
            else:
                kept.append(p)
                if len(kept) > 64:  # do not scan a long queue of other shapes
                    break
        if self._preferred and len(batch) > 1 and rows not in self._preferred:
            fit = [s for s in self._preferred if s <= rows]
            if fit:
                target, total, cut = fit[-1], 0, len(batch)
                for i, p in enumerate(batch):
                    if total + p.rows > target:
                        cut = i
                        break
                    total += p.rows
                if 0 < cut < len(batch):
                    kept.extendleft(reversed(batch[cut:]))
                    batch = batch[:cut]
        self._queue.extendleft(reversed(kept))
        return batch

    def _padded_size(self, batch: list[_Pending], p: _Pending) -> tuple[int, int]:
        """Elements of the padded inputs if ``p`` joined ``batch``: padded, and the requests' own."""
        padded = own = 0
        members = [*batch, p]
        rows = sum(m.rows for m in members)
        for name in self._padded:
            arrays = [m.inputs[name] for m in members]
            inner = [max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim)]
            padded += rows * math.prod(inner)
            own += sum(a.size for a in arrays)
        return padded, own

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._config.max_queue_delay_us / 1e6
        try:
            while self._queue:
                if delay and self._batching and self._queued_rows() < self._max_rows:
                    # Idle with a partial batch: wait up to the delay for more to arrive.
                    end = loop.time() + delay
                    while self._queued_rows() < self._max_rows and (left := end - loop.time()) > 0:
                        self._arrived.clear()
                        try:
                            await asyncio.wait_for(self._arrived.wait(), left)
                        except TimeoutError:
                            break
                batch = self._take()
                if not batch:
                    continue
                await self._execute(batch, loop)
        finally:
            self._busy = False
            if self._queue:  # arrivals after the loop test
                self._busy = True
                loop.create_task(self._drain())

    def _queued_rows(self) -> int:
        return sum(p.rows for p in self._queue)

    def _run_batch(self, batch: list[_Pending]) -> list[np.ndarray]:
        """On the executor's thread (or inline): assemble the batch, then run the model. Its own
        time is kept in ``_last_compute`` (wall, for the statistics) and ``_last_cpu`` (the
        running thread's CPU time, for the inline choice when ``cpu_timed``). Measured around
        the event loop's await it would count the thread hand-off and whatever else the loop
        ran. Wall time also counts the wait for the interpreter lock after onnxruntime lets it
        go, which another busy thread of the replica (the audit writer, binding and committing a
        group) stretches: it sent cheap batches to the worker just when the process was busiest."""
        t0 = time.monotonic()
        c0 = time.thread_time() if self._cpu_timed else 0.0
        try:
            if self._assembler is not None:
                feeds = self._assembler.assemble([p.inputs for p in batch])
            elif len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {n: np.concatenate([p.inputs[n] for p in batch]) for n in batch[0].inputs}
            self._feeds = feeds
            self._last_assembly = time.monotonic() - t0
            return self._run(feeds)
        finally:
            self._last_compute = time.monotonic() - t0
            if self._cpu_timed:
                self._last_cpu = time.thread_time() - c0

    async def _execute(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        started = time.monotonic()
        try:
            if self._compute_s < self._inline_s:
                # Cheaper than waking the worker thread (about 100 us here): run it right here,
                # then let the loop take new requests before the next batch.
                results = self._run_batch(batch)
                await asyncio.sleep(0)
            else:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
        except Exception as e:  # noqa: BLE001 - a model that fails on valid input: every waiter learns why
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        self._book(batch, started, results)
        self._answer(batch, results)

    def _book(self, batch: list[_Pending], started: float, results: list[np.ndarray]) -> None:
        """After a batch ran: its compute time, statistics and observers."""
        compute = self._last_compute
        cost = self._last_cpu if self._cpu_timed else compute
        self._compute_s = cost if self._compute_s == float("inf") else 0.8 * self._compute_s + 0.2 * cost
        self.batches += 1
        self.requests += len(batch)
        rows = sum(p.rows for p in batch)
        if self._stats is not None:
            input_ns, infer_ns = int(self._last_assembly * 1e9), int((compute - self._last_assembly) * 1e9)
            self._stats.batch(rows, input_ns, infer_ns)
            for p in batch:
                if p.timing is not None:  # booked with the request's answer (VersionStats.answered)
                    p.timing[:3] = (int((started - p.enqueued) * 1e9), input_ns, infer_ns)
        if self._on_batch is not None:
            try:
                self._on_batch(rows, len(batch), started - batch[0].enqueued, compute, len(self._queue), self._feeds, results)
            except Exception:
                log.exception("batch observer failed")

    def _answer(self, batch: list[_Pending], results: list[np.ndarray]) -> None:
        """Each waiter gets its own rows of every output."""
        if len(batch) == 1:
            p = batch[0]
            if not p.future.done():
                p.future.set_result(dict(zip(self._output_names, results)))
            return
        names = self._output_names
        first_padded = self._first_padded
        cut = self._cut if first_padded is not None else ()
        start = 0
        for p in batch:
            end = start + p.rows
            if not p.future.done():
                out = {n: r[start:end] for n, r in zip(names, results)}
                if cut and first_padded is not None:  # back to this request's own sizes
                    own = p.inputs[first_padded].shape[1:]
                    for n in cut:
                        r = out[n]
                        own_region = (slice(None), *(slice(0, d) for d in own[: r.ndim - 1]))
                        out[n] = r[own_region]
                p.future.set_result(out)
            start = end
