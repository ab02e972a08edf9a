"""What `lockgate serve` checks and sets before Ray starts (no Ray is started here)."""

from __future__ import annotations

import socket

import pytest

from lockgate.server.errors import StartupError
from lockgate.server.hosting.runtime import Runtime
from lockgate.server.hosting.serve_compat import INGRESS_ENV, fallback_proxy_ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_serving_port_has_its_own_fallback_proxy_ports():
    assert fallback_proxy_ports(8000) == {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500}
    a, b = fallback_proxy_ports(20000), fallback_proxy_ports(20016)
    assert not set(a.values()) & set(b.values())


def test_a_server_refuses_to_start_when_its_fallback_proxy_port_is_taken(monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
    monkeypatch.setenv("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        port = taken - 500
        with pytest.raises(StartupError, match=f"127.0.0.1:{taken} for Serve's fallback proxy"):
            Runtime(host="127.0.0.1", port=port, progress=lambda line: None).start()


def test_haproxy_replays_only_requests_no_replica_answered():
    policy, *options = INGRESS_ENV["RAY_SERVE_HAPROXY_RETRY_ON"].split("\n")
    assert policy.split() == ["conn-failure", "empty-response"]
    assert [o.strip() for o in options] == ["option http-buffer-request", "timeout http-request 30s"]
