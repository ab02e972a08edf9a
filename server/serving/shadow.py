"""Shadow runs: production's traffic copied to a pending version, compared, never answered.

``lockgate models shadow mlp 3 --share 0.2`` starts a run in the registry. Each model replica
follows it (``ModelService.refresh``): a sampled request to the default alias that production
answered 200 is copied, after its answer was sent, into a ``ShadowTap``, a bounded queue a task
drains in batches to the shadow's own replica (a Serve application of its own, built by the
control replica). A full queue drops the copy and counts it; nothing a copy does can hold or fail
the request it came from. The shadow replica runs each copy through the shadow version's own
batcher (``ShadowComparer``) and compares its outputs with the ones production answered:
predicted class, absolute differences per output, model time of each side, failures. The
comparisons are summed per window of time and per production version and kept in the registry,
where ``lockgate models evidence`` and the approvers read them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lockgate.plugins.shared import parse_section

from ..errors import RequestError
from .protocol import parse_off_loop

__all__ = [
    "Copy",
    "ShadowComparer",
    "ShadowOptions",
    "ShadowTap",
    "Tally",
    "Window",
    "compare_outputs",
    "predicted_class",
    "shadow_options",
]

log = logging.getLogger("lockgate.server")


class ShadowOptions(BaseModel):
    """The ``shadow`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: float = Field(60.0, gt=0, description="Comparisons are summed and kept per window of this many seconds.")
    max_queue: int = Field(
        1024, ge=1, description="Copies a production replica holds for its shadow at most; more are dropped and counted."
    )
    max_queue_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes those copies hold at most (requests and production's outputs); more are dropped and counted.",
    )
    batch: int = Field(64, ge=1, description="Copies sent to the shadow replica in one call at most.")
    linger_s: float = Field(
        0.2,
        ge=0,
        description="A production replica waits this long for a batch to fill before it sends fewer copies: "
        "fewer, larger calls to the shadow's replica.",
    )


def shadow_options(options: Mapping[str, Any]) -> ShadowOptions:
    """The ``shadow`` section of the server configuration; ConfigError says what is wrong."""
    return parse_section(options, "shadow", ShadowOptions)


class Copy(NamedTuple):
    """One request production answered, as its shadow gets it."""

    body: bytes
    header_length: int | None  # Inference-Header-Content-Length (binary tensors), None: all JSON
    baseline: int  # the production version that answered
    outputs: dict[str, np.ndarray]  # every output production computed for it
    baseline_ns: int  # production's model time: queue wait and batch compute


# -- production's side ----------------------------------------------------------------------------


def _size(copy: Copy) -> int:
    """The bytes a queued copy holds: its request, and the outputs production computed."""
    return len(copy.body) + sum(a.nbytes for a in copy.outputs.values())


Send = Callable[[int, list[Copy], int], Awaitable[None]]
# Told of copies a production replica let go that its shadow will never hear of: (the shadow's
# version, how many). The hosting counts them (lockgate_shadow_unreported_copies_total).
Unreported = Callable[[int, int], None]


class ShadowTap:
    """A production replica's copies for the shadow of ``version``: ``wants`` samples a request,
    ``offer`` queues its copy (or drops it, counted), a task sends them in batches through ``send``
    (version, copies, dropped since the last call). Copies that could not be sent count as dropped;
    those the shadow is never told of (its run ended, or the replica stopped, with them queued or
    dropped since the last call) go to ``unreported``."""

    def __init__(
        self,
        version: int,
        share: float,
        until: float | None,
        send: Send,
        options: ShadowOptions,
        unreported: Unreported | None = None,
    ) -> None:
        self.version, self.share, self.until = version, share, until
        self._send = send
        self._unreported = unreported
        self._options = options
        self._queue: deque[tuple[Copy, int]] = deque()  # each copy with its size, counted once
        self._bytes = 0
        self.dropped = 0  # not yet reported to the shadow
        self.dropped_total = 0
        self.sent_total = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._ending = False  # the run ended or moved on: send what is queued, once, then stop

    def same(self, version: int, share: float, until: float | None) -> bool:
        return (self.version, self.share, self.until) == (version, share, until)

    def wants(self) -> bool:
        """Sample one request of production's: ``share`` of them, while the run lasts."""
        return random.random() < self.share and (self.until is None or time.time() < self.until)

    def offer(self, copy: Copy) -> None:
        """Queue a copy for the shadow, after production's answer was sent; never waits."""
        size = _size(copy)
        if self._ending or len(self._queue) >= self._options.max_queue or self._bytes + size > self._options.max_queue_bytes:
            self.dropped += 1
            self.dropped_total += 1
            return
        self._queue.append((copy, size))
        self._bytes += size
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    def take_over(self, old: ShadowTap) -> None:
        """The run changed its share or end, not its version: this tap sends what ``old`` still
        holds (and the drops it has not reported yet); ``old``, empty, ends once a send it has
        in flight is done."""
        self._queue.extend(old._queue)
        self._bytes += old._bytes
        self.dropped += old.dropped
        old._queue.clear()
        old._bytes = old.dropped = 0
        old.end()
        if self._queue or self.dropped:
            self._start()

    def end(self) -> None:
        """The run ended or moved to another version: no more copies; what is queued is sent to
        this version's shadow in one last pass, its drops reported with it. Copies that pass does
        not get through count as dropped; it is not tried again (the shadow may be going away)."""
        self._ending = True
        if self._task is None or self._task.done():
            self._let_go()
            return
        self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self._options.batch and self._options.linger_s and not self._ending:
                await asyncio.sleep(self._options.linger_s)
            while self._queue or (self._ending and self.dropped):
                taken = [self._queue.popleft() for _ in range(min(len(self._queue), self._options.batch))]
                self._bytes -= sum(size for _, size in taken)
                batch = [copy for copy, _ in taken]
                dropped, self.dropped = self.dropped, 0
                try:
                    await self._send(self.version, batch, dropped)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - the shadow is starting, gone or failing: counted, production goes on
                    self.dropped += dropped + len(batch)
                    self.dropped_total += len(batch)
                    if not self._failing:
                        log.warning("shadow of version %s not reached, copies dropped: %s", self.version, e)
                        self._failing = True
                    if self._ending:
                        break
                    await asyncio.sleep(1.0)
                    continue
                self.sent_total += len(batch)
                self._failing = False
            if self._ending:
                self._let_go()
                return

    def _let_go(self) -> None:
        """Copies that will not be sent: counted as dropped, and those the shadow never heard of
        (queued, or dropped since its last call) said in the log, for nobody will report them."""
        unreported = len(self._queue) + self.dropped
        self.dropped_total += len(self._queue)
        self._queue.clear()
        self._bytes = 0
        self.dropped = 0
        if unreported:
            log.info("shadow of version %s: %d copies dropped that it was not told of (its run ended)", self.version, unreported)
            if self._unreported is not None:
                try:
                    self._unreported(self.version, unreported)
                except Exception as e:  # noqa: BLE001 - a metric never stops the replica
                    log.warning("counting unreported shadow copies failed: %s", e)

    def close(self) -> None:
        """Stop at once (the replica stops): what is queued is let go, counted as dropped."""
        self._ending = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._let_go()


# -- the comparison -------------------------------------------------------------------------------


def predicted_class(output: np.ndarray, rows: int) -> np.ndarray | None:
    """Each row's predicted class in one output, or None when the output has none: an integer
    or string label per row, or the largest score along the last axis of scores (more than
    one). Rows with several positions (sequences) as a row of classes."""
    if output.ndim == 0 or output.shape[0] != rows:
        return None
    if output.dtype.kind in "iuUSOb" and (output.ndim == 1 or output.size == rows):
        return output.reshape(rows, 1)
    if output.dtype.kind == "f" and output.ndim >= 2 and output.shape[-1] > 1:
        classes: np.ndarray = np.argmax(output, axis=-1).reshape(rows, -1)
        return classes
    return None


def compare_outputs(
    baseline: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray], rows: int
) -> tuple[dict[str, tuple[float, float, int]], int, int, str | None]:
    """Production's outputs against the shadow's for one request of ``rows`` rows: per numeric
    output (max |diff|, sum |diff|, elements); rows classified on both sides and rows whose
    class agrees (the first output, in production's order, that has a class); and what makes
    the answers incomparable (a missing output, another shape), or None."""
    diffs: dict[str, tuple[float, float, int]] = {}
    problem = _incomparable(baseline, shadow)
    if problem is not None:
        return diffs, 0, 0, problem
    classified = agreed = 0
    decided = False
    for name, a in baseline.items():
        b = shadow[name]
        if a.dtype.kind in "iufb" and b.dtype.kind in "iufb":
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            if d.dtype.kind == "f" and np.isnan(d).any():  # NaN on both sides is no difference; on one, the largest
                both = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
                d = np.where(both, 0.0, np.nan_to_num(d, nan=np.inf))
            diffs[name] = (float(d.max()) if d.size else 0.0, float(d.sum()), int(d.size))
        if not decided:
            ca, cb = predicted_class(a, rows), predicted_class(b, rows)
            if ca is not None and cb is not None and ca.shape == cb.shape:
                decided = True
                classified, agreed = rows, int(np.all(ca == cb, axis=1).sum())
    return diffs, classified, agreed, None


class Window:
    """Comparisons of one window against one production version, as a registry keeps them."""

    __slots__ = (
        "agreed",
        "baseline_ms",
        "baseline_ms_max",
        "classified",
        "compared",
        "dropped",
        "errors",
        "last_error",
        "outputs",
        "shadow_ms",
        "shadow_ms_max",
        "start",
    )

    def __init__(self, start: float) -> None:
        self.start = start
        self.compared = self.errors = self.dropped = self.classified = self.agreed = 0
        self.shadow_ms = self.baseline_ms = self.shadow_ms_max = self.baseline_ms_max = 0.0
        self.outputs: dict[str, list[float]] = {}  # name -> [max_abs, sum_abs, elements]
        self.last_error: str | None = None

    def add(
        self,
        diffs: Mapping[str, tuple[float, float, int]],
        classified: int,
        agreed: int,
        shadow_ms: list[float],
        baseline_ms: list[float],
    ) -> None:
        """Copies compared together: their differences and classes summed, each one's model time."""
        self.compared += len(shadow_ms)
        self.classified += classified
        self.agreed += agreed
        self.shadow_ms += sum(shadow_ms)
        self.baseline_ms += sum(baseline_ms)
        self.shadow_ms_max = max(self.shadow_ms_max, *shadow_ms)
        self.baseline_ms_max = max(self.baseline_ms_max, *baseline_ms)
        for name, (most, total, n) in diffs.items():
            seen = self.outputs.setdefault(name, [0.0, 0.0, 0])
            seen[0] = max(seen[0], most)
            seen[1] += total
            seen[2] += n

    def row(self, baseline: int, end: float) -> dict[str, Any]:
        return {
            "baseline": baseline,
            "start": self.start,
            "end": end,
            "compared": self.compared,
            "errors": self.errors,
            "dropped": self.dropped,
            "classified": self.classified,
            "agreed": self.agreed,
            "shadow_ms": self.shadow_ms,
            "baseline_ms": self.baseline_ms,
            "shadow_ms_max": self.shadow_ms_max,
            "baseline_ms_max": self.baseline_ms_max,
            "outputs": {k: {"max_abs": v[0], "sum_abs": v[1], "elements": int(v[2])} for k, v in self.outputs.items()},
            "last_error": self.last_error,
        }


class Tally(NamedTuple):
    """What one call's copies came to against one production version, for the shadow's metrics."""

    baseline: int
    compared: int
    errors: int
    dropped: int
    classified: int
    agreed: int
    shadow_s: list[float]
    baseline_s: list[float]


def _sum_pairs(
    pairs: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int]],
) -> tuple[dict[str, tuple[float, float, int]], int, int]:
    """``compare_outputs`` over many requests' answers at once: their rows stacked, so a batch of
    copies costs a few array operations, not a few per copy. Answers whose outputs cannot be
    stacked (no batch dimension, other inner shapes) are compared one by one and summed."""
    names = list(pairs[0][0])
    rows = sum(r for _, _, r in pairs)
    stackable = all(list(a) == names and all(x.ndim and x.shape[0] == r for x in a.values()) for a, _, r in pairs) and all(
        len({(a[n].shape[1:], a[n].dtype) for a, _, _ in pairs}) == 1 for n in names
    )
    if stackable and len(pairs) > 1:
        base = {n: np.concatenate([a[n] for a, _, _ in pairs]) for n in names}
        shadow = {n: np.concatenate([b[n] for _, b, _ in pairs]) for n in names}
        diffs, classified, agreed, _ = compare_outputs(base, shadow, rows)
        return diffs, classified, agreed
    total: dict[str, tuple[float, float, int]] = {}
    classified = agreed = 0
    for a, b, r in pairs:
        d, c, g, _ = compare_outputs(a, b, r)
        classified, agreed = classified + c, agreed + g
        for name, (most, summed, n) in d.items():
            seen = total.get(name, (0.0, 0.0, 0))
            total[name] = (max(seen[0], most), seen[1] + summed, seen[2] + n)
    return total, classified, agreed


def _incomparable(baseline: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> str | None:
    """Why two answers cannot be compared: an output missing from the shadow's, or in another shape."""
    for name, a in baseline.items():
        b = shadow.get(name)
        if b is None:
            return f"the shadow has no output '{name}'"
        if a.shape != b.shape:
            return f"output '{name}' has shape {list(b.shape)} in the shadow, {list(a.shape)} in production"
    return None


class ShadowComparer:
    """The shadow replica's side: runs copies through the shadow version's batcher, compares
    them with production's answers, and hands each finished window to ``keep`` (off the event
    loop); ``observe`` gets a ``Tally`` per call and production version, for metrics."""

    def __init__(
        self,
        served: Any,
        max_elements: int,
        keep: Callable[[dict[str, Any]], None],
        window_s: float,
        observe: Callable[[Tally], None] | None = None,
    ) -> None:
        self.served = served  # ModelService's Served of the shadow version
        self.version = served.model.version
        self.max_elements = max_elements
        self.keep = keep
        self.window_s = window_s
        self.observe = observe
        self.windows: dict[int, Window] = {}
        self.started = time.time()

    async def compare(self, copies: list[Copy], dropped: int) -> None:
        """Compare a batch of copies: run concurrently (so the shadow batches them too), then
        compared together per production version."""
        now = time.time()
        answers = await asyncio.gather(*(self._run(c) for c in copies))
        groups: dict[int, list[tuple[Copy, Any]]] = {}
        for copy, answer in zip(copies, answers):
            groups.setdefault(copy.baseline, []).append((copy, answer))
        if dropped:
            groups.setdefault(copies[0].baseline if copies else max(self.windows, default=0), [])
        for baseline, group in groups.items():
            tally = self._tally(baseline, group, dropped, now)
            dropped = 0  # reported once, with the first production version
            if self.observe is not None:
                self.observe(tally)
        if time.time() - self.started >= self.window_s:
            await self.flush()

    async def _run(self, copy: Copy) -> tuple[dict[str, np.ndarray], int, int] | str:
        """The shadow's answer to a copy (outputs, rows, model time in ns), or why it has none."""
        served = self.served
        try:
            request = await parse_off_loop(copy.body, copy.header_length, served.model, served.max_batch_size, self.max_elements)
            results = await served.batcher.submit(request.inputs, request.rows, None, None, request.timing)
        except RequestError as e:
            return f"{type(e).__name__}: {e.message}"
        except Exception as e:  # noqa: BLE001 - the shadow version failed: that is evidence, not a crash
            return f"{type(e).__name__}: {e}"
        return results, request.rows, sum(request.timing[:3])

    def _tally(self, baseline: int, group: list[tuple[Copy, Any]], dropped: int, now: float) -> Tally:
        window = self.windows.get(baseline)
        if window is None:
            window = self.windows[baseline] = Window(now)
        window.dropped += dropped
        pairs: list[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray], int]] = []
        shadow_ms: list[float] = []
        baseline_ms: list[float] = []
        errors = 0
        for copy, answer in group:
            problem = answer if isinstance(answer, str) else _incomparable(copy.outputs, answer[0])
            if problem is not None:
                errors += 1
                window.last_error = problem
                continue
            results, rows, ns = answer
            pairs.append((copy.outputs, results, rows))
            shadow_ms.append(ns / 1e6)
            baseline_ms.append(copy.baseline_ns / 1e6)
        window.errors += errors
        classified = agreed = 0
        if pairs:
            try:
                diffs, classified, agreed = _sum_pairs(pairs)
            except Exception as e:  # noqa: BLE001 - outputs that cannot be compared (another kind of tensor): counted
                window.errors += len(pairs)
                window.last_error = f"not comparable: {type(e).__name__}: {e}"
                return Tally(baseline, 0, errors + len(pairs), dropped, 0, 0, [], [])
            window.add(diffs, classified, agreed, shadow_ms, baseline_ms)
        return Tally(
            baseline,
            len(pairs),
            errors,
            dropped,
            classified,
            agreed,
            [m / 1e3 for m in shadow_ms],
            [m / 1e3 for m in baseline_ms],
        )

    async def flush(self) -> None:
        """Keep the open windows (those with anything in them) and start new ones."""
        now = time.time()
        windows, self.windows, self.started = self.windows, {}, now
        rows = [w.row(b, now) for b, w in sorted(windows.items()) if w.compared or w.errors or w.dropped]
        for row in rows:
            try:
                await asyncio.to_thread(self.keep, row)
            except Exception as e:  # noqa: BLE001 - the registry is away: this window's figures are lost, said
                log.error("shadow window of version %s not kept (%s compared): %s", self.version, row["compared"], e)

    async def flush_forever(self) -> None:
        """Keep each window when it ends, also when no copy comes to end it."""
        while True:
            await asyncio.sleep(max(0.05, self.started + self.window_s - time.time()))
            if time.time() - self.started >= self.window_s:
                await self.flush()
