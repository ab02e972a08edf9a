"""Replica autoscaling on the session's real Serve deployment, through HAProxy and the replicas'
own listeners: a model grows under load and shrinks after it with no failed request, and a
model scaled to zero answers its first request after idle (a cold start) instead of failing."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from lockgate.server.tools.demo import build_mlp

from . import serving
from .serving import ROW, Load, running


def wait_for(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.25)
    pytest.fail(f"{what} did not happen in {timeout:.0f} s")


def deploy(server: str, registry, governance, folder: Path, name: str, autoscaling: dict) -> None:
    serving.deploy(
        server,
        registry,
        governance,
        folder,
        name,
        build_mlp(seed=1),
        {"max_batch_size": 32, "num_cpus": 0.1, "autoscaling": autoscaling},
    )


def test_a_model_grows_under_load_and_shrinks_after_it_with_no_failed_request(server, registry, governance, tmp_path):
    name = "elastic"
    deploy(
        server,
        registry,
        governance,
        tmp_path,
        name,
        {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "look_back_period_s": 2,
            "metrics_interval_s": 0.5,
        },
    )
    assert running(name) == 1
    url = f"{server}/v2/models/{name}/infer"
    load = Load(url, threads=8)
    try:
        grew = wait_for(lambda: running(name) >= 2, 90, "scaling up to 2 replicas under load")
        time.sleep(3)  # requests through both replicas
    finally:
        codes = load.finish()
    assert codes and set(codes) == {200}, codes
    # after the load: a trickle of single requests, which must all succeed while a replica goes
    trickle = Counter()
    start = time.monotonic()
    while running(name) > 1 and time.monotonic() - start < 90:
        trickle[requests.post(url, json=ROW, timeout=30).status_code] += 1
        time.sleep(0.1)
    shrank = time.monotonic() - start
    assert running(name) == 1, "did not scale back to 1 replica after the load"
    for _ in range(20):
        trickle[requests.post(url, json=ROW, timeout=30).status_code] += 1
    assert set(trickle) == {200}, trickle
    print(
        f"\nautoscaling: 1 -> 2 replicas {grew:.1f} s into the load ({sum(codes.values())} requests, all 200); "
        f"2 -> 1 {shrank:.1f} s after it ({sum(trickle.values())} requests, all 200)"
    )


def test_a_model_scaled_to_zero_answers_its_first_request_after_a_cold_start(server, registry, governance, tmp_path):
    name = "sleepy"
    deploy(
        server,
        registry,
        governance,
        tmp_path,
        name,
        {
            "min_replicas": 0,
            "max_replicas": 1,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0,
            "downscale_delay_s": 10,
            "downscale_to_zero_delay_s": 10,
            "look_back_period_s": 1,
            "metrics_interval_s": 0.5,
        },
    )
    url = f"{server}/v2/models/{name}/infer"
    colds, directs = [], []
    for _ in range(2):
        wait_for(lambda: running(name) == 0, 60, "scaling to zero when idle")
        t0 = time.monotonic()
        r = requests.post(url, json=ROW, timeout=120)
        colds.append(time.monotonic() - t0)
        assert r.status_code == 200, r.text
        assert len(r.json()["outputs"][0]["data"]) == 10
        # The first answer may come through Serve's proxy, HAProxy's fallback while the model
        # has no replica it has checked; then HAProxy sends to the replica's own listener (the
        # replica stays 10 s idle before it goes again). Only a replica answers `server: lockgate`.
        direct = wait_for(
            lambda: requests.post(url, json=ROW, timeout=30).headers.get("server") == "lockgate",
            30,
            "HAProxy routing to the new replica",
        )
        directs.append(direct)
    print(
        f"\ncold start (0 -> 1 replica, first answer): {', '.join(f'{c:.2f} s' for c in colds)}; "
        f"then through the replica's listener after {', '.join(f'{d:.2f} s' for d in directs)}"
    )
