"""What `lockgate serve` checks and sets before Ray starts (no Ray is started here)."""

from __future__ import annotations

import os
import socket

import pytest

from lockgate.server.errors import StartupError
from lockgate.server.hosting import serve_compat
from lockgate.server.hosting.runtime import Runtime, outgoing_ports, port_or_free, quiet_ports
from lockgate.server.hosting.serve_compat import fallback_proxy_ports, taken_by_ray


def _held_with_free_port_below() -> socket.socket:
    """A listening socket on a port whose serving port (500 below) is free: then the fallback
    proxy's port, not the serving port, is what a server on it fails to bind."""
    while True:
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        if held.getsockname()[1] > 1524 and _free(held.getsockname()[1] - 500):
            held.listen()
            return held
        held.close()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_serving_port_has_its_own_fallback_proxy_ports():
    assert fallback_proxy_ports(8000) == {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500}
    a, b = fallback_proxy_ports(20000), fallback_proxy_ports(20016)
    assert not set(a.values()) & set(b.values())


_PORT_VARS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
)


def test_a_taken_fallback_proxy_port_is_replaced_by_a_free_one_never_shared(monkeypatch):
    for var in _PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    with _held_with_free_port_below() as held:
        taken = held.getsockname()[1]
        runtime = Runtime(host="127.0.0.1", port=taken - 500, progress=lambda line: None)
        runtime.claim_ports()
        chosen = int(os.environ["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"])
        assert chosen != taken and _free(chosen)
        assert runtime.ports["Serve's fallback proxy (HTTP)"] == chosen


def _quiet_serving_port() -> int:
    """A free port whose derived ports (+1, +404, +500, +1101, +1500) are free and quiet too."""
    quiet = set(quiet_ports())
    for port in sorted(quiet):
        if all(p in quiet and _free(p) for p in (port, port + 1, port + 404, port + 500, port + 1101, port + 1500)):
            return port
    pytest.skip("no free serving port with quiet derived ports on this machine")


def test_every_other_port_is_derived_from_the_serving_port_and_printed(monkeypatch):
    for var in _PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    port = _quiet_serving_port()
    runtime = Runtime(host="127.0.0.1", port=port, progress=lambda line: None, grpc_port=port + 1)
    runtime.claim_ports()
    assert runtime.ports == {
        "gRPC": port + 1,
        "HAProxy stats": port + 404,
        "HAProxy metrics": port + 1101,
        "Serve's fallback proxy (HTTP)": port + 500,
        "Serve's fallback proxy (GRPC)": port + 1500,
    }
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == str(port + 404)


def test_derived_ports_in_the_kernels_outgoing_range_are_chosen_below_it_and_clear_of_ray(monkeypatch):
    """A serving port high enough that its derived ports fall in the range the kernel hands to
    outgoing connections: those ports are chosen below the range instead (a connection of
    Ray's could take one between the check and HAProxy's bind), outside Ray's own ranges."""
    for var in _PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    outgoing = outgoing_ports()
    port = outgoing.start - 300  # stats at +404, metrics at +1101, fallback at +500 and +1500: all outgoing
    runtime = Runtime(host="127.0.0.1", port=port, progress=lambda line: None)
    runtime.claim_ports()
    chosen = {what: p for what, p in runtime.ports.items() if what != "gRPC"}
    assert len(chosen) == 4 and len(set(chosen.values())) == 4, chosen
    for what, p in chosen.items():
        assert p not in outgoing and p < outgoing.start, (what, p)
        assert not any(p in taken for taken in taken_by_ray()), (what, p)
        assert _free(p), (what, p)
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == str(chosen["HAProxy stats"])


def test_a_taken_derived_port_is_replaced_by_a_quiet_one_not_the_kernels_pick(monkeypatch):
    for var in _PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    port = _quiet_serving_port()
    with socket.socket() as held:
        held.bind(("0.0.0.0", port + 404))
        held.listen()
        replaced = port_or_free("0.0.0.0", port + 404)
        assert replaced != port + 404 and replaced in quiet_ports() and _free(replaced)
        assert port_or_free("0.0.0.0", port + 1101) == port + 1101  # a free quiet port is kept


def test_a_port_set_explicitly_and_taken_is_refused_naming_its_variable(monkeypatch):
    for var in _PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", str(held.getsockname()[1]))
        with pytest.raises(StartupError, match="HAProxy's stats port \\(set RAY_SERVE_HAPROXY_STATS_PORT to move it\\)"):
            Runtime(host="127.0.0.1", port=free_port(), progress=lambda line: None).claim_ports()


def test_every_private_serve_name_lockgate_touches_is_where_it_was():
    """Fails (never skips) when the installed Ray moved one of them: serve_compat.check names it."""
    serve_compat.check()


def test_the_check_names_a_moved_replica_hook(monkeypatch):
    from ray.serve._private import replica

    async def moved(app, options, *, loop):  # a changed signature
        raise AssertionError("never called")

    monkeypatch.setattr(replica, "start_asgi_http_server", moved)
    with pytest.raises(StartupError, match=r"start_asgi_http_server takes \(app, options, loop\)"):
        serve_compat.check()
    monkeypatch.delattr(replica, "start_asgi_http_server")
    with pytest.raises(StartupError, match="start_asgi_http_server no longer exists"):
        serve_compat.check()


def test_the_check_names_a_ray_outside_the_tested_range(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "__version__", "2.61.0")
    with pytest.raises(StartupError, match=r"Ray 2.61.0 is outside the tested range >=2.60,<2.61"):
        serve_compat.check()


def test_the_check_names_an_environment_variable_serve_stopped_reading(monkeypatch):
    monkeypatch.setitem(serve_compat.INGRESS_ENV, "RAY_SERVE_NO_SUCH_SETTING", "1")
    with pytest.raises(StartupError, match="Serve no longer reads RAY_SERVE_NO_SUCH_SETTING"):
        serve_compat.check()


def test_a_replica_start_failure_crosses_serves_status_text_whole():
    """What a replica raises reaches the driver only as traceback text in Serve's status; the
    marked line brings back the model, version and reason."""
    from lockgate.server.errors import ModelLoadError

    failure = serve_compat.ReplicaStartFailed("iris", ModelLoadError("iris", 3, "artifact changed"))
    text = f"Traceback (most recent call last):\n  ...\nlockgate...ReplicaStartFailed: {failure}\n"
    error = serve_compat.load_failure("no-such-app-here", RuntimeError(text))
    assert (error.model, error.version, error.reason) == ("iris", 3, "artifact changed")
    assert str(error) == "model iris version 3 failed to load: artifact changed"


def test_a_haproxy_folder_someone_else_could_reach_is_refused(monkeypatch, tmp_path):
    """HAProxy's admin socket (mode 666, level admin) lives in this folder: one made first by
    another local user, or open to others, would hand them the server's listening sockets."""
    monkeypatch.setattr(serve_compat.tempfile, "gettempdir", lambda: str(tmp_path))
    made = serve_compat.prepare_haproxy_dir(8000)
    assert made == tmp_path / "lockgate-haproxy-8000" and (made.stat().st_mode & 0o777) == 0o700
    assert serve_compat.prepare_haproxy_dir(8000) == made  # ours, as it should be: used again
    open_folder = tmp_path / "lockgate-haproxy-8001"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    with pytest.raises(StartupError, match="has mode 777: others could reach HAProxy's admin socket"):
        serve_compat.prepare_haproxy_dir(8001)
    readable = tmp_path / "lockgate-haproxy-8004"  # ours, made by Serve (755): closed, then used
    readable.mkdir()
    readable.chmod(0o755)
    assert serve_compat.prepare_haproxy_dir(8004) == readable and (readable.stat().st_mode & 0o777) == 0o700
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "lockgate-haproxy-8002").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StartupError, match="is not a folder"):
        serve_compat.prepare_haproxy_dir(8002)


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a folder to another user (CI runs as root)")
def test_a_haproxy_folder_another_user_made_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(serve_compat.tempfile, "gettempdir", lambda: str(tmp_path))
    theirs = tmp_path / "lockgate-haproxy-8003"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # as the user nobody would have made it
    with pytest.raises(StartupError, match="belongs to user id 65534, not to this user"):
        serve_compat.prepare_haproxy_dir(8003)


def test_a_server_stops_only_the_haproxy_of_its_own_port():
    """Two servers on one machine: the HAProxy processes of a server are told apart by their
    config in its port's folder, so stopping one never stops the other's (whose reloads give it
    new processes while the first one runs)."""
    import subprocess
    import sys

    from lockgate.server.hosting.serve_compat import haproxy_dir, haproxy_pids

    fakes = {}
    for port in (40001, 4000):  # one port's folder name is a prefix of the other's
        # where Serve puts it: a folder per Ray node under the server's folder
        config = str(haproxy_dir(port) / "3100969a1274ed096f61abc396500c80d1c1c03d91d16d8674e37e49" / "haproxy.cfg")
        fakes[port] = subprocess.Popen(
            ["/usr/sbin/haproxy", "-c", "import time; time.sleep(60)", "-db", "-f", config], executable=sys.executable
        )
    try:
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not set(p.pid for p in fakes.values()) <= set(haproxy_pids()):
            time.sleep(0.05)
        assert {p.pid for p in fakes.values()} <= set(haproxy_pids())
        assert fakes[40001].pid in haproxy_pids(40001) and fakes[4000].pid not in haproxy_pids(40001)
        assert fakes[4000].pid in haproxy_pids(4000) and fakes[40001].pid not in haproxy_pids(4000)
    finally:
        for p in fakes.values():
            p.kill()
            p.wait()
