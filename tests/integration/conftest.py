"""One real lockgate on Ray Serve for the whole session, on loopback, with the demo models."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_haproxy_env() -> dict[str, str]:
    """HAProxy's stats and metrics listeners on free ports, so runs do not collide."""
    return {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lockgate.server.demo import write_demo_repository

    root = tmp_path_factory.mktemp("repo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="session")
def server(demo_repo: Path):
    """Base URL of a lockgate serving the demo repository; shut down after the session."""
    from lockgate.server.repository import scan_repository
    from lockgate.server.runtime import Runtime

    os.environ.update(isolated_haproxy_env())
    port = free_port()
    runtime = Runtime(host="127.0.0.1", port=port, progress=lambda line: None)
    try:
        runtime.start()
        runtime.deploy(scan_repository(demo_repo))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("lockgate did not become ready in 60 s")
        yield base
    finally:
        runtime.shutdown()
