"""Metrics of several processes in one folder: one collection sums them; gauges of processes that
are gone are dropped, their counters kept; `lockgate metrics` serves the same."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from lockgate.server.hosting.metrics import collect

WRITER = """
import os, sys
from prometheus_client import CollectorRegistry, Counter, Gauge
r = CollectorRegistry()
Counter("lockgate_requests", "h", ["model"], registry=r).labels("m").inc(int(sys.argv[1]))
Gauge("lockgate_replicas", "h", ["model"], multiprocess_mode="livesum", registry=r).labels("m").set(1)
print("ready", flush=True)
sys.stdin.read()  # alive until told
"""


def samples(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if s.labels.get("model") == "m"}


def test_counters_add_up_across_processes_and_dead_gauges_go(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(n)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for n in (3, 4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    both = samples(collect(str(tmp_path)).decode())
    assert both["lockgate_requests_total"] == 7 and both["lockgate_replicas"] == 2
    procs[0].communicate("")  # one process ends (a replica that Ray replaced)
    after = samples(collect(str(tmp_path)).decode())
    assert after["lockgate_requests_total"] == 7 and after["lockgate_replicas"] == 1
    procs[1].communicate("")


def test_the_metrics_command_serves_the_nodes_folder(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "LOCKGATE_HOME": str(home), "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics")}
    (home / "metrics").mkdir(parents=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, "5"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "ready"
    once = subprocess.run(
        [sys.executable, "-m", "lockgate.server.cli", "metrics", "--once"], env=env, capture_output=True, text=True, check=True
    )
    assert samples(once.stdout)["lockgate_requests_total"] == 5
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "lockgate.server.cli", "metrics", "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        end = time.monotonic() + 20
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < end
                time.sleep(0.1)
        assert r.status_code == 200 and samples(r.text)["lockgate_replicas"] == 1
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=2).status_code == 404
    finally:
        server.terminate()
        server.wait(10)
        writer.communicate("")


UNREPORTED = """
import sys
from lockgate.server.hosting import metrics
metrics.enable(sys.argv[1])
count = metrics.shadow_unreported("m")
count(2, 3)
count(2, 4)
count(5, 1)
"""


def test_a_production_replica_counts_the_shadow_copies_it_let_go_unreported(tmp_path):
    """Copies a production replica lets go without telling the shadow reach the node's metrics,
    by model and shadow version, from the replica's process."""
    subprocess.run([sys.executable, "-c", UNREPORTED, str(tmp_path)], check=True, timeout=60)
    got = {
        s.labels["version"]: s.value
        for f in text_string_to_metric_families(collect(str(tmp_path)).decode())
        for s in f.samples
        if s.name == "lockgate_shadow_unreported_copies_total" and s.labels.get("model") == "m"
    }
    assert got == {"2": 7.0, "5": 1.0}
