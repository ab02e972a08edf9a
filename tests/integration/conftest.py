"""One real lockgate on Ray Serve for the whole session, on loopback, with the demo models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lockgate.server.hosting.serve_compat import haproxy_retry_on
from tests.ports import free_port

__all__ = ["free_port"]  # tests import it from here


def isolated_haproxy_env() -> dict[str, str]:
    """HAProxy's stats and metrics listeners on free ports, so runs do not collide."""
    return {"RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    """The environment of a `lockgate` process that also finds the plugins installed in ``site``,
    with HAProxy's side listeners on free ports."""
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **isolated_haproxy_env(), "PYTHONPATH": path, **extra}


def lockgate(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A `lockgate ARGS` process (a server, say) with ``env``, its output in one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "lockgate.server.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def written_by_server(started: float, *places: Path) -> list[Path]:
    """Every file under ``places`` (a server's log, its home) and in the logs of the Ray
    sessions started since ``started`` (epoch seconds): what a server run wrote."""
    ray_root = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray"))
    sessions = [d for d in ray_root.glob("session_2*") if d.stat().st_mtime >= started - 5]
    assert sessions, "no Ray session of this server"
    found = [p for place in places for p in ([place] if place.is_file() else place.rglob("*")) if p.is_file()]
    return found + [p for d in sessions for p in d.glob("logs/**/*") if p.is_file()]


def assert_nowhere(paths: list[Path], secrets: dict[str, bytes]) -> int:
    """No secret (by what it is) in any of ``paths``; the bytes searched."""
    searched = 0
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        searched += len(data)
        for what, secret in secrets.items():
            assert secret not in data, f"{what} is in {path}"
    return searched


def wait_ready(base: str, proc=None, timeout: float = 180, log: Path | None = None) -> None:
    """Until ``base``/v2/health/ready answers 200; fails early when ``proc`` (a server process)
    exits, with what it printed: its output pipe, or ``log``, the file its output went to."""

    def printed() -> str:
        if log is not None and log.is_file():
            return log.read_text(errors="replace")
        if proc is not None and proc.stdout is not None and proc.poll() is not None:  # a live one's pipe would block
            return str(proc.stdout.read())
        return ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or busy starting
            pass
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{printed()}")
        time.sleep(0.2)
    pytest.fail(f"lockgate did not become ready in {timeout:.0f} s:\n{printed()}")


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lockgate.server.tools.demo import write_demo_repository

    root = tmp_path_factory.mktemp("repo")
    write_demo_repository(root)
    return root


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory):
    """Settings of the session's server: a registry of its own (SQLite), polled every 0.2 s."""
    from dataclasses import replace

    from lockgate.server.serving.settings import LockgateSettings

    home = tmp_path_factory.mktemp("lockgate-home")
    # a loopback server, with OIP over gRPC on a port of its own
    return replace(
        LockgateSettings.from_env(home=str(home)), alias_poll_s=0.2, anonymous=True, grpc_address=f"127.0.0.1:{free_port()}"
    )


@pytest.fixture(scope="session")
def manager(settings):
    return settings.manager()


@pytest.fixture(scope="session")
def registry(manager):
    return manager.registry()


@pytest.fixture(scope="session")
def governance(manager):
    return manager.plugin("governance")


@pytest.fixture(scope="session")
def server(demo_repo: Path, settings, manager, registry):
    """Base URL of a lockgate serving the demo repository; shut down after the session.

    Tests that start a server or cluster of their own (test_cli, test_cluster,
    test_example_plugin, test_governance_live) happen to sort before the first user of this
    fixture. They once had to: Serve's fallback proxy bound fixed ports (8500, 9500) with
    SO_REUSEPORT, so a `lockgate serve` started while this session served had requests
    answered by this session's replicas. Each server now has its own pair
    (serve_compat.fallback_proxy_ports); running this session first passes too."""
    from lockgate.server.hosting.runtime import Runtime
    from lockgate.server.serving.config import ModelConfig
    from lockgate.server.tools.repository import import_repository

    os.environ.update(isolated_haproxy_env())
    # A short client timeout and request deadline, so that test_reliability sees HAProxy drop a
    # stalled client and a dripping one.
    os.environ["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] = "3"
    os.environ["RAY_SERVE_HAPROXY_RETRY_ON"] = haproxy_retry_on(request_timeout_s=6)
    from lockgate.server.tools.repository import announce_imports

    imported = import_repository(demo_repo, registry, actor="tester", before_alias=announce_imports(manager, "tester"))
    names = sorted({name for name, _, _ in imported})
    port = free_port()
    grpc_port = int(settings.grpc_address.rsplit(":", 1)[1])
    runtime = Runtime(host="127.0.0.1", port=port, progress=lambda line: None, grpc_port=grpc_port)
    try:
        runtime.start()
        runtime.deploy({n: ModelConfig.model_validate(registry.model_config(n)) for n in names}, settings)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout=60)
        yield base
    finally:
        runtime.shutdown()
