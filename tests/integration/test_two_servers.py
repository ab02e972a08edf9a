"""Two lockgate servers on one machine, started as a user would: only --port differs, no
environment variable moves a port. Every other port each takes (gRPC, HAProxy's stats and
metrics, Serve's fallback proxy) is derived from --port or chosen free, and printed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from .conftest import free_port, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}


def _said(path, marker: str, proc, timeout: float = 180) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text()
        if marker in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{text}")
        time.sleep(0.2)
    pytest.fail(f"{marker!r} not printed:\n{path.read_text()}")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_two_servers_on_one_machine_need_no_port_settings(tmp_path):
    from tritonclient.grpc import InferenceServerClient

    from lockgate.server.tools.demo import write_demo_repository

    write_demo_repository(tmp_path / "repo", ["iris"])
    # Nothing set by hand: no port variable this test session's own server put in the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_SERVE_HAPROXY", "RAY_SERVE_FALLBACK_PROXY"))}
    # The way people pick a second port: 8000, then 8100. Both must be free now: a port 100 above
    # one free_port hands out may be a side port of this session's own server (its fallback proxy
    # takes --port + 500), and a server refuses a --port it cannot bind (exit 2, the port named).
    first = free_port()
    while not _bindable(first + 100):
        first = free_port()
    second = first + 100
    free_before = {p: {q for q in (p + 1, p + 404, p + 1101) if _bindable(q)} for p in (first, second)}
    servers = []
    try:
        for port in (first, second):
            log = tmp_path / f"serve-{port}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [*LOCKGATE, "serve", "--model-repository", str(tmp_path / "repo"), "--port", str(port)],
                    env={**env, "LOCKGATE_HOME": str(tmp_path / f"home-{port}"), "PYTHONUNBUFFERED": "1"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            servers.append((port, proc, log))
        taken = {}
        for port, proc, log in servers:
            wait_ready(f"http://127.0.0.1:{port}", proc, log=log)
            text = _said(log, "Ctrl-C stops the server.", proc)
            r = requests.post(f"http://127.0.0.1:{port}/v2/models/iris/infer", json=IRIS, timeout=30)
            assert r.status_code == 200, f"{r.text}\n{log.read_text()}"
            grpc = int(re.search(r"and gRPC on 127\.0\.0\.1:(\d+)", text).group(1))
            others = dict(
                (what.strip(), int(p))
                for what, p in re.findall(r"([A-Za-z' ()]+?) (\d+)(?:,|$)", text.split("other ports: ")[1].splitlines()[0])
            )
            assert grpc == others["gRPC"]
            assert {"HAProxy stats", "HAProxy metrics"} <= set(others), others
            client = InferenceServerClient(f"127.0.0.1:{grpc}")
            # a deadline, so a call that gets no answer fails here with the server's log, not at the test's timeout
            ready = client.is_server_ready(client_timeout=30) and client.is_model_ready("iris", client_timeout=30)
            assert ready, log.read_text()
            client.close()
            taken[port] = {port, *others.values()}
        assert taken[first] & taken[second] == set(), taken
        # derived from --port where that port was free: gRPC +1, HAProxy stats +404 and metrics +1101
        for port in (first, second):
            derived = {port + 1, port + 404, port + 1101} & free_before[port]
            assert derived <= taken[port], (port, derived, taken[port])
    finally:
        for _, proc, _ in servers:
            proc.terminate()
        for _, proc, _ in servers:
            proc.wait(120)
