"""The load a replica reports for autoscaling, and the policy that turns it into replicas."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from lockgate.server.hosting.autoscaling import ONGOING, policy
from lockgate.server.serving import load
from lockgate.server.serving.load import LoadMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(load.time, "monotonic", c)
    return c


def test_the_meter_reports_the_time_average_of_requests_held(clock):
    meter = LoadMeter()
    meter.enter()  # one request for the whole second
    clock.now += 0.5
    meter.enter()  # a second one for its last half
    clock.now += 0.5
    assert meter.report() == pytest.approx(1.5)
    meter.leave()
    meter.leave()
    clock.now += 1.0  # nothing held during the next period
    assert meter.report() == 0.0 and meter.ongoing == 0


def test_a_request_still_held_counts_in_the_next_period_too(clock):
    meter = LoadMeter()
    meter.enter()
    clock.now += 2.0
    assert meter.report() == pytest.approx(1.0)
    clock.now += 3.0
    assert meter.report() == pytest.approx(1.0)
    meter.leave()
    clock.now += 1.0
    assert meter.report() == 0.0


def test_the_meter_costs_little():
    meter = LoadMeter()
    start = time.perf_counter()
    for _ in range(100_000):
        meter.enter()
        meter.leave()
    assert meter.ongoing == 0 and time.perf_counter() - start < 5  # a loose bound; the cost is in docs


def ctx(current: int, target: int, per_replica: dict, serve_count: float = 0.0, per_target: float = 2.0):
    return SimpleNamespace(
        current_num_replicas=current,
        target_num_replicas=target,
        aggregated_metrics={ONGOING: per_replica} if per_replica is not None else None,
        total_num_requests=serve_count,
        config=SimpleNamespace(get_target_ongoing_requests=lambda: per_target),
    )


@pytest.mark.parametrize(
    ("context", "desired"),
    [
        (ctx(1, 1, {"r1": 6.0}), 3.0),  # 6 ongoing, 2 per replica -> 3
        (ctx(2, 2, {"r1": 1.0, "r2": 1.0}), 1.0),  # load fell: one replica is enough
        (ctx(2, 2, {"r1": 0.0, "r2": 0.0}), 0.0),  # idle (Serve's bounds keep min_replicas)
        (ctx(1, 1, {"r1": 0.5}, serve_count=4.0), 2.0),  # requests through Serve's proxy count too
        (ctx(1, 1, None), 0.0),  # no report yet
        (ctx(0, 1, {}), 1),  # from zero: Serve's own cold-start path decides
    ],
)
def test_the_policy_asks_for_ongoing_over_target_replicas(context, desired):
    assert policy(context) == (desired, {})
