"""The folder sets the marker: tests/unit -> unit (Ray may not start), tests/integration -> integration."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(HERE).parts
        if parts and parts[0] in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, parts[0]))


class ObjectStoreServer:
    """moto's standalone S3 server, a process of its own on loopback."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "lockgate-test",
            "AWS_SECRET_ACCESS_KEY": "lockgate-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self._buckets = itertools.count()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"lockgate-test-{os.getpid()}-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def object_store() -> Iterator[ObjectStoreServer]:
    """A real S3-compatible server for the session (moto[server], started here)."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (make install)")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = ObjectStoreServer(port)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not start on port {port} (exit {proc.poll()})")
            time.sleep(0.1)
    yield server
    proc.terminate()
    proc.wait(10)
