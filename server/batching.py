"""Dynamic batching for one model version.

A lone request never waits for a timer: when the model is idle the queue is
dispatched at once; requests that arrive while a batch runs queue up and form the
next batch. Only requests whose non-batch shapes agree share a batch. The queue is
bounded (503 with Retry-After when full) and a request whose deadline passed
before compute is answered with a timeout and never runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from ._errors import DeadlineExceeded, Unavailable
from .config import DynamicBatchingConfig

__all__ = ["Batcher"]

@dataclass(slots=True)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple
    future: asyncio.Future
    deadline: float  # time.monotonic(); 0 for none
    enqueued: float = field(default_factory=time.monotonic)


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
        on_batch: Callable[[int, int, float, float], None] | None = None,
    ) -> None:
        self._run = run
        self._output_names = output_names
        self._max_rows = max(max_batch_size, 1)
        self._batching = max_batch_size > 0
        self._config = config
        self._preferred = sorted(s for s in config.preferred_batch_sizes if s <= self._max_rows)
        self._executor = executor
        self._on_batch = on_batch  # (rows, requests, oldest queue wait s, compute s), after each batch
        self._queue: deque[_Pending] = deque()
        self._busy = False
        self._arrived = asyncio.Event()
        self.batches = 0
        self.requests = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: dict[str, np.ndarray], rows: int, timeout_us: int | None = None) -> dict[str, np.ndarray]:
        """Run ``inputs`` (``rows`` rows) in some batch; returns every output, cut to this request's rows."""
        if len(self._queue) >= self._config.max_queue_size:
            raise Unavailable(
                f"the model's queue is full ({self._config.max_queue_size} requests waiting); retry shortly",
                headers={"retry-after": "1"},
            )
        timeout = self._config.default_timeout_us if timeout_us is None else timeout_us
        deadline = time.monotonic() + timeout / 1e6 if timeout > 0 else 0.0
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()) if self._batching else ()
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, rows, key, loop.create_future(), deadline)
        self._queue.append(pending)
        self._arrived.set()
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await pending.future

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
                    DeadlineExceeded(f"the request's deadline passed after {1e3 * (now - p.enqueued):.1f} ms in the queue; it was not run")
                )
                continue
            if not batch or (self._batching and p.key == batch[0].key and rows + p.rows <= self._max_rows):
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

    async def _execute(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        if len(batch) == 1:
            feeds = batch[0].inputs
        else:
            feeds = {n: np.concatenate([p.inputs[n] for p in batch]) for n in batch[0].inputs}
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, self._run, feeds)
        except Exception as e:  # a model that fails on valid input: every waiter learns why
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        self.batches += 1
        self.requests += len(batch)
        if self._on_batch is not None:
            rows = sum(p.rows for p in batch)
            self._on_batch(rows, len(batch), started - batch[0].enqueued, time.monotonic() - started)
        start = 0
        for p in batch:
            if len(batch) == 1:
                out = dict(zip(self._output_names, results))
            else:
                out = {n: r[start : start + p.rows] for n, r in zip(self._output_names, results)}
            start += p.rows
            if not p.future.done():
                p.future.set_result(out)
