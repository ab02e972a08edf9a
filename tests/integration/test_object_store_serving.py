"""A cluster without a shared filesystem: artifacts in S3-compatible object storage (moto's server,
a real process on loopback). Registering uploads; a node whose cache is empty fetches, verifies and
serves; a tampered object keeps the model from loading, named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from .conftest import free_port, isolated_haproxy_env, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}

pytest.importorskip("boto3", reason="boto3 is the object store's client (lockgate[s3])")


@pytest.mark.slow
def test_a_node_with_an_empty_cache_serves_from_object_storage_and_a_tampered_object_is_refused(tmp_path, object_store):
    from lockgate.server.tools.demo import write_demo_repository

    bucket = object_store.bucket()
    write_demo_repository(tmp_path / "repo", ["iris"])
    env = {
        **os.environ,
        **object_store.env,
        "LOCKGATE_REGISTRY_URL": f"sqlite:///{tmp_path}/registry.db",
        "LOCKGATE_ARTIFACTS": f"s3://{bucket}/models",
        "PYTHONUNBUFFERED": "1",
    }
    # registered from a workstation: the artifact is uploaded by sha256
    out = subprocess.run(
        [*LOCKGATE, "models", "import-repo", str(tmp_path / "repo")],
        env={**env, "LOCKGATE_HOME": str(tmp_path / "workstation")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    s3 = object_store.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("models/") and keys[0].endswith(".onnx"), keys
    sha = keys[0].rsplit("/", 1)[1].removesuffix(".onnx")

    # a serving node with a home of its own: nothing cached
    node = tmp_path / "node"
    port = free_port()
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "--port", str(port), "--grpc-port", str(free_port())],
            env={**env, **isolated_haproxy_env(), "LOCKGATE_HOME": str(node)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log=tmp_path / "serve.log")
        r = requests.post(f"http://127.0.0.1:{port}/v2/models/iris/infer", json=IRIS, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
        cached = [p.name for p in (node / "artifact-cache").rglob("*.onnx")]
        assert cached == [f"{sha}.onnx"], cached  # fetched into this node's cache, under its hash
    finally:
        proc.terminate()
        proc.wait(120)

    # the object changed in the store: a node that must fetch it refuses the model, naming it
    original = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    s3.put_object(Bucket=bucket, Key=keys[0], Body=original + b"\0")
    failed = subprocess.run(
        [*LOCKGATE, "serve", "--port", str(free_port()), "--grpc-port", str(free_port())],
        env={**env, **isolated_haproxy_env(), "LOCKGATE_HOME": str(tmp_path / "node2")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = failed.stdout + failed.stderr
    assert failed.returncode == 2, said
    assert "model iris version 1 failed to load" in said and f"s3://{bucket}/{keys[0]}" in said and "changed" in said, said
    assert not list((tmp_path / "node2" / "artifact-cache").rglob("*.onnx"))
