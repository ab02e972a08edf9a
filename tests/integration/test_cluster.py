"""A two-node Ray cluster on this machine (a head and a second raylet on loopback), lockgate
deployed on it with `serve deploy` from a Serve config file, registry and audit log on
PostgreSQL: replicas on both nodes, answers from either node's HAProxy; then the second node is
killed under load: its replica comes back on the head, clients see only answers or clean 503s,
and every answered request has its audit record.

The cluster is its own (processes started here, not the session's in-process Ray), so this file
runs before the tests that use the session server (file order, see conftest.py)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import onnx
import pytest
import requests
import yaml

from lockgate.server.hosting.serve_compat import INGRESS_ENV, haproxy_env, ingress_env
from lockgate.server.tools.demo import build_mlp
from tests.postgres import fresh_postgres_url

from .conftest import free_port, wait_ready

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BIN = Path(sys.executable).parent
MODEL = "spread"
ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.25] * 64}]}
MARK = "LOCKGATE_TEST_NODE"


def node_pids(node: str) -> list[int]:
    """Every process started for one test node: they inherit its ``LOCKGATE_TEST_NODE`` value."""
    marker = f"{MARK}={node}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_node(node: str) -> list[int]:
    pids = node_pids(node)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def replica_nodes(dashboard: str, env: dict[str, str]) -> list[str]:
    """Node ids of the model's live replicas (Ray's state API, in a process of its own: Ray reads
    its authentication settings once per process, and this one's are not the cluster's)."""
    code = (
        "import json, sys; from ray.util.state import list_actors; "
        "a = list_actors(address=sys.argv[1], filters=[('state', '=', 'ALIVE')], detail=True, limit=1000, raise_on_missing_output=False); "
        "print(json.dumps([x.node_id for x in a if f'SERVE_REPLICA::{sys.argv[2]}#' in (x.name or '')]))"
    )
    done = subprocess.run([sys.executable, "-c", code, dashboard, MODEL], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return sorted(json.loads(done.stdout.strip().splitlines()[-1]))


class SyslogSink:
    """HAProxy's request log (RFC 3164 datagrams), kept to explain a failed request: its
    termination state says which side ended it and when (HAProxy's "session state at
    disconnection")."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.lines.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except TimeoutError:
                continue

    def unusual(self, path: str) -> list[str]:
        """Requests for ``path`` that HAProxy retried, or that did not end in a clean 200
        (termination state '----'); "retries" is the last of the five connection counts."""
        found = []
        for line in self.lines:
            m = re.search(r"\s(-?\d{1,3})\s+\d+\s+\S+\s+\S+\s+(\S{4})\s+\d+/\d+/\d+/\d+/\+?(\d+)\s", line)
            if m and path in line and (m.group(1) != "200" or m.group(2) != "----" or m.group(3) != "0"):
                found.append(line.split(": ", 1)[-1].strip())
        return found

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    url = fresh_postgres_url()
    root = tmp_path_factory.mktemp("cluster")
    home = root / "home"
    home.mkdir()
    gcs, dash, head_http, worker_http = free_port(), free_port(), free_port(), free_port()
    lockgate_env = {"LOCKGATE_HOME": str(home), "LOCKGATE_REGISTRY_URL": url, "LOCKGATE_ARTIFACTS": str(root / "artifacts")}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LOCKGATE_"))}
    # Ray 2.60 starts clusters with token authentication; a joining node and every client
    # (`serve deploy`, the state API here) need the cluster's token: one made for this cluster.
    token = root / "ray-auth-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    base_env.update({**INGRESS_ENV, **lockgate_env, **auth})

    def node_env(name: str, http: int) -> dict[str, str]:
        env = dict(base_env, **haproxy_env(http))
        env.update(
            {MARK: name, "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())}
        )
        return env

    head_env = node_env("head", head_http)
    head_env.update(
        {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()), "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port())}
    )
    syslog = SyslogSink()
    head_env["RAY_SERVE_HAPROXY_LOG_TARGET"] = f"127.0.0.1:{syslog.port}"
    head_env.update(ingress_env(head_env))  # HAProxy's log line per request kept: a receiver listens
    worker_env = node_env("worker", worker_http)
    worker_env["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(worker_http)  # its HAProxy, beside the head's on one machine

    # The model: the demo MLP, two replicas of 0.3 CPU (both fit on one node of 1 CPU).
    from lockgate.server.serving.settings import LockgateSettings

    settings = LockgateSettings.from_env(home=str(home), registry_url=url, artifact_dir=str(root / "artifacts"))
    manager = settings.manager()
    folder = root / "model"
    folder.mkdir()
    onnx.save(build_mlp(seed=2), str(folder / "model.onnx"))
    registry = manager.registry()
    registry.register(
        folder / "model.onnx", MODEL, created_by="tester", config={"max_batch_size": 32, "replicas": 2, "num_cpus": 0.3}
    )
    governance = manager.plugin("governance")
    governance.decide("approve", MODEL, 1, actor="reviewer")
    # A server deployed from a Serve config takes no anonymous callers, keys or not: the test has one.
    key, _ = governance.create_key("tester", ["admin"], ["*"], actor="tester")
    auth = {"authorization": f"Bearer {key}"}
    registry.set_alias(MODEL, "production", 1, actor="tester")

    # The Serve config file of examples/, pointed at this cluster's database, port and model.
    doc = yaml.safe_load((EXAMPLES / "serve" / "lockgate.yaml").read_text())
    doc["http_options"] = {"host": "127.0.0.1", "port": head_http}
    control = doc["applications"][0]
    control["runtime_env"] = {"env_vars": lockgate_env}
    doc["applications"] = [control, {**control, "name": MODEL, "route_prefix": f"/v2/models/{MODEL}", "args": {"model": MODEL}}]
    config = root / "serve.yaml"
    config.write_text(yaml.safe_dump(doc))

    def run(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout

    ray = str(BIN / "ray")
    try:
        run(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--num-cpus=1",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                "--disable-usage-stats",
            ],
            head_env,
        )
        run(
            [ray, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
            worker_env,
        )
        dashboard = f"http://127.0.0.1:{dash}"
        run([str(BIN / "serve"), "deploy", str(config), "--address", dashboard], head_env)
        heads = [f"http://127.0.0.1:{head_http}", f"http://127.0.0.1:{worker_http}"]
        for base in heads:
            wait_ready(base, timeout=180)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (
                requests.get(f"{heads[0]}/v2/models/{MODEL}/ready", headers=auth, timeout=5).status_code == 200
                and len(replica_nodes(dashboard, head_env)) == 2
            ):
                break
            time.sleep(1)
        yield {"head": heads[0], "worker": heads[1], "dashboard": dashboard, "env": head_env, "haproxy_log": syslog, "auth": auth}
    finally:
        for node in ("worker", "head"):
            kill_node(node)
        syslog.close()
        # This process's audit writer (the key and approval above were recorded): stopped now,
        # not at exit, when later tests have dropped its tables.
        manager.plugin("audit").close()


def test_replicas_spread_over_both_nodes_and_either_ingress_answers(cluster):
    nodes = replica_nodes(cluster["dashboard"], cluster["env"])
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    for base in (cluster["head"], cluster["worker"]):
        for _ in range(20):
            r = requests.post(f"{base}/v2/models/{MODEL}/infer", json=ROW, headers=cluster["auth"], timeout=30)
            assert r.status_code == 200 and r.headers["server"] == "lockgate", (base, r.status_code, r.text)
            assert len(r.json()["outputs"][0]["data"]) == 10


def test_a_killed_node_loses_no_answer_and_no_audit_record(cluster):
    dashboard, url = cluster["dashboard"], f"{cluster['head']}/v2/models/{MODEL}/infer"
    before = replica_nodes(dashboard, cluster["env"])
    codes: Counter = Counter()
    answered: list[str] = []
    errors: list[str] = []
    t0 = time.monotonic()
    lock, stop = threading.Lock(), threading.Event()

    malformed: list[str] = []  # answers of the wrong form, seen by a client thread

    def client() -> None:
        with requests.Session() as session:
            session.headers.update(cluster["auth"])
            while not stop.is_set():
                try:
                    r = session.post(url, json=ROW, timeout=60)
                except requests.RequestException as e:
                    code: object = type(e).__name__
                    with lock:
                        errors.append(f"{time.monotonic() - t0:.2f} s: {e}")
                else:
                    code = r.status_code
                    kind = r.headers.get("content-type", "")
                    if r.status_code == 503 and not kind.startswith("application/json"):
                        with lock:  # asserted in the test's thread, after the clients stop
                            malformed.append(f"503 with content-type {kind!r}: {r.text[:200]}")
                    elif r.status_code == 500:  # HAProxy's own error page (Serve's error file), not a replica's
                        with lock:
                            if kind != "text/plain" or r.text != "Internal Server Error":
                                malformed.append(f"500 not HAProxy's own: {kind!r} {r.text[:200]}")
                            errors.append(f"{time.monotonic() - t0:.2f} s: HAProxy's 500")
                with lock:
                    codes[code] += 1
                    if code == 200:
                        answered.append(r.headers["lockgate-request-id"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        killed = kill_node("worker")
        assert killed
        t_kill = time.monotonic()
        # the killed node's replica comes back on the head
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            nodes = replica_nodes(dashboard, cluster["env"])
            if len(nodes) == 2 and len(set(nodes)) == 1 and nodes[0] in before:
                break
            time.sleep(1)
        recovered = time.monotonic() - t_kill
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    assert not any(t.is_alive() for t in threads), "a client thread did not stop"
    assert not malformed, malformed
    assert len(nodes) == 2 and len(set(nodes)) == 1, f"replicas not back on the head: {nodes}"
    # Answers or clean 503s only: HAProxy resends what the killed node's replica held. With
    # `retry-on` alone, in 3 of 11 runs 1-2 requests ended with the connection closed without
    # response and no line in HAProxy's log (printed with them); `option http-buffer-request`
    # ended that (docs/operations.md, test_ingress_replay.py).
    closed = [e for e in errors if "without response" in e]
    unusual = cluster["haproxy_log"].unusual(f"/v2/models/{MODEL}/infer")  # HAProxy's side of anything but a clean answer
    assert set(codes) <= {200, 503}, (codes, errors, unusual)
    assert codes[200] > 0
    # every answered request is in the audit log (PostgreSQL), and the chain verifies
    env = {
        **cluster["env"],
        "LOCKGATE_API_KEY": cluster["auth"]["authorization"].split(" ", 1)[1],
    }  # keys exist: the CLI needs one
    lockgate = str(BIN / "lockgate")
    export = subprocess.run(
        [lockgate, "audit", "export", "--kind", "infer", "--model", MODEL, "--format", "jsonl"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    recorded = {json.loads(line)["request_id"] for line in export.stdout.splitlines() if line.strip()}
    missing = [rid for rid in answered if rid not in recorded]
    assert not missing, f"{len(missing)} answered requests have no audit record"
    verify = subprocess.run([lockgate, "audit", "verify"], env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(
        f"\nnode killed: replica back on the head in {recovered:.1f} s; clients saw {dict(codes)}; "
        f"{len(answered)} answers, all in the audit log; closed without response: {closed}; "
        f"HAProxy logged {sum(f'/v2/models/{MODEL}/infer' in line for line in cluster['haproxy_log'].lines)} of these requests, "
        f"unusual: {unusual}"
    )
