"""Measures the ceiling of a replica-owned HTTP listener against Serve's own request path.

Both run inside one Ray Serve replica (HAProxy + direct ingress enabled), answering a fixed
no-op JSON body:
  serve-direct   Serve's direct-ingress path: HAProxy -> the replica's uvicorn -> Serve's ASGI
                 wrapper -> a raw ASGI app (what lockgate's ModelApp sits behind today);
  replica-owned  an httptools protocol started by the replica's constructor on a port of its
                 own (SO_REUSEPORT), driven by wrk directly, no HAProxy in between.
wrk at concurrency 1 and 32, one run each. Prints a table.

    python bench/prototypes/replica_listener.py
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")

BODY = b'{"model_name":"noop","model_version":"1","outputs":[]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import ray
    from ray import serve

    own_port = free_port()
    serve_port = free_port()

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    @serve.ingress()
    class Noop:
        async def __init__(self, port: int) -> None:
            import httptools

            response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)

            class Proto(asyncio.Protocol):
                def connection_made(self, transport):
                    self.transport = transport
                    self.parser = httptools.HttpRequestParser(self)

                def data_received(self, data):
                    try:
                        self.parser.feed_data(data)
                    except httptools.HttpParserError:
                        self.transport.close()

                def on_message_complete(self):
                    self.transport.write(response)

            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(Proto, "127.0.0.1", port, reuse_port=True, backlog=1024)

        def __serve_build_asgi_app__(self):
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                more = True
                while more:
                    more = (await receive()).get("more_body", False)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": BODY})

            return app

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    serve.run(Noop.bind(own_port), name="noop", route_prefix="/noop")
    lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "wrk_report.lua")
    body = "/tmp/lockgate-noop-body.json"
    with open(body, "w") as f:
        f.write('{"inputs":[]}')
    rows = []
    for label, url in (
        ("serve-direct", f"http://127.0.0.1:{serve_port}/noop/x"),
        ("replica-owned", f"http://127.0.0.1:{own_port}/noop/x"),
    ):
        subprocess.run(["wrk", "-t2", "-c8", "-d2s", "-s", lua, url], capture_output=True, env={**os.environ, "BENCH_BODY": body})
        for c in (1, 32):
            out = subprocess.run(
                ["wrk", f"-t{1 if c == 1 else 2}", f"-c{c}", "-d5s", "--latency", "-s", lua, url],
                capture_output=True,
                text=True,
                env={**os.environ, "BENCH_BODY": body},
            )
            r = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
            rows.append(
                (label, c, r["requests"] / (r["duration_us"] / 1e6), r["p50_us"] / 1e3, r["p99_us"] / 1e3, r["status_errors"])
            )
    serve.shutdown()
    ray.shutdown()
    print(f"{'path':<14} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for label, c, rps, p50, p99, err in rows:
        print(f"{label:<14} {c:>4} {rps:>9.0f} {p50:>8.3f} {p99:>8.3f} {err:>6}")


if __name__ == "__main__":
    main()
    time.sleep(0.1)
    sys.exit(0)
