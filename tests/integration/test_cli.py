"""`lockgate serve` as a user runs it: the printed curl works, SIGTERM leaves nothing behind, failures say why."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockgate.server.hosting.serve_compat import haproxy_dir, haproxy_pids

from .conftest import free_port, isolated_haproxy_env

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]


def start(repo: Path, port: int, home: Path | None = None, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **isolated_haproxy_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env["LOCKGATE_HOME"] = str(home or repo.parent / f"home-{port}")
    return subprocess.Popen(
        [*LOCKGATE, "serve", "--model-repository", str(repo), "--port", str(port), "--grpc-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    lines: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} not seen; output:\n" + "\n".join(lines))


def port_is_free(port: int) -> bool:
    """A new server could listen on ``port`` now. With SO_REUSEADDR, as every server binds
    (HAProxy, lockgate's own check): connections the old server closed first linger in TIME_WAIT
    on its port for a minute, which refuses only a bind without it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def ours(port: int) -> list[int]:
    marker = str(haproxy_dir(port)).encode()
    found = []
    for pid in haproxy_pids():
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def iris_repo(tmp_path_factory):
    from lockgate.server.tools.demo import write_demo_repository

    root = tmp_path_factory.mktemp("iris-only")
    write_demo_repository(root, ["iris"])
    return root


@pytest.mark.slow
def test_serve_prints_a_working_curl_and_stops_cleanly_on_sigterm(iris_repo):
    port = free_port()
    proc = start(iris_repo, port)
    try:
        lines = read_until(proc, "Ctrl-C stops the server")
        assert any("loading model iris" in line for line in lines)
        curl = next(line.strip() for line in lines if "curl" in line and "/infer" in line)
        out = subprocess.run(shlex.split(curl) + ["-w", "\n%{http_code}"], capture_output=True, text=True, timeout=30)
        body, status = out.stdout.rsplit("\n", 1)
        assert status == "200", out
        assert '"model_name":"iris"' in body and '"label"' in body
        assert ours(port), "HAProxy should be running while serving"
        assert re.search(rf"http://127\.0\.0\.1:{port}", "\n".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    assert "stopped." in rest
    assert port_is_free(port)
    assert ours(port) == []


@pytest.mark.slow
def test_port_in_use_is_refused_with_the_reason(iris_repo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start(iris_repo, port)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out


@pytest.mark.slow
def test_haproxy_stats_port_in_use_is_named(iris_repo):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        taken = s.getsockname()[1]
        proc = start(iris_repo, free_port(), extra_env={"RAY_SERVE_HAPROXY_STATS_PORT": str(taken)})
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert f"cannot listen on 0.0.0.0:{taken} for HAProxy's stats port (set RAY_SERVE_HAPROXY_STATS_PORT to move it)" in out
    assert "starting Ray" not in out


def test_a_file_that_is_not_onnx_is_refused_before_ray_starts(tmp_path):
    from lockgate.server.tools.demo import write_demo_repository

    write_demo_repository(tmp_path / "repo", ["iris"])
    broken = tmp_path / "repo" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an ONNX model")
    proc = start(tmp_path / "repo", free_port(), home=tmp_path / "home")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "cannot register model 'broken'" in out and "not an ONNX model" in out
    assert "starting Ray" not in out


@pytest.mark.slow
def test_a_changed_artifact_refuses_to_load_names_the_model_and_is_recorded(tmp_path):
    from lockgate.plugins.registry import Registry
    from lockgate.server.tools.demo import write_demo_repository
    from lockgate.server.tools.repository import import_repository

    home = tmp_path / "home"
    write_demo_repository(tmp_path / "repo", ["iris"])
    registry = Registry(f"sqlite:///{home}/registry.db", home / "artifacts")
    import_repository(tmp_path / "repo", registry, actor="tester")
    artifact = Path(registry.get_version("iris", 1).artifact_path)
    artifact.chmod(0o644)
    with open(artifact, "ab") as f:
        f.write(b"\0")  # still loads as ONNX, no longer the registered bytes
    port = free_port()
    env = {"LOCKGATE_HOME": str(home)}
    proc = subprocess.Popen(
        [*LOCKGATE, "serve", "--port", str(port), "--grpc-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **isolated_haproxy_env(), **env},
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out
    assert "model iris version 1 failed to load" in out and "changed" in out, out
    refused = registry.events(name="iris", kind="load_refused")
    assert refused and refused[-1]["detail"]["sha256"] == registry.get_version("iris", 1).sha256
    assert port_is_free(port) and ours(port) == []


def test_bad_repository_fails_before_ray_starts(tmp_path):
    (tmp_path / "m").mkdir()
    out = subprocess.run([*LOCKGATE, "serve", "--model-repository", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "model 'm' has no version folder" in out.stderr
    assert "starting Ray" not in out.stdout
