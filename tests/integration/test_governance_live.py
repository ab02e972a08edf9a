"""Governance and the audit log in a live server of their own (a `lockgate serve` with API keys,
sync audit): what callers see on the wire, the revocation bounds, four-eyes, trace, and one record
per response under load."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import assert_nowhere, free_port, isolated_haproxy_env, wait_ready, written_by_server

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
IRIS = {"id": "gov-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
DIGITS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
BOUND_S = 5.0  # the promised bound for a revoked key or version to stop working


class Governed:
    def __init__(self, home: Path, repo: Path) -> None:
        self.home = home
        self.repo = repo
        self.env = {**os.environ, **isolated_haproxy_env(), "LOCKGATE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.env.pop("LOCKGATE_API_KEY", None)
        self.keys: dict[str, str] = {}
        self.base = ""
        self.port = 0
        self.grpc = ""
        self.log = Path()
        self.started = 0.0

    def cli(self, *args: str, key: str | None = None, actor: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if key:
            env["LOCKGATE_API_KEY"] = self.keys[key]
        if actor:
            env["LOCKGATE_ACTOR"] = actor
        done = subprocess.run([*LOCKGATE, *args], env=env, capture_output=True, text=True, timeout=120)
        if ok:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"} if key else {}

    def infer(self, key: str | None, model: str = "iris", body: dict = IRIS, route: str = "") -> requests.Response:
        return requests.post(f"{self.base}/v2/models/{model}{route}/infer", json=body, headers=self.headers(key), timeout=10)


@pytest.fixture(scope="module")
def gov(tmp_path_factory):
    from lockgate.server.tools.demo import write_demo_repository

    root = tmp_path_factory.mktemp("governed")
    home = root / "home"
    home.mkdir()
    (home / "lockgate.yaml").write_text("audit:\n  mode: sync\n  checkpoint_every: 5000\ngovernance:\n  key_refresh_s: 1.0\n")
    write_demo_repository(root / "repo", ["iris", "digits"])
    g = Governed(home, root / "repo")
    g.started = time.time()
    g.cli("models", "import-repo", str(g.repo), actor="alice")  # open mode: approved on import, recorded
    g.keys["admin"] = g.cli("keys", "create", "--principal", "root", "--role", "admin", actor="ops").stdout.strip()
    for name, roles, models in [
        ("app", ["invoker"], "iris"),
        ("viewer", ["viewer"], "*"),
        ("alice", ["deployer", "approver"], "*"),
        ("bob", ["approver"], "*"),
    ]:
        g.keys[name] = g.cli(
            "keys", "create", "--principal", name, *[f"--role={r}" for r in roles], "--models", models, key="admin"
        ).stdout.strip()
    port = free_port()
    g.grpc = f"127.0.0.1:{free_port()}"
    g.log = root / "server.log"
    with open(g.log, "w") as log:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "--port", str(port), "--grpc-port", g.grpc.split(":")[1]],
            env=g.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    g.base, g.port = f"http://127.0.0.1:{port}", port
    try:
        wait_ready(g.base, proc, log=g.log)
        yield g
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert "open mode" not in g.log.read_text()  # keys exist: the server says nothing of open mode


def test_callers_get_401_403_or_an_answer_with_oip_error_bodies(gov):
    missing = gov.infer(None)
    assert missing.status_code == 401 and missing.json() == {"error": "missing 'Authorization: Bearer <API key>' header"}
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    forged = requests.post(
        f"{gov.base}/v2/models/iris/infer", json=IRIS, headers={"Authorization": "Bearer lg_0011223344556677_x"}, timeout=10
    )
    assert forged.status_code == 401 and forged.json() == {"error": "invalid API key"}
    other = gov.infer("app", "digits", DIGITS)
    assert other.status_code == 403 and other.json() == {"error": "'app' is not granted model 'digits'"}
    viewer = gov.infer("viewer")
    assert viewer.status_code == 403 and viewer.json() == {"error": "'viewer' (viewer) may not infer"}
    assert requests.get(f"{gov.base}/v2/models/iris", headers=gov.headers("viewer"), timeout=10).status_code == 200
    ok = gov.infer("app")
    assert ok.status_code == 200 and len(ok.headers["lockgate-request-id"]) == 32
    # probes stay open: Kubernetes' (examples/kuberay) and those KubeRay itself sends to port 8000
    assert requests.get(f"{gov.base}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{gov.base}/v2/health/live", timeout=10).json() == {"live": True}
    healthz = requests.get(f"{gov.base}/-/healthz", timeout=10)
    assert healthz.status_code == 200 and healthz.text == "success"
    routes = requests.get(f"{gov.base}/-/routes", timeout=10)
    assert routes.status_code == 200 and routes.json().get("/v2/models/iris") == "iris", routes.text


def test_grpc_callers_pass_the_same_gate_and_get_an_audit_record(gov):
    """The API key in the `authorization` metadata: UNAUTHENTICATED without or with a forged one,
    PERMISSION_DENIED for a model the key is not granted, an answer and its audit record with it."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    request = pb.ModelInferRequest(model_name="iris", id="grpc-gov")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    digits = pb.ModelInferRequest(model_name="digits")
    digits.inputs.add(name="input", datatype="FP32", shape=[1, 64]).contents.fp32_contents.extend([0.0] * 64)
    with grpc.insecure_channel(gov.grpc) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        for metadata, code, message in [
            ((), grpc.StatusCode.UNAUTHENTICATED, "missing 'Authorization: Bearer <API key>' header"),
            ((("authorization", "Bearer lg_0011223344556677_x"),), grpc.StatusCode.UNAUTHENTICATED, "invalid API key"),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata)
            assert info.value.code() == code and info.value.details() == message
        app = (("authorization", f"Bearer {gov.keys['app']}"),)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(digits, metadata=app)
        assert (
            info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            and "'app' is not granted model 'digits'" in info.value.details()
        )
        response, call = stub.ModelInfer.with_call(request, metadata=app)
        assert response.id == "grpc-gov" and len(response.raw_output_contents) == 2
        request_id = dict(call.trailing_metadata())["lockgate-request-id"]
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # probes stay open, as over HTTP
    trace = gov.cli("audit", "trace", request_id, key="admin").stdout
    assert request_id in trace and "iris" in trace and "app" in trace


def test_sbom_over_http_is_cyclonedx_and_needs_a_key(gov):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert requests.get(f"{gov.base}/v2/sbom", timeout=30).status_code == 401
    r = requests.get(f"{gov.base}/v2/sbom", headers=gov.headers("viewer"), timeout=60)
    assert r.status_code == 200, r.text
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(r.text) is None
    models = {c["name"] for c in r.json()["components"] if c["type"] == "machine-learning-model"}
    assert models == {"iris", "digits"}
    assert "onnxruntime" in {c["name"] for c in r.json()["components"]}
    cli = json.loads(gov.cli("sbom", key="viewer").stdout)
    assert {c["name"] for c in cli["components"] if c["type"] == "machine-learning-model"} == models


def test_metrics_and_explain_need_their_actions_and_denials_are_counted(gov):
    assert requests.get(f"{gov.base}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{gov.base}/metrics", headers=gov.headers("app"), timeout=10).status_code == 403  # invoker
    explain = requests.post(f"{gov.base}/v2/models/iris/explain", json=IRIS, headers=gov.headers("viewer"), timeout=10)
    assert explain.status_code == 403 and explain.json() == {"error": "'viewer' (viewer) may not explain"}
    # the demo repository keeps iris's reference sample next to its model: the import stored it
    explained = requests.post(f"{gov.base}/v2/models/iris/explain", json=IRIS, headers=gov.headers("app"), timeout=30)
    assert explained.status_code == 200, explained.text
    doc = explained.json()
    assert doc["exact"] and len(doc["attributions"]) == 4
    assert abs(sum(doc["attributions"]) + doc["base_value"] - doc["value"]) <= 1e-6

    def denials() -> dict[str, float]:
        text = requests.get(f"{gov.base}/metrics", headers=gov.headers("viewer"), timeout=10).text
        found = re.findall(r'^lockgate_auth_denials_total\{code="(\d+)",model="iris"\} (\S+)$', text, re.M)
        return {code: float(value) for code, value in found}

    wait_until(lambda: denials().get("403", 0) >= 1)
    before = denials()
    assert gov.infer(None).status_code == 401
    wait_until(lambda: denials().get("401", 0) == before.get("401", 0) + 1)


def wait_until(check, timeout: float = 15.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def test_a_revoked_key_stops_working_within_the_bound(gov):
    gov.keys["temp"] = gov.cli("keys", "create", "--principal", "temp", "--role", "invoker", key="admin").stdout.strip()
    wait_until(lambda: gov.infer("temp").status_code == 200)
    key_id = gov.keys["temp"].split("_")[1]
    gov.cli("keys", "revoke", key_id, key="admin")
    took = wait_until(lambda: gov.infer("temp").status_code == 401)
    print(f"revoked key refused after {took:.2f} s")
    assert took <= BOUND_S


def test_four_eyes_then_a_revoked_version_stops_serving_within_the_bound(gov):
    v1 = gov.infer("app").json()
    gov.cli(
        "models",
        "register",
        str(gov.repo / "iris" / "1" / "model.onnx"),
        "--name",
        "iris",
        "--training-data",
        "s3://iris.csv",
        key="alice",
    )
    refused = gov.cli("models", "alias", "set", "iris", "production", "2", key="alice", ok=False)
    assert refused.returncode == 4 and "protected alias and version 2 is pending" in refused.stderr
    self_approval = gov.cli("models", "approve", "iris", "2", key="alice", ok=False)
    assert (
        self_approval.returncode == 4 and "'alice' registered version 2 of 'iris' and cannot approve it" in self_approval.stderr
    )
    gov.cli("models", "approve", "iris", "2", "--reason", "validated", key="bob")
    gov.cli("models", "alias", "set", "iris", "production", "2", key="alice")
    wait_until(lambda: gov.infer("app").json().get("model_version") == "2")
    answered = gov.infer("app")
    request_id = answered.headers["lockgate-request-id"]

    gov.cli("models", "revoke", "iris", "2", "--reason", "drift found", key="bob")
    took = wait_until(lambda: gov.infer("app").status_code == 503)
    print(f"revoked version refused after {took:.2f} s")
    assert took <= BOUND_S
    stopped = gov.infer("app")
    assert stopped.json() == {
        "error": "model 'iris' version 2 is not served: version 2 of 'iris' was revoked by bob: drift found"
    }
    gov.cli("models", "alias", "set", "iris", "production", "1", key="alice")
    wait_until(lambda: gov.infer("app").status_code == 200)
    assert gov.infer("app").json()["outputs"] == v1["outputs"]

    trace = gov.cli("audit", "trace", request_id, key="admin").stdout
    assert f"request {request_id} (client id gov-1)" in trace and "caller: app; status 200" in trace
    assert "model: iris version 2, artifact sha256" in trace and "registered by alice" in trace
    assert "approved by bob" in trace and "(before the request): validated" in trace and "revoked by bob" in trace
    records = [json.loads(x) for x in gov.cli("audit", "export", "--model", "iris", key="admin").stdout.splitlines()]
    assert any(r["kind"] == "serving_stopped" and r["version"] == 2 for r in records)
    assert any(r["kind"] == "infer" and r["detail"]["status"] == 503 and r["version"] == 2 for r in records)
    assert gov.cli("audit", "export", key="app", ok=False).returncode == 4  # only admins read the log


async def _load(base: str, key: str, connections: int, seconds: float) -> tuple[list[str], int]:
    """Closed-loop load over raw keep-alive connections; the request id of every response."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(IRIS).encode()
    request = (
        f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    ids: list[str] = []
    failed = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line)
            fields = {k.lower(): v for k, v in fields.items()}
            await reader.readexactly(int(fields["content-length"]))
            ids.append(fields["lockgate-request-id"])
            if not head.startswith(b"HTTP/1.1 200"):
                failed += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return ids, failed


@pytest.mark.slow
def test_sync_audit_under_load_one_record_per_response_no_gap_no_duplicate(gov):
    started = time.time()
    ids, failed = asyncio.run(_load(gov.base, gov.keys["app"], 64, 60.0))
    assert failed == 0 and len(ids) > 1000 and len(set(ids)) == len(ids)
    export = gov.cli(
        "audit", "export", "--kind", "infer", "--since", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1)), key="admin"
    )
    records = [json.loads(x) for x in export.stdout.splitlines()]
    wanted = set(ids)
    ours = [r for r in records if r.get("request_id") in wanted]
    print(f"{len(ids)} responses in 60 s at concurrency 64 ({len(ids) / 60:.0f}/s), {len(ours)} records")
    assert len(ours) == len(ids)  # every response has its record, and only one
    seqs = [r["seq"] for r in records]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    verify = gov.cli("audit", "verify", key="admin").stdout
    assert "audit log verified: intact" in verify  # one chain, no gap, checkpoints hold


# -- attacks: what a caller without the right key tries ------------------------------------------


def raw(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> tuple[int, bytes]:
    """One request exactly as written (no client normalises the path or merges headers)."""
    import socket

    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_path_tricks_do_not_reach_a_model_the_key_is_not_granted(gov):
    """'app' may infer iris only. Every way of naming digits (or of leaving iris's route) is
    refused; an answer, if any, is iris's own."""
    key = [("authorization", f"Bearer {gov.keys['app']}")]
    body = json.dumps(DIGITS).encode()
    paths = [
        "/v2/models/digits/infer",
        "/v2/models/iris/../digits/infer",
        "/v2/models/iris/%2e%2e/digits/infer",
        "/v2/models/iris%2F..%2Fdigits/infer",
        "/v2/models/iris%2fdigits/infer",
        "/v2/models/digits%2Finfer",
        "//v2/models/digits/infer",
        "/v2/models//digits/infer",
        "/v2//models/digits/infer",
        "/v2/models/./digits/infer",
        "/v2/models/DIGITS/infer",
        "/v2/models/digits/infer?model=iris",
        "/v2/models/digits;iris/infer",
        "/v2/models/iris/versions/1/../../../digits/infer",
        "/v2/models/iris/versions/1%2F..%2F..%2Fdigits/infer",
        "/v2/models/iris/versions/..%2f..%2fdigits/infer",
        "/v2/models/digits/versions/1/infer",
        "/v2/models/digits%00/infer",
        "/v2/models/digits/infer#iris",
        "/V2/models/digits/infer",
        "/v2/models/iris\\..\\digits/infer",
        "/v2/models/digits%20/infer",
        "/v2/models/%64igits/infer",
    ]
    seen = {}
    for path in paths:
        status, answer = raw(gov.port, "POST", path, key, body)
        seen[path] = status
        assert status in (400, 403, 404), (path, status, answer[:200])
        assert status >= 500 or b"digits" not in answer or b"error" in answer, (path, answer[:200])
    assert seen["/v2/models/digits/infer"] == 403
    # no key at all: every path above asks for one (or finds no model), none answers
    for path in paths:
        status, answer = raw(gov.port, "POST", path, [], body)
        assert status in (400, 401, 404), (path, status, answer[:200])


def test_header_tricks_and_oversized_tokens_are_refused(gov):
    good, other = gov.keys["app"], gov.keys["viewer"]
    body = json.dumps(IRIS).encode()
    url = "/v2/models/iris/infer"
    # header name case and scheme case do not matter (RFC 9110); the key still decides
    for name, scheme in [("Authorization", "Bearer"), ("AUTHORIZATION", "bearer"), ("authorization", "BEARER")]:
        assert raw(gov.port, "POST", url, [(name, f"{scheme} {good}")], body)[0] == 200
    refused = {
        "two headers, forged first": [("authorization", "Bearer lg_0000000000000000_x"), ("authorization", f"Bearer {good}")],
        "two headers, valid first": [("authorization", f"Bearer {good}"), ("authorization", f"Bearer {other}")],
        "two keys in one header": [("authorization", f"Bearer {good}, Bearer {good}")],
        "key only, no scheme": [("authorization", good)],
        "basic scheme": [("authorization", f"Basic {good}")],
        "key in another header": [("x-api-key", good)],
        "key with a suffix": [("authorization", f"Bearer {good}x")],
        "key cut short": [("authorization", f"Bearer {good[:-1]}")],
        "key id only": [("authorization", "Bearer " + "_".join(good.split("_")[:2]))],
        "oversized token (8 KiB)": [("authorization", "Bearer lg_" + "a" * 8192)],
        "control characters": [("authorization", f"Bearer {good}\x01")],
        "non-ASCII": [("authorization", "Bearer lg_\xe9\xe9\xe9")],
        "empty": [("authorization", "")],
    }
    for what, headers in refused.items():
        status, answer = raw(gov.port, "POST", url, headers, body)
        assert status in (400, 401), (what, status, answer[:200])
        if status == 401:
            assert json.loads(answer)["error"], what
    # a token larger than HAProxy's request buffer (16 KiB) is refused at the door
    status, _ = raw(gov.port, "POST", url, [("authorization", "Bearer " + "a" * 100_000)], body)
    assert status == 400


def test_one_models_key_does_not_open_another_or_the_control_routes(gov):
    app = gov.headers("app")  # invoker of iris only
    for method, path in [
        ("POST", "/v2/models/digits/infer"),
        ("POST", "/v2/models/digits/explain"),
        ("GET", "/v2/models/digits"),
        ("GET", "/v2/models/digits/ready"),
        ("POST", "/v2/repository/models/digits/load"),
        ("POST", "/v2/repository/models/iris/unload"),
        ("GET", "/metrics"),
        ("GET", "/v2/sbom"),
    ]:
        r = requests.request(method, gov.base + path, json=DIGITS, headers=app, timeout=10)
        assert r.status_code in (403, 404), (method, path, r.status_code, r.text)
    # the repository index lists only what the key may see
    index = requests.post(f"{gov.base}/v2/repository/index", headers=app, timeout=10)
    assert index.status_code == 200 and [m["name"] for m in index.json()] == ["iris"]
    everything = requests.post(f"{gov.base}/v2/repository/index", headers=gov.headers("viewer"), timeout=10).json()
    assert [m["name"] for m in everything] == ["digits", "iris"]
    assert gov.infer("app").status_code == 200  # and iris still serves


def test_keys_never_appear_in_logs_audit_records_or_the_databases(gov):
    # a failed and a successful use of every key, so each has had a chance to be logged
    for name in list(gov.keys):
        gov.infer(name)
        raw(
            gov.port, "POST", "/v2/models/iris/infer", [("authorization", f"Bearer {gov.keys[name]}x")], json.dumps(IRIS).encode()
        )
    secrets_ = {name: key.split("_", 2)[2] for name, key in gov.keys.items()}
    places = written_by_server(gov.started, gov.log, gov.home)
    export = gov.cli("audit", "export", "--format", "jsonl", key="admin").stdout
    assert export.count("\n") > 10
    searched = assert_nowhere(places, {f"{name}'s key": secret.encode() for name, secret in secrets_.items()})
    for name, secret in secrets_.items():
        assert secret not in export, f"{name}'s key is in the audit log"
    print(f"searched {len(places)} files ({searched / 1e6:.1f} MB) and {export.count(chr(10))} audit records: no key")


def listening() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                addr, port = local.split(":")
                found.append(
                    (
                        "any"
                        if set(addr) == {"0"}
                        else ("127.0.0.1" if addr in ("0100007F", "00000000000000000000000001000000") else addr),
                        int(port, 16),
                    )
                )
    return found


def test_secure_defaults_hold(gov):
    # the server's port and the replicas' own listeners (Serve's 30000-31000) listen on loopback only
    sockets = listening()
    served = [a for a, p in sockets if p == gov.port]
    assert served and set(served) == {"127.0.0.1"}, served
    replicas = [(a, p) for a, p in sockets if 30000 <= p <= 31000]
    assert replicas and all(a == "127.0.0.1" for a, _ in replicas), replicas
    # the audit checkpoint key is readable by its owner only; keys are stored hashed (checked above)
    assert (gov.home / "audit.key").stat().st_mode & 0o077 == 0
    # a key store exists, so anonymous callers get nothing, probes excepted
    assert requests.post(f"{gov.base}/v2/models/iris/infer", json=IRIS, timeout=10).status_code == 401
    assert requests.get(f"{gov.base}/v2/health/live", timeout=10).status_code == 200
