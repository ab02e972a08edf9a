"""The dynamic batcher: idle dispatch, batches formed while busy, shape keys, bounded queue, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lockgate.server.errors import DeadlineExceeded, Unavailable
from lockgate.server.serving.batching import Batcher
from lockgate.server.serving.config import DynamicBatchingConfig


class Recorder:
    """A model that doubles its input and records the batch sizes it was given."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.hold = hold

    def __call__(self, feeds):
        if self.hold is not None:
            self.hold.wait(5)
        x = feeds["x"]
        self.sizes.append(x.shape[0])
        return [x * 2]


def make(model, max_batch_size=8, **config):
    return Batcher(model, ["y"], max_batch_size, DynamicBatchingConfig(**config), ThreadPoolExecutor(1))


def rows(n, width=3, start=0.0):
    return {"x": np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)}


def test_lone_request_runs_at_once_even_with_a_large_batch():
    """An idle model runs a lone request as a batch of one: it never waits for the batch to fill
    (a batcher that did would never answer; wait_for turns that into a failure, not a hang)."""
    model = Recorder()

    async def go():
        b = make(model)
        return await asyncio.wait_for(b.submit(rows(1), 1), timeout=30)

    out = asyncio.run(go())
    np.testing.assert_array_equal(out["y"], rows(1)["x"] * 2)
    assert model.sizes == [1]


def test_arrivals_during_a_run_form_the_next_batch_and_get_their_own_rows():
    hold = threading.Event()
    model = Recorder(hold)

    async def go():
        b = make(model)
        first = asyncio.ensure_future(b.submit(rows(1, start=100), 1))
        await asyncio.sleep(0.05)  # first is running (held)
        rest = [asyncio.ensure_future(b.submit(rows(2, start=10 * i), 2)) for i in range(3)]
        await asyncio.sleep(0.05)
        hold.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(go())
    assert model.sizes == [1, 6]
    np.testing.assert_array_equal(first["y"], rows(1, start=100)["x"] * 2)
    for i, out in enumerate(rest):
        np.testing.assert_array_equal(out["y"], rows(2, start=10 * i)["x"] * 2)


def test_batches_never_exceed_max_and_shapes_do_not_mix():
    hold = threading.Event()
    model = Recorder(hold)

    async def go():
        b = make(model, max_batch_size=4)
        blocker = asyncio.ensure_future(b.submit(rows(1), 1))
        await asyncio.sleep(0.05)
        wide = [asyncio.ensure_future(b.submit(rows(1, width=5), 1)) for _ in range(2)]
        narrow = [asyncio.ensure_future(b.submit(rows(3), 3)) for _ in range(3)]
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(blocker, *wide, *narrow)

    asyncio.run(go())
    assert model.sizes[0] == 1
    assert max(model.sizes) <= 4
    assert sorted(model.sizes[1:]) == [2, 3, 3, 3]


def test_full_queue_is_503_with_retry_after():
    hold = threading.Event()
    model = Recorder(hold)

    async def go():
        b = make(model, max_queue_size=2)
        running = asyncio.ensure_future(b.submit(rows(1), 1))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(b.submit(rows(1), 1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Unavailable) as info:
            await b.submit(rows(1), 1)
        hold.set()
        await asyncio.gather(running, *queued)
        return info.value

    error = asyncio.run(go())
    assert error.status == 503 and error.headers["retry-after"] == "1"
    assert "queue is full" in error.message


def test_expired_deadline_never_runs():
    hold = threading.Event()
    model = Recorder(hold)

    async def go():
        b = make(model)
        running = asyncio.ensure_future(b.submit(rows(1), 1))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(b.submit(rows(2), 2, timeout_us=1000))
        await asyncio.sleep(0.05)
        hold.set()
        await running
        with pytest.raises(DeadlineExceeded):
            await late

    asyncio.run(go())
    assert model.sizes == [1]


def test_preferred_batch_size_cuts_the_batch():
    hold = threading.Event()
    model = Recorder(hold)

    async def go():
        b = make(model, max_batch_size=8, preferred_batch_sizes=[4])
        blocker = asyncio.ensure_future(b.submit(rows(1), 1))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit(rows(1), 1)) for _ in range(6)]
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(blocker, *waiting)

    asyncio.run(go())
    assert model.sizes == [1, 4, 2]


def test_queue_delay_gathers_a_batch_when_idle():
    model = Recorder()

    async def go():
        b = make(model, max_queue_delay_us=100_000)
        futures = []
        for _ in range(3):
            futures.append(asyncio.ensure_future(b.submit(rows(1), 1)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*futures)

    asyncio.run(go())
    assert model.sizes == [3]


def test_model_error_reaches_every_waiter():
    """Three requests that share one batch: the model raises once, and each of them gets it."""
    hold = threading.Event()
    calls: list[int] = []

    def broken(feeds):
        calls.append(feeds["x"].shape[0])
        if len(calls) == 1:
            hold.wait(5)  # the first (lone) batch holds the model while three more queue
            return [feeds["x"] * 2]
        raise RuntimeError("boom")

    async def go():
        b = make(broken)
        first = asyncio.ensure_future(b.submit(rows(1), 1))
        await asyncio.sleep(0.05)
        waiters = [asyncio.ensure_future(b.submit(rows(1, start=i), 1)) for i in range(3)]
        await asyncio.sleep(0.05)
        hold.set()
        await first
        return await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), timeout=30)

    results = asyncio.run(go())
    assert calls == [1, 3]  # the three waited together, as one batch
    assert len(results) == 3 and all(isinstance(r, RuntimeError) and str(r) == "boom" for r in results), results


def test_a_failing_batch_observer_does_not_hold_back_the_answers():
    def observer(*args):
        raise KeyError("a bug in an observer")

    async def go():
        b = Batcher(Recorder(), ["y"], 8, DynamicBatchingConfig(), ThreadPoolExecutor(1), observer)
        out = await asyncio.wait_for(asyncio.gather(*(b.submit(rows(1, start=i), 1) for i in range(5))), 5)
        return [o["y"][0, 0] for o in out]

    assert asyncio.run(go()) == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_padding_batches_different_lengths_and_cuts_outputs_back():
    """A sequence model: input [N, L] summed over a padded L; output [N, L] cut back per request."""
    hold = threading.Event()
    seen = []

    def model(feeds):
        hold.wait(5)
        x = feeds["x"]
        seen.append(x.shape)
        return [x * 10, x.sum(axis=1)]

    config = DynamicBatchingConfig(padding={"x": 0.0}, padded_outputs=["y"])
    from lockgate.server.serving.batching import Assembler

    async def go():
        b = Batcher(
            model,
            ["y", "total"],
            8,
            config,
            ThreadPoolExecutor(1),
            assembler=Assembler(["x"], {}, 8, True, config.padding),
            dynamic_dims={"x": (True,)},
        )
        first = asyncio.ensure_future(b.submit({"x": np.ones((1, 2), np.float32)}, 1))
        await asyncio.sleep(0.05)
        short = asyncio.ensure_future(b.submit({"x": np.array([[1, 2]], np.float32)}, 1))
        long = asyncio.ensure_future(b.submit({"x": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)}, 2))
        await asyncio.sleep(0.05)
        hold.set()
        return await first, await short, await long

    _, short, long = asyncio.run(go())
    assert seen == [(1, 2), (3, 4)]  # the two lengths shared one padded batch
    np.testing.assert_array_equal(short["y"], [[10, 20]])
    np.testing.assert_array_equal(short["total"], [3])  # padding with 0 leaves the sum alone
    np.testing.assert_array_equal(long["y"], [[10, 20, 30, 40], [50, 60, 70, 80]])
    np.testing.assert_array_equal(long["total"], [10, 26])


def test_padding_never_grows_a_batch_beyond_four_times_its_requests():
    """One long sequence padded with seven short ones would be 8 x 1000 elements for 1,014 of
    data: it waits for a batch of its own; and a padded buffer has the batch's rows (rounded up
    to a power of two), not max_batch_size of the longest request (16 MiB became 512 MiB)."""
    from lockgate.server.serving.batching import PADDING_FACTOR, Assembler

    hold = threading.Event()
    seen = []

    def model(feeds):
        hold.wait(5)
        seen.append(feeds["x"].shape)
        return [feeds["x"]]

    config = DynamicBatchingConfig(padding={"x": 0.0}, padded_outputs=["y"])
    assembler = Assembler(["x"], {}, 8, True, config.padding)

    async def go():
        b = Batcher(model, ["y"], 8, config, ThreadPoolExecutor(1), assembler=assembler, dynamic_dims={"x": (True,)})
        first = asyncio.ensure_future(b.submit({"x": np.ones((1, 2), np.float32)}, 1))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(b.submit({"x": np.ones((1, 2), np.float32)}, 1)) for _ in range(7)]
        long = asyncio.ensure_future(b.submit({"x": np.ones((1, 1000), np.float32)}, 1))
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(first, *waiting, long)

    asyncio.run(go())
    assert seen == [(1, 2), (7, 2), (1, 1000)], seen
    assert PADDING_FACTOR == 4
    assert all(buf.shape[0] == 8 for buf in assembler._buffers.values())  # 7 rows, rounded up to 8
    padded = assembler._padded("x", [np.ones((1, 1000), np.float32), np.ones((1, 2), np.float32)], 0.0)
    assert padded.shape == (2, 1000) and max(b.shape[0] for k, b in assembler._buffers.items() if k[1] == (1000,)) == 2


class Timed:
    """A model that takes 2 ms of wall time per batch, waiting (``sleep``) or computing (a busy
    loop), and records which thread ran each batch."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy
        self.threads: list[int] = []

    def __call__(self, feeds):
        self.threads.append(threading.get_ident())
        if self.busy:
            end = time.thread_time() + 0.002
            while time.thread_time() < end:
                pass
        else:
            time.sleep(0.002)
        return [feeds["x"]]


@pytest.mark.parametrize(
    ("busy", "cpu_timed", "inline"),
    [
        (False, True, True),  # a run that waits costs its thread no CPU: cheap, on the loop
        (False, False, False),  # timed by the wall (a device, a thread pool): 2 ms, on the worker
        (True, True, False),  # 2 ms of the thread's own CPU: on the worker either way
        (True, False, False),
    ],
)
def test_a_batch_runs_on_the_event_loop_when_its_cost_is_below_inline_compute_us(busy, cpu_timed, inline):
    """The inline choice weighs a batch by the running thread's CPU time when the run's work is
    all that thread's (``cpu_timed``: onnxruntime's CPU provider with one thread per operator),
    so time spent waiting for the interpreter lock after the run, which another busy thread of
    the replica stretches, never sends a cheap model to the worker; else by wall time."""
    model = Timed(busy)

    async def go() -> int:
        config = DynamicBatchingConfig(inline_compute_us=1000)
        b = Batcher(model, ["y"], 8, config, ThreadPoolExecutor(1), cpu_timed=cpu_timed)
        for _ in range(6):  # one at a time: six batches
            await b.submit(rows(1), 1)
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    assert model.threads[0] != loop_thread  # the first batch's cost is unknown: the worker
    assert all((t == loop_thread) == inline for t in model.threads[1:]), (model.threads, loop_thread)
