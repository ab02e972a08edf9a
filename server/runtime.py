"""Starting and stopping lockgate on Ray: the local cluster or a joined one, the ingress, the apps.

The ingress is Serve's HAProxy with direct ingress to the replicas (see
docs/ingress.md for the measurements behind the choice). Ray reads the switches
from the environment when its processes start, so they are set before Ray starts.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._errors import ModelLoadError, StartupError
from .config import ModelConfig
from .settings import LockgateSettings

__all__ = [
    "HAPROXY_REQUEST_TIMEOUT_S",
    "INGRESS_ENV",
    "Runtime",
    "check_port",
    "fallback_proxy_ports",
    "haproxy_defaults",
    "haproxy_env",
    "haproxy_pids",
    "haproxy_retry_on",
    "orphaned_haproxy_pids",
    "stop_haproxy",
]

HAPROXY_REQUEST_TIMEOUT_S = 30


def haproxy_defaults(request_timeout_s: int = HAPROXY_REQUEST_TIMEOUT_S) -> tuple[str, ...]:
    """Lines for the defaults section of Serve's HAProxy config that Serve 2.60 has no setting for."""
    return (
        # Wait for the whole request (up to HAProxy's 16 KiB buffer) before picking a replica:
        # HAProxy resends only a request it holds whole, and without this a request with a body
        # whose replica died was often not resent.
        "option http-buffer-request",
        # A request's headers (and its body, up to the buffer) must arrive within this; a client
        # dripping bytes is answered 408 (the client timeout below only bounds silence).
        f"timeout http-request {request_timeout_s}s",
    )


def haproxy_retry_on(request_timeout_s: int = HAPROXY_REQUEST_TIMEOUT_S) -> str:
    """The value for RAY_SERVE_HAPROXY_RETRY_ON: HAProxy's replay policy, then haproxy_defaults().

    Serve writes this value verbatim into its config's defaults section, so lines of their own
    ride on it; tests/integration/test_ingress_replay.py renders Serve's config to keep that true."""
    return "conn-failure empty-response" + "".join(f"\n    {line}" for line in haproxy_defaults(request_timeout_s))


INGRESS_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # HAProxy drops a stopping replica from its backends at once; the 30 s default
    # drain only delays shutdown and redeploys.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # A replica that dies holding a request (its node lost, its process killed) closes the
    # connection without an answer; HAProxy then sends the request to another replica instead
    # of answering 502 (or, on a kept-alive connection, closing it without any answer).
    # Inference is safe to replay: its only effect is its audit record, and each attempt has its
    # own. The haproxy_defaults() lines ride on this value.
    "RAY_SERVE_HAPROXY_RETRY_ON": haproxy_retry_on(),
    # HAProxy waits this long for a client that has stopped sending (a half-sent request, an
    # idle connection) before it closes the connection; Serve's default is an hour.
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
}

Progress = Callable[[str], None]

# Serve's own default HAProxy folder, and ours (one per port, so two servers on one machine do not collide).
_HAPROXY_MARKERS = (b"haproxy-serve", b"lockgate-haproxy-")


def haproxy_dir(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"lockgate-haproxy-{port}"


def fallback_proxy_ports(port: int) -> dict[str, int]:
    """Ports of Serve's fallback proxy for a server on ``port`` (8500 and 9500 for 8000: Serve's own).

    With HAProxy, Serve runs one Python proxy on the head node that HAProxy sends a model's
    requests to while the model has no replica (scale from zero). Serve binds it on fixed ports
    with SO_REUSEPORT, so two servers on one machine would share it, and the kernel would hand
    one server's requests to the other's proxy and replicas. One pair per serving port keeps
    them apart."""
    return {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": port + 500, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": port + 1500}


def haproxy_env(port: int) -> dict[str, str]:
    """Where Serve's HAProxy keeps its config, sockets and state for a server on ``port``."""
    base = haproxy_dir(port)
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
    }


def haproxy_pids() -> list[int]:
    """Processes running an HAProxy that Serve started (for lockgate or not)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"haproxy") and any(m in part for part in cmd for m in _HAPROXY_MARKERS):
            pids.append(int(entry.name))
    return pids


def orphaned_haproxy_pids() -> list[int]:
    """Serve HAProxy processes whose Ray is gone (re-parented to init)."""
    orphans = []
    for pid in haproxy_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == "1":
            orphans.append(pid)
    return orphans


def check_port(host: str, port: int, what: str = "") -> None:
    """StartupError when ``host:port`` cannot be bound, naming a leftover HAProxy if there is one."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            hint = ""
            stale = orphaned_haproxy_pids()
            if stale:
                hint = (
                    f"; an HAProxy left by an earlier run holds it (pid {', '.join(map(str, stale))}):"
                    " `lockgate cleanup` stops it"
                )
            label = f" for {what}" if what else ""
            raise StartupError(f"cannot listen on {host}:{port}{label}: {e.strerror}{hint}") from None


def stop_haproxy(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds, the given HAProxy processes."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while time.monotonic() < end and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


@dataclass
class Runtime:
    """A running lockgate: Ray (started here or joined), Serve, and one application per model."""

    host: str
    port: int
    address: str | None = None
    progress: Progress = print
    verbose: bool = False
    started_ray: bool = False
    apps: tuple[str, ...] = ()
    _haproxy_before: frozenset[int] = frozenset()

    def start(self) -> None:
        import ray
        from ray import serve

        if self.address is None:
            check_port(self.host, self.port)
            # HAProxy's own stats and metrics listeners (all interfaces; Ray has no address setting).
            for var, default in (("RAY_SERVE_HAPROXY_STATS_PORT", 8404), ("RAY_SERVE_HAPROXY_METRICS_PORT", 9101)):
                check_port("0.0.0.0", int(os.environ.get(var, default)), what=f"HAProxy's {var.split('_')[-2].lower()} port (set {var} to move it)")
            for var, fallback in fallback_proxy_ports(self.port).items():
                check_port(self.host, fallback, what=f"Serve's fallback proxy ({var.split('_')[-2]}; --port moves it)")
        if self.address is None:
            haproxy_dir(self.port).mkdir(mode=0o700, exist_ok=True)
            for key, value in INGRESS_ENV.items():
                os.environ.setdefault(key, value)
            # Always this port's folder: values inherited from a process that ran a server on
            # another port (a test session, a supervisor) would make two HAProxies share one
            # config and admin socket.
            os.environ.update(haproxy_env(self.port))
            os.environ.update({k: str(v) for k, v in fallback_proxy_ports(self.port).items()})
        self._haproxy_before = frozenset(haproxy_pids())
        self.progress(f"starting Ray ({'local' if self.address is None else self.address}) ...")
        t0 = time.monotonic()
        try:
            ray.init(
                # "local": a Ray of our own, never a cluster some other process left running here.
                address=self.address or "local",
                include_dashboard=False,
                log_to_driver=self.verbose,
                configure_logging=self.verbose,
            )
        except Exception as e:
            raise StartupError(f"cannot start or join Ray: {e}") from None
        self.started_ray = self.address is None
        serve.start(http_options={"host": self.host, "port": self.port})
        self.progress(f"Ray and Serve up in {time.monotonic() - t0:.1f} s")

    def deploy(self, models: dict[str, ModelConfig], settings: LockgateSettings) -> None:
        """Deploy the control application, then one application per model, each waited for."""
        from ray import serve

        from . import metrics
        from .deployment import CONTROL_APP, CONTROL_PREFIX, build_control_app, build_model_app, route_prefix

        if self.started_ray:  # a server of our own starts with empty metrics; a joined cluster keeps its totals
            metrics.reset(metrics.metrics_dir(settings.home, settings.options))
        serve.run(build_control_app(sorted(models), settings), name=CONTROL_APP, route_prefix=CONTROL_PREFIX)
        self.apps = (CONTROL_APP,)
        for name, config in models.items():
            t0 = time.monotonic()
            self.progress(f"loading model {name} ...")
            try:
                serve.run(build_model_app(name, config, settings), name=name, route_prefix=route_prefix(name))
            except Exception as e:
                raise ModelLoadError(name, None, _root_cause(_failure_text(name) or str(e))) from None
            self.apps += (name,)
            self.progress(f"  {name} ready in {time.monotonic() - t0:.1f} s")

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
            # Ours only: whatever HAProxy appeared after this runtime started Ray.
            stopped = stop_haproxy(sorted(set(haproxy_pids()) - self._haproxy_before))
            if stopped:
                self.progress(f"stopped HAProxy (pid {', '.join(map(str, stopped))})")


def _failure_text(app: str) -> str:
    """What Serve knows of why ``app`` failed: its deployments' messages (replica tracebacks)."""
    from ray import serve

    try:
        status = serve.status().applications.get(app)
    except Exception:  # noqa: BLE001 - best effort, for the message only
        return ""
    if status is None:
        return ""
    parts = [status.message or ""] + [d.message or "" for d in status.deployments.values()]
    return "\n".join(p for p in parts if p)


def _root_cause(text: str) -> str:
    """The most telling line of a Serve deployment failure (the replica's exception)."""
    lines = text.strip().splitlines()
    for line in reversed(lines):
        if "ModelLoadError" in line or "ConfigError" in line:
            reason = line.split(":", 1)[-1].strip()
            return reason.split(" failed to load: ", 1)[-1]
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return "unknown error"
