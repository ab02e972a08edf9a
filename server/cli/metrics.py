"""``lockgate metrics``: a node's Prometheus exporter, for nodes that have no control replica."""

from __future__ import annotations

import click

from .common import settings_from

__all__ = ["metrics"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8002, show_default=True, type=click.IntRange(1, 65535), help="HTTP port (Triton's metrics port).")
@click.option("--once", is_flag=True, help="Print one scrape to stdout and exit.")
def metrics(host: str, port: int, once: bool) -> None:
    """Serve GET /metrics: every lockgate process of this node (the metrics folder of
    LOCKGATE_HOME, or metrics.dir of the configuration). The ingress answers /metrics for the node of the
    control replica; run this on each other node of a cluster and let Prometheus scrape both."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ..hosting.metrics import CONTENT_TYPE, collect

    settings = settings_from(None, None)
    directory = settings.metrics_dir
    if once:
        click.echo(collect(directory).decode(), nl=False)
        return

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/") != "/metrics":
                self._send(404, b'{"error":"no route; GET /metrics"}', "application/json")
                return
            self._send(200, collect(directory), CONTENT_TYPE)

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not worth a log line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    click.echo(f"metrics of {directory} on http://{host}:{port}/metrics")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
