"""The example plugin package, pip-installed as a plugin author would, running in a live server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import free_port, lockgate, plugin_env, wait_ready

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lockgate-plugin-example"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The example installed with pip into a folder of its own (the test venv stays as it is)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(EXAMPLE),
        ],
        check=True,
        timeout=300,
    )
    assert list(site.glob("lockgate_plugin_example-*.dist-info"))
    return site


@pytest.mark.slow
def test_example_plugin_hooks_run_in_a_live_server(plugin_site, tmp_path):
    from lockgate.server.tools.demo import write_demo_repository

    write_demo_repository(tmp_path / "repo", ["iris", "digits"])
    log = tmp_path / "requests.jsonl"
    env = plugin_env(
        plugin_site,
        LOCKGATE_EXAMPLE_LOG=str(log),
        LOCKGATE_EXAMPLE_DENY_MODELS="digits",
        LOCKGATE_HOME=str(tmp_path / "home"),
        PYTHONUNBUFFERED="1",
    )
    listed = subprocess.run(
        [sys.executable, "-m", "lockgate.server.cli", "plugins", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "request-log" in listed.stdout and "loaded" in listed.stdout, listed.stdout

    port = free_port()
    proc = lockgate(
        "serve", "--model-repository", str(tmp_path / "repo"), "--port", str(port), "--grpc-port", str(free_port()), env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        body = {"id": "ex-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
        assert requests.post(f"{base}/v2/models/iris/infer", json=body, timeout=10).status_code == 200
        bad = {"id": "ex-2", "inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        assert requests.post(f"{base}/v2/models/iris/infer", json=bad, timeout=10).status_code == 400
        digits = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
        denied = requests.post(f"{base}/v2/models/digits/infer", json=digits, timeout=10)
        assert denied.status_code == 403, denied.text
        assert denied.json() == {"error": "model 'digits' is closed by the request-log plugin's deny_models"}
        assert requests.get(f"{base}/v2/models/digits", timeout=10).status_code == 200  # metadata stays open
        records = []
        for _ in range(50):
            if log.exists():
                records = [json.loads(line) for line in log.read_text().splitlines()]
                if sum(r["record"] == "inference" for r in records) >= 3:
                    break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    inference = [r for r in records if r["record"] == "inference"]
    assert [(r["client_id"], r["status"], r["model"], r["version"]) for r in inference] == [
        ("ex-1", 200, "iris", 1),
        (None, 400, "iris", 1),
        (None, 403, "digits", None),
    ]
    assert all(len(r["request_id"]) == 32 for r in inference)
    assert "unknown input 'nope'" in inference[1]["error"]
    assert inference[2]["decided_by"] == "request-log"
    assert any(r["record"] == "batch" and r["model"] == "iris" and r["rows"] == 1 for r in records)
    audits = [(r["kind"], r["model"], r["version"]) for r in records if r["record"] == "audit"]
    assert ("register", "iris", 1) in audits and ("alias_set", "iris", 1) in audits
