"""Every touch of a private or undocumented Ray Serve name lockgate makes, in one place.

lockgate depends on these (ray[serve] is pinned to the range they were checked against):

- ``ray.serve._private.replica.start_asgi_http_server``: the hook where a model replica puts
  its own HTTP listener in place of the uvicorn server Serve starts (``install_listener``);
- the ``RAY_SERVE_*`` environment variables of Serve's HAProxy ingress and fallback proxy,
  read by ``ray.serve._private.constants`` (``INGRESS_ENV``, ``haproxy_env``,
  ``fallback_proxy_ports``, ``haproxy_side_ports``, ``taken_by_ray``);
- Serve's HAProxy template writing ``RAY_SERVE_HAPROXY_RETRY_ON`` verbatim after
  ``retry-on`` in its defaults section, so extra lines ride on that value
  (``haproxy_retry_on``; tests/integration/test_ingress_replay.py renders the config);
- the command lines of the HAProxy processes Serve starts, found by a scan of /proc
  (``haproxy_pids``, ``orphaned_haproxy_pids``);
- the text of Serve's application status, where a replica's start-up exception arrives as a
  traceback (``load_failure``: lockgate's replicas put one marked line in it);
- ``@serve.multiplexed``'s per-replica model cache (``ray.serve.multiplex._ModelMultiplexWrapper``:
  the attribute ``__serve_multiplex_wrapper``, its ``models`` and ``unload_model_lru``), which a
  pool replica reads and evicts from to keep its memory budget in bytes (``multiplexed_models``,
  ``evict_least_recent``); Serve's own limit is a count.

``check()`` verifies each of them against the Ray that is installed and raises StartupError
naming what changed; ``lockgate serve`` runs it before starting Ray.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import LockgateError, ModelLoadError, StartupError

__all__ = [
    "evict_least_recent",
    "multiplexed_models",
    "HAPROXY_REQUEST_TIMEOUT_S",
    "INGRESS_ENV",
    "TESTED_RAY",
    "ReplicaStartFailed",
    "check",
    "fallback_proxy_ports",
    "haproxy_defaults",
    "haproxy_dir",
    "haproxy_env",
    "haproxy_pids",
    "haproxy_retry_on",
    "haproxy_side_ports",
    "ingress_env",
    "install_listener",
    "load_failure",
    "orphaned_haproxy_pids",
    "prepare_haproxy_dir",
    "serve_status",
    "stop_haproxy",
    "taken_by_ray",
]

log = logging.getLogger("lockgate.server")

# The Ray releases these names were checked against (pyproject pins ray[serve] to the same).
TESTED_RAY = ((2, 60), (2, 61))

HAPROXY_REQUEST_TIMEOUT_S = 30


def haproxy_defaults(request_timeout_s: int = HAPROXY_REQUEST_TIMEOUT_S, *, access_log: bool = False) -> tuple[str, ...]:
    """Lines for the defaults section of Serve's HAProxy config that Serve 2.60 has no setting for.

    ``access_log``: keep HAProxy's log line per request. Off by default: Serve's config sends it
    as a syslog datagram to ``RAY_SERVE_HAPROXY_LOG_TARGET`` (127.0.0.1:514), where nothing listens
    unless someone runs a syslog receiver there, and writing and sending it cost HAProxy 4-5 us of
    CPU a request, a fifth of its share (docs/operations.md). A server
    started with ``RAY_SERVE_HAPROXY_LOG_TARGET`` set keeps it (``ingress_env``); Serve's
    ingress metrics, when switched on, log through lines of their own in the frontend."""
    lines = (
        # Wait for the whole request (up to HAProxy's 16 KiB buffer) before picking a replica:
        # HAProxy resends only a request it holds whole, and without this a request with a body
        # whose replica died was often not resent.
        "option http-buffer-request",
        # A request's headers (and its body, up to the buffer) must arrive within this; a client
        # dripping bytes is answered 408 (the client timeout below only bounds silence).
        f"timeout http-request {request_timeout_s}s",
    )
    return lines if access_log else (*lines, "no log")


def haproxy_retry_on(request_timeout_s: int = HAPROXY_REQUEST_TIMEOUT_S, *, access_log: bool = False) -> str:
    """The value for RAY_SERVE_HAPROXY_RETRY_ON: HAProxy's replay policy, then haproxy_defaults().

    Serve writes this value verbatim into its config's defaults section, so lines of their own
    ride on it; tests/integration/test_ingress_replay.py renders Serve's config to keep that true."""
    return "conn-failure empty-response" + "".join(
        f"\n    {line}" for line in haproxy_defaults(request_timeout_s, access_log=access_log)
    )


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
    # No per-request ingress metrics from Serve: HAProxy would send a log datagram per request and
    # Serve's HAProxyManager actor parse it into serve_num_http_requests & co., 21 us of CPU per
    # request out of 129 (bench/cpu_share.py, docs/decisions.md). The replicas count requests,
    # status codes and latency themselves (lockgate_requests, lockgate_request_duration_seconds).
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
}


def ingress_env(environ: Mapping[str, str]) -> dict[str, str]:
    """INGRESS_ENV as a server started with ``environ`` sets it: with HAProxy's log line per
    request kept when ``environ`` names a place to send it (``RAY_SERVE_HAPROXY_LOG_TARGET``: a
    syslog receiver someone runs), off otherwise (``haproxy_defaults``)."""
    if environ.get("RAY_SERVE_HAPROXY_LOG_TARGET"):
        return {**INGRESS_ENV, "RAY_SERVE_HAPROXY_RETRY_ON": haproxy_retry_on(access_log=True)}
    return dict(INGRESS_ENV)


# Serve's own default HAProxy folder, and ours (one per port, so two servers on one machine do not collide).
_HAPROXY_MARKERS = (b"haproxy-serve", b"lockgate-haproxy-")


def prepare_haproxy_dir(port: int) -> Path:
    """Make this port's HAProxy folder, or check the one that is there: it will hold HAProxy's
    admin socket (mode 666, level admin, able to hand out the listening sockets), so it must be
    a real folder owned by this user that no one else can enter. StartupError otherwise: a
    folder another local user made first would let them take the server's sockets."""
    path = haproxy_dir(port)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(
            f"{path} is not a folder (a link or a file is there); remove it, it is HAProxy's folder for port {port}"
        )
    if info.st_uid != os.getuid():
        raise StartupError(
            f"{path} belongs to user id {info.st_uid}, not to this user; remove it: it would hold HAProxy's admin socket"
        )
    if info.st_mode & 0o022:  # others could have put something in it: not ours to trust
        raise StartupError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):o}: others could reach HAProxy's admin socket in it; "
            "remove it, or chmod 700 it"
        )
    if info.st_mode & 0o077:  # ours, others could only look in (Serve makes its folders 755): closed now
        path.chmod(0o700)
    return path


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


# HAProxy's stats and metrics listeners: Serve's variables, and their offsets from the serving
# port (8404 and 9101 for 8000: Serve's own defaults).
_HAPROXY_SIDE_PORTS = {"stats": ("RAY_SERVE_HAPROXY_STATS_PORT", 404), "metrics": ("RAY_SERVE_HAPROXY_METRICS_PORT", 1101)}


def haproxy_side_ports(port: int) -> dict[str, tuple[str, int, bool]]:
    """The ports HAProxy's stats and metrics listeners take for a server on ``port``, by what
    they are: the variable that moves each, the port, and whether the environment set it (else
    it is derived from ``port``, so two servers on one machine do not collide)."""
    out = {}
    for what, (var, offset) in _HAPROXY_SIDE_PORTS.items():
        given = os.environ.get(var)
        out[what] = (var, int(given), True) if given else (var, port + offset, False)
    return out


# The direct-ingress ports Serve's replicas bind, by protocol: the variables that move them, and
# Serve's defaults.
_DIRECT_INGRESS_PORTS = {
    "HTTP": ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", 30000, "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT", 31000),
    "GRPC": ("RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT", 40000, "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT", 41000),
}


def taken_by_ray() -> tuple[range, ...]:
    """The port ranges Ray's processes bind on their own on a node: its workers' (``ray.init``'s
    ``min_worker_port``/``max_worker_port`` defaults) and the direct-ingress ports of Serve's
    replicas, as Serve reads them from the environment."""
    ranges = [range(10002, 20000)]
    for low_var, low, high_var, high in _DIRECT_INGRESS_PORTS.values():
        ranges.append(range(int(os.environ.get(low_var, low)), int(os.environ.get(high_var, high)) + 1))
    return tuple(ranges)


def haproxy_pids(port: int | None = None) -> list[int]:
    """Processes running an HAProxy that Serve started (for lockgate or not); with ``port``, only
    those of the lockgate server on that port: their config is in its folder (``haproxy_env``),
    where Serve puts it one level down, in a folder per Ray node (``<folder>/<node id>/haproxy.cfg``)."""
    pids = []
    folder = None if port is None else (str(haproxy_dir(port)) + os.sep).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"haproxy") and any(m in part for part in cmd for m in _HAPROXY_MARKERS):
            if folder is None or any(part.startswith(folder) for part in cmd):
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


# -- the replica listener hook --------------------------------------------------------------------

_HOOK_MODULE = "ray.serve._private.replica"
_HOOK_NAME = "start_asgi_http_server"
_HOOK_PARAMETERS = ["app", "http_options", "event_loop", "enable_so_reuseport"]


def _hook_problem() -> str | None:
    """What is wrong with Serve's replica HTTP hook, or None when it is as lockgate expects."""
    try:
        from ray.serve._private import replica
    except ImportError as e:
        return f"{_HOOK_MODULE} cannot be imported ({e})"
    original = getattr(replica, _HOOK_NAME, None)
    if original is None:
        return f"{_HOOK_MODULE}.{_HOOK_NAME} no longer exists"
    params = list(inspect.signature(original).parameters)
    if params[: len(_HOOK_PARAMETERS)] != _HOOK_PARAMETERS:
        return f"{_HOOK_MODULE}.{_HOOK_NAME} takes ({', '.join(params)}), not ({', '.join(_HOOK_PARAMETERS)})"
    return None


def install_listener(make_server: Any) -> bool:
    """Make this replica process serve through ``make_server(serve_app)`` (a FastServer
    factory) in place of the uvicorn server Serve would start on the port it assigned. False
    (and a log line) when Serve's hook point is not what lockgate was built against."""
    problem = _hook_problem()
    if problem is not None:
        log.warning("Serve's replica HTTP hook is not available (%s); serving through Serve's direct ingress", problem)
        return False
    from ray.serve._private import replica

    async def start(
        serve_app: Any, http_options: Any, *, event_loop: asyncio.AbstractEventLoop, enable_so_reuseport: bool = False
    ) -> Any:
        host = http_options.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if enable_so_reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, http_options.port))
        except OSError as e:
            sock.close()
            # Serve's replica expects this RuntimeError, with the OSError as its cause.
            raise RuntimeError(f"Failed to bind to address '{host}:{http_options.port}'.") from e
        server = make_server(serve_app)
        task = event_loop.create_task(server.serve(sock))
        return task, server

    setattr(replica, _HOOK_NAME, start)
    return True


# -- start-up failures through Serve's status text ------------------------------------------------

# A replica that cannot start raises ReplicaStartFailed; Serve keeps only the traceback's text in
# the application's status, so the error crosses as this one marked line of JSON.
_FAILURE_MARK = "lockgate-start-failure "
_FAILURE_LINE = re.compile(re.escape(_FAILURE_MARK) + r"(\{.*\})")


class ReplicaStartFailed(ModelLoadError):
    """A model replica could not start; its message carries the structured failure."""

    def __init__(self, model: str, error: LockgateError) -> None:
        version = getattr(error, "version", None)
        reason = getattr(error, "reason", None) or str(error)
        super().__init__(model, version, reason)
        self.args = (_FAILURE_MARK + json.dumps({"model": model, "version": version, "reason": reason}),)


def serve_status() -> dict[str, Any]:
    """Serve's status of each application by name (``serve.status()``, a public call)."""
    from ray import serve

    return dict(serve.status().applications)


def load_failure(app: str, error: BaseException) -> ModelLoadError:
    """Why application ``app`` failed to deploy: the failure its replica marked in Serve's
    status (or in ``error``, what ``serve.run`` raised), else ``error``'s last line."""
    texts = [str(error)]
    try:
        status = serve_status().get(app)
    except Exception:  # noqa: BLE001 - best effort, for the message only
        status = None
    if status is not None:
        texts += [status.message or ""] + [d.message or "" for d in status.deployments.values()]
    for text in texts:
        found = _FAILURE_LINE.findall(text)
        if found:
            data = json.loads(found[-1])
            return ModelLoadError(data["model"], data["version"], data["reason"])
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return ModelLoadError(app, None, lines[-1] if lines else type(error).__name__)


# -- the check at start -------------------------------------------------------------------------------


_MULTIPLEX_ATTR = "__serve_multiplex_wrapper"


def multiplexed_models(owner: Any) -> dict[str, Any]:
    """The models ``@serve.multiplexed`` holds for ``owner`` (a replica), least recently used
    first; empty before its first load."""
    wrapper = getattr(owner, _MULTIPLEX_ATTR, None)
    return {} if wrapper is None else wrapper.models


async def evict_least_recent(owner: Any) -> None:
    """Unload the least recently used model of ``owner``'s multiplexed cache, as Serve does when
    its count limit is reached (it calls the model's ``__del__`` and tells the router)."""
    await getattr(owner, _MULTIPLEX_ATTR).unload_model_lru()


def _multiplex_problem() -> str | None:
    try:
        from ray.serve import multiplex
    except ImportError as e:
        return f"ray.serve.multiplex cannot be imported ({e})"
    wrapper = getattr(multiplex, "_ModelMultiplexWrapper", None)
    if wrapper is None or not inspect.iscoroutinefunction(getattr(wrapper, "unload_model_lru", None)):
        return "ray.serve.multiplex._ModelMultiplexWrapper.unload_model_lru is gone"
    if "self.models = OrderedDict()" not in inspect.getsource(wrapper):
        return "ray.serve.multiplex._ModelMultiplexWrapper no longer keeps its models in self.models"
    from ray.serve import api

    if f'"{_MULTIPLEX_ATTR}"' not in inspect.getsource(api):
        return f"@serve.multiplexed no longer keeps its cache in {_MULTIPLEX_ATTR}"
    return None


def check() -> None:
    """StartupError naming every private or undocumented Ray Serve name that is not as lockgate
    expects in the installed Ray: its version, the replica hook, the environment variables
    Serve's constants read, and the HAProxy template line the retry-on value rides on."""
    import ray

    problems = []
    version = tuple(int(p) for p in re.findall(r"\d+", ray.__version__)[:2])
    low, high = TESTED_RAY
    if not low <= version < high:
        problems.append(f"Ray {ray.__version__} is outside the tested range >={low[0]}.{low[1]},<{high[0]}.{high[1]}")
    for problem in (_hook_problem(), _multiplex_problem()):
        if problem is not None:
            problems.append(problem)
    try:
        from ray.serve._private import constants
    except ImportError as e:
        problems.append(f"ray.serve._private.constants cannot be imported ({e})")
    else:
        source = inspect.getsource(constants)
        names = [
            *INGRESS_ENV,
            *haproxy_env(0),
            *fallback_proxy_ports(0),
            *(var for var, _ in _HAPROXY_SIDE_PORTS.values()),
            *(var for low, _, high, _ in _DIRECT_INGRESS_PORTS.values() for var in (low, high)),
        ]
        missing = [n for n in names if f'"{n}"' not in source]
        if missing:
            problems.append(f"Serve no longer reads {', '.join(missing)} (ray.serve._private.constants)")
    try:
        from ray.serve._private import haproxy_templates
    except ImportError as e:
        problems.append(f"ray.serve._private.haproxy_templates cannot be imported ({e})")
    else:
        if "retry-on {{ config.retry_on }}" not in inspect.getsource(haproxy_templates):
            problems.append(
                "Serve's HAProxy template no longer writes RAY_SERVE_HAPROXY_RETRY_ON as 'retry-on {{ config.retry_on }}'"
            )
    if problems:
        raise StartupError("this Ray Serve differs from the one lockgate was built against: " + "; ".join(problems))
