"""Structured logs through a live governed `lockgate serve --log-format json --access-log`, its
registry and audit log on PostgreSQL: every line the server prints is one JSON object, a request's
lines carry its lockgate-request-id and the trace id of its W3C traceparent, and neither an API
key nor the database password appears in anything the server or Ray wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import sqlalchemy as sa

from .conftest import assert_nowhere, free_port, isolated_haproxy_env, wait_ready, written_by_server

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
# The role and database .ci/postgres.sh makes for this test: a password no line holds by chance.
PASSWORD = "pw-Zq81-logs-c4e7"


def logs_database() -> str:
    base = os.environ.get("LOCKGATE_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("LOCKGATE_REQUIRE_POSTGRES") == "1":
            pytest.fail("LOCKGATE_REQUIRE_POSTGRES=1 but LOCKGATE_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL: set LOCKGATE_TEST_POSTGRES_URL (CI starts one with .ci/postgres.sh)")
    url = sa.make_url(base).set(username="lockgate_logs", password=PASSWORD, database="lockgate_logs")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            c.exec_driver_sql("DROP SCHEMA public CASCADE")
            c.exec_driver_sql("CREATE SCHEMA public")
            c.commit()
    except sa.exc.OperationalError as e:
        if os.environ.get("LOCKGATE_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no role lockgate_logs (run .ci/postgres.sh): {type(e).__name__}")
    finally:
        engine.dispose()
    return url.render_as_string(hide_password=False)


def test_json_logs_carry_request_and_trace_ids_and_no_secret(tmp_path):
    from lockgate.server.tools.demo import write_demo_repository

    url = logs_database()
    write_demo_repository(tmp_path / "repo", ["iris"])
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **isolated_haproxy_env(), "LOCKGATE_HOME": str(home), "LOCKGATE_REGISTRY_URL": url}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("LOCKGATE_API_KEY", None)

    def cli(*args: str) -> str:
        done = subprocess.run([*LOCKGATE, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    cli("models", "import-repo", str(tmp_path / "repo"))
    key = cli("keys", "create", "--principal", "ops", "--role", "admin").strip()
    port = free_port()
    out, err = tmp_path / "server.out", tmp_path / "server.err"
    started = time.time()
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "--port", str(port), "--grpc-port", str(free_port()), "--log-format", "json", "--access-log"],
            env=env,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        auth = {"Authorization": f"Bearer {key}"}
        traced = requests.post(
            f"{base}/v2/models/iris/infer",
            json=IRIS,
            headers={**auth, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
            timeout=10,
        )
        plain = requests.post(f"{base}/v2/models/iris/infer", json=IRIS, headers=auth, timeout=10)
        malformed = requests.post(
            f"{base}/v2/models/iris/infer", json=IRIS, headers={**auth, "traceparent": "00-not-a-trace-01"}, timeout=10
        )
        bad_body = requests.post(f"{base}/v2/models/iris/infer", data=b"{", headers=auth, timeout=10)
        forged = requests.post(f"{base}/v2/models/iris/infer", json=IRIS, headers={"Authorization": f"Bearer {key}x"}, timeout=10)
        assert [r.status_code for r in (traced, plain, malformed, bad_body, forged)] == [200, 200, 200, 400, 401]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    lines = {}
    for path in (out, err):
        parsed = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                pytest.fail(f"line {number} of the server's {path.suffix[1:]} is not JSON: {line!r}")
            assert isinstance(value, dict) and {"time", "level", "logger", "message"} <= set(value), line
            parsed.append(value)
        lines[path.suffix[1:]] = parsed
    printed = lines["out"] + lines["err"]
    assert any(v["logger"] == "lockgate.serve" and "lockgate is serving" in v["message"] for v in printed)
    access = {v["request_id"]: v for v in printed if v["logger"] == "lockgate.access"}
    for response, status in ((traced, 200), (plain, 200), (malformed, 200), (bad_body, 400), (forged, 401)):
        line = access.get(response.headers["lockgate-request-id"])
        assert line is not None, f"no access line for request {response.headers['lockgate-request-id']}"
        assert line["status"] == status and line["model"] == "iris" and line["latency_ms"] > 0, line
    assert access[traced.headers["lockgate-request-id"]]["trace_id"] == TRACE
    assert access[traced.headers["lockgate-request-id"]]["principal"] == "ops"
    for response in (plain, malformed, forged):  # no traceparent, or one that is not W3C: no trace id
        assert "trace_id" not in access[response.headers["lockgate-request-id"]]

    # No secret anywhere the server or its Ray wrote: the key (and its forged variant), the password.
    secrets_ = {"the API key": key.split("_", 2)[2].encode(), "the database password": PASSWORD.encode()}
    places = written_by_server(started, out, err, home)
    searched = assert_nowhere(places, secrets_)
    print(f"\n{len(printed)} JSON lines; searched {len(places)} files ({searched / 1e6:.1f} MB): no key, no password")
