"""What the dynamic batcher adds per request at concurrency 64, against a plain await of the model."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvloop

from lockgate.server.serving.batching import Batcher
from lockgate.server.serving.config import DynamicBatchingConfig

CONCURRENCY = 64
ROUNDS = 20  # each benchmark call sends CONCURRENCY * ROUNDS requests
X = {"x": np.zeros((1, 4), np.float32)}


def model(feeds):
    return [feeds["x"]]


async def _plain():
    async def one():
        for _ in range(ROUNDS):
            await asyncio.sleep(0)
            model(X)

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))


async def _batched(batcher):
    async def one():
        for _ in range(ROUNDS):
            await batcher.submit(X, 1)

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))


@pytest.mark.benchmark(group=f"batcher: {CONCURRENCY * ROUNDS} requests at concurrency {CONCURRENCY}")
def test_plain_await(benchmark):
    loop = uvloop.new_event_loop()  # as in a Serve replica
    benchmark(lambda: loop.run_until_complete(_plain()))
    loop.close()


@pytest.mark.benchmark(group=f"batcher: {CONCURRENCY * ROUNDS} requests at concurrency {CONCURRENCY}")
def test_batcher(benchmark):
    loop = uvloop.new_event_loop()
    executor = ThreadPoolExecutor(1)

    async def make():
        return Batcher(model, ["y"], 32, DynamicBatchingConfig(), executor)

    batcher = loop.run_until_complete(make())
    benchmark(lambda: loop.run_until_complete(_batched(batcher)))
    loop.close()
    executor.shutdown()
