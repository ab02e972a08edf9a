"""Starting and stopping lockgate on Ray: the local cluster or a joined one, the ingress, the apps.

The ingress is Serve's HAProxy with direct ingress to the replicas (see
docs/ingress.md for the measurements behind the choice). Ray reads the switches
from the environment when its processes start, so they are set before Ray starts.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, StartupError
from ..serving.config import ModelConfig
from ..serving.logs import adopt
from ..serving.settings import LockgateSettings, host_port
from .serve_compat import (
    check,
    fallback_proxy_ports,
    haproxy_env,
    haproxy_pids,
    haproxy_side_ports,
    ingress_env,
    load_failure,
    orphaned_haproxy_pids,
    prepare_haproxy_dir,
    stop_haproxy,
    taken_by_ray,
)

__all__ = ["Runtime", "check_port", "outgoing_ports", "port_or_free", "quiet_ports"]

Progress = Callable[[str], None]


def _port_released(host: str, port: int, within_s: float) -> bool:
    """Whether a server could listen on ``host:port`` (binding with SO_REUSEADDR, as servers do:
    the old server's closed connections in TIME_WAIT do not count), waiting up to ``within_s``."""
    end = time.monotonic() + within_s
    while _bind_error(host, port, reuse=True) is not None:
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return True


def _bind_error(host: str, port: int, *, reuse: bool) -> OSError | None:
    """Why ``host:port`` cannot be bound now (None: it can)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def outgoing_ports() -> range:
    """The range the kernel draws outgoing connections' local ports (and port 0's) from."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


# Where a port chosen for a side listener is looked for: from here up to the kernel's outgoing
# range, above the ports servers and Ray's workers usually take.
_QUIET_FROM = 28000


def port_or_free(host: str, port: int, avoid: Collection[int] = ()) -> int:
    """``port`` when it can be bound on ``host`` now and lies outside the ports the kernel and Ray
    hand out on their own; else a free port between 28000 and the kernel's outgoing range that
    Ray does not use either (``quiet_ports``), the first from a place that depends on ``port``.
    ``avoid``: ports already chosen for other listeners, not bound yet.

    Such a port is bound later by another process (HAProxy, Serve's fallback proxy). Were it a
    port of the kernel's outgoing range, one of the many connections Ray's processes open while
    a server starts could take it in between: a start failed so ("cannot bind socket" for
    HAProxy's stats port, chosen by the kernel)."""
    ray = taken_by_ray()
    if port not in avoid and port not in outgoing_ports() and not any(port in r for r in ray):
        if _bind_error(host, port, reuse=True) is None:
            return port
    candidates = quiet_ports()
    start = port % len(candidates) if candidates else 0
    for candidate in (*candidates[start:], *candidates[:start]):
        if candidate not in avoid and _bind_error(host, candidate, reuse=True) is None:
            return candidate
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))  # nothing quiet is free: the kernel's pick, as a last resort
        free: int = s.getsockname()[1]
        return free


def quiet_ports() -> list[int]:
    """Ports from 28000 up to the kernel's outgoing range that Ray does not bind on its own."""
    top = outgoing_ports().start
    ray = taken_by_ray()
    return [p for p in range(min(_QUIET_FROM, top), top) if not any(p in r for r in ray)]


def check_port(host: str, port: int, what: str = "") -> None:
    """StartupError when ``host:port`` cannot be bound, naming a leftover HAProxy if there is one."""
    e = _bind_error(host, port, reuse=True)
    if e is not None:
        hint = ""
        stale = orphaned_haproxy_pids()
        if stale:
            hint = f"; an HAProxy left by an earlier run holds it (pid {', '.join(map(str, stale))}): `lockgate cleanup` stops it"
        label = f" for {what}" if what else ""
        raise StartupError(f"cannot listen on {host}:{port}{label}: {e.strerror}{hint}")


@dataclass
class Runtime:
    """A running lockgate: Ray (started here or joined), Serve, and one application per model."""

    host: str
    port: int
    address: str | None = None
    progress: Progress = print
    verbose: bool = False
    forward_logs: bool = False  # the replicas' output to this process (JSON logs) without Ray's own logging
    json_logs: bool = False  # every line this process prints is a JSON object (lockgate.server.serving.logs)
    grpc_port: int = 0  # the gRPC ingress's port (0: none); checked free before Ray starts
    started_ray: bool = False
    ports: dict[str, int] = field(default_factory=dict)  # every other port it takes, by what; printed
    apps: tuple[str, ...] = ()
    _haproxy_before: frozenset[int] = frozenset()

    def claim_ports(self) -> None:
        """Check the serving ports and choose every other port this server takes (before Ray
        starts, which reads them from the environment): derived from ``port``, or a free one
        where that one is taken or is a port the kernel or Ray hand out (``port_or_free``); a
        port set explicitly is checked and refused, named, when taken. ``ports`` says what was
        chosen."""
        check_port(self.host, self.port)
        if self.grpc_port:
            check_port(self.host, self.grpc_port, what="gRPC (--grpc-port moves it; 0 turns gRPC off)")
            self.ports["gRPC"] = self.grpc_port
        # HAProxy's own stats and metrics listeners (all interfaces; Ray has no address
        # setting): derived from --port, or a quiet free port (``port_or_free``), unless set.
        for what, (var, port, given) in haproxy_side_ports(self.port).items():
            if given:
                check_port("0.0.0.0", port, what=f"HAProxy's {what} port (set {var} to move it)")
            else:
                port = port_or_free("0.0.0.0", port, avoid={self.port, *self.ports.values()})
            os.environ[var] = str(port)
            self.ports[f"HAProxy {what}"] = port
        # Serve's fallback proxy binds with SO_REUSEPORT: a port another server's proxy holds
        # would be shared with it, so a taken one is replaced by a free one.
        for var, fallback in fallback_proxy_ports(self.port).items():
            port = port_or_free(self.host, fallback, avoid={self.port, *self.ports.values()})
            os.environ[var] = str(port)
            self.ports[f"Serve's fallback proxy ({var.split('_')[-2]})"] = port

    def start(self) -> None:
        import ray
        from ray import serve

        check()  # every private Ray Serve name lockgate relies on is still where it was
        if self.address is None:
            self.claim_ports()
        if self.address is None:
            prepare_haproxy_dir(self.port)
            for key, value in ingress_env(os.environ).items():
                os.environ.setdefault(key, value)
            # Always this port's folder: values inherited from a process that ran a server on
            # another port (a test session, a supervisor) would make two HAProxies share one
            # config and admin socket.
            os.environ.update(haproxy_env(self.port))
        self._haproxy_before = frozenset(haproxy_pids())
        if self.json_logs:
            adopt("ray", "ray.serve")
        self.progress(f"starting Ray ({'local' if self.address is None else self.address}) ...")
        t0 = time.monotonic()
        try:
            ray.init(
                # "local": a Ray of our own, never a cluster some other process left running here.
                address=self.address or "local",
                include_dashboard=False,
                log_to_driver=self.verbose or self.forward_logs,
                configure_logging=self.verbose,
            )
        except Exception as e:  # noqa: BLE001 - Ray raises many unrelated types here; each is a failed start
            raise StartupError(f"cannot start or join Ray: {e}") from None
        self.started_ray = self.address is None
        serve.start(http_options={"host": self.host, "port": self.port})
        if self.json_logs:
            adopt("ray", "ray.serve")
        self.progress(f"Ray and Serve up in {time.monotonic() - t0:.1f} s")

    def deploy(self, models: dict[str, ModelConfig], settings: LockgateSettings) -> None:
        """Deploy the control application, then one application per model, each waited for."""
        from ray import serve

        from ..serving.config import pool_options
        from . import metrics
        from .deployments import CONTROL_APP, CONTROL_PREFIX, build_control_app, build_model_app, route_prefix
        from .pool import build_pool_app, pool_app

        if self.started_ray:  # a server of our own starts with empty metrics; a joined cluster keeps its totals
            metrics.reset(settings.metrics_dir)
        pools = pool_options(settings.options)
        by_pool: dict[str, dict[str, ModelConfig]] = {}
        for name, config in models.items():
            if config.pool is not None:
                if config.pool not in pools:
                    known = ", ".join(sorted(pools)) or "none"
                    raise ConfigError(
                        f"names pool '{config.pool}', which the server configuration does not define (pools: {known})",
                        source=f"model {name}",
                    )
                by_pool.setdefault(config.pool, {})[name] = config
        pooled = {name: pool_app(pool) for pool, members in by_pool.items() for name in members}
        serve.run(build_control_app(sorted(models), settings, pooled=pooled), name=CONTROL_APP, route_prefix=CONTROL_PREFIX)
        self.apps = (CONTROL_APP,)
        for pool, members in by_pool.items():
            t0 = time.monotonic()
            self.progress(f"starting pool {pool} ({len(members)} models, loaded on first request) ...")
            serve.run(build_pool_app(pool, members, settings, pools[pool]), name=pool_app(pool), route_prefix=None)
            self.apps += (pool_app(pool),)
            self.progress(f"  pool {pool} ready in {time.monotonic() - t0:.1f} s")
        for name, config in models.items():
            if name in pooled:
                continue
            t0 = time.monotonic()
            self.progress(f"loading model {name} ...")
            try:
                serve.run(build_model_app(name, config, settings), name=name, route_prefix=route_prefix(name))
            except Exception as e:  # noqa: BLE001 - whatever Serve raised, the replica's marked failure says why
                raise load_failure(name, e) from None
            self.apps += (name,)
            self.progress(f"  {name} ready in {time.monotonic() - t0:.1f} s")
        if settings.grpc_address is not None:
            self._wait_grpc_routes()

    def _wait_grpc_routes(self, timeout: float = 15.0) -> None:
        """Until the gRPC ingress routes to every model's running replicas (they register within
        a second of starting; the control replica's readiness waits for it), so the server is
        reported up only once gRPC reaches them too."""
        import urllib.error
        import urllib.request

        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        url = f"http://{host_port(host, self.port)}/v2/health/ready"
        deadline = time.monotonic() + timeout
        why = "no answer"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError as e:
                why = e.read().decode("utf-8", "replace")
            except OSError as e:
                why = str(e)
            time.sleep(0.1)
        self.progress(f"  the server is not ready over gRPC yet: {why}")

    def shutdown(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                if self.started_ray:
                    serve.shutdown()
                else:
                    for name in self.apps:
                        serve.delete(name)
            finally:
                ray.shutdown()
        if self.started_ray:
            # Ours only: an HAProxy that appeared after this runtime started Ray and runs this
            # port's config. Another server's HAProxy also gets a new process when it reloads its
            # config (an application deployed, a replica added), and must be left alone.
            stopped = stop_haproxy(sorted(set(haproxy_pids(self.port)) - self._haproxy_before))
            if stopped:
                self.progress(f"stopped HAProxy (pid {', '.join(map(str, stopped))})")
            # A process that is still exiting (HAProxy, killed with Ray) holds the serving port for
            # a moment: "stopped" means the port can be taken again.
            if not _port_released(self.host, self.port, within_s=10.0):
                self.progress(f"port {self.port} is still held by another process after the stop")
