"""Ports for the servers tests start."""

from __future__ import annotations

import itertools
import os
import socket

_ports = itertools.count(20000 + (os.getpid() % 400) * 16)


def free_port() -> int:
    """A port free now that this process never handed out before, from 20000-27999: outside the
    kernel's ephemeral range (32768-60999, where port 0 lands and Ray's processes bind), Ray's
    worker ports (10002-19999) and Serve's direct-ingress replica ports (30000-31000), also once
    a server adds 500 and 1500 for its fallback proxy (serve_compat.fallback_proxy_ports). A port
    from port 0 was once taken by a Ray process before HAProxy bound it, and random picks can
    repeat a port whose server is still stopping; a counter does neither."""
    for port in _ports:
        if port >= 28000:
            break
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left in 20000-27999")
