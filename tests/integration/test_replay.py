"""Reproducible answers through a live `lockgate serve` with `audit.payloads: true`: every demo
model's recorded request replays to the recorded answer, byte for byte (JSON and binary tensor
requests); a changed input, another version and a changed artifact are each detected and named;
the kept bodies are sealed in the database; `lockgate audit explain` gives the regulator's view."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import requests

from lockgate.plugins.registry import Registry

from .conftest import free_port, isolated_haproxy_env, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
MODELS = ["iris", "digits", "mlp", "identity", "cnn"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A server with payloads kept; one request per demo model (and a binary one for cnn),
    answered and recorded; the server stopped. Yields (env, home, {name: (request_id, body)})."""
    from lockgate.server.cli.serve import _example
    from lockgate.server.serving.config import ModelConfig
    from lockgate.server.tools.demo import IMAGE_SIZE, write_demo_repository

    root = tmp_path_factory.mktemp("replay")
    home = root / "home"
    home.mkdir()
    (home / "lockgate.yaml").write_text("audit:\n  mode: sync\n  payloads: true\n")
    write_demo_repository(root / "repo", MODELS)
    env = {**os.environ, **isolated_haproxy_env(), "LOCKGATE_HOME": str(home)}
    env.pop("LOCKGATE_API_KEY", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*LOCKGATE, *args], env=env, capture_output=True, text=True, timeout=300)

    assert cli("models", "import-repo", str(root / "repo")).returncode == 0
    # iris version 2: the same graph with one weight changed (registered, not aliased)
    model = onnx.load(root / "repo" / "iris" / "1" / "model.onnx")
    classifier = next(n for n in model.graph.node if n.op_type == "LinearClassifier")
    coefficients = next(a for a in classifier.attribute if a.name == "coefficients")
    coefficients.floats[0] += 0.5
    onnx.save(model, root / "iris-2.onnx")
    done = cli("models", "register", "--name", "iris", str(root / "iris-2.onnx"))
    assert done.returncode == 0, done.stdout + done.stderr

    # The registry itself, not a plugin manager: building one here would reconfigure the plugin
    # objects that the session's other tests share.
    registry = Registry(f"sqlite:///{home}/registry.db", home / "artifacts")
    bodies = {
        name: _example(registry.resolve(name), ModelConfig.model_validate(registry.model_config(name))).encode()
        for name in MODELS
    }
    registry.close()
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [*LOCKGATE, "serve", "--port", str(port), "--grpc-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    sent = {}
    try:
        wait_ready(base, proc, log=root / "server.log")
        for name, body in bodies.items():
            r = requests.post(
                f"{base}/v2/models/{name}/infer", data=body, headers={"Content-Type": "application/json"}, timeout=30
            )
            assert r.status_code == 200, (name, r.text)
            sent[name] = (r.headers["lockgate-request-id"], body)
        image = np.random.default_rng(3).integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8).tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, IMAGE_SIZE, IMAGE_SIZE, 3],
                        "parameters": {"binary_data_size": len(image)},
                    }
                ],
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
            }
        ).encode()
        r = requests.post(
            f"{base}/v2/models/cnn/infer",
            data=header + image,
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        sent["cnn-binary"] = (r.headers["lockgate-request-id"], header + image)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
    yield env, home, sent, cli


def replay(cli, *args: str) -> tuple[int, dict]:
    done = cli("audit", "replay", *args, "--json")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def test_every_demo_models_recorded_request_replays_to_the_recorded_answer(recorded):
    _, _, sent, cli = recorded
    for name, (request_id, _body) in sent.items():
        code, found = replay(cli, request_id)
        assert code == 0 and found["identical"] and not found["problems"], (name, found)
        assert found["output_sha256"] == found["recorded_output_sha256"] and found["input_from"] == "the audit record"
    # a client that kept its request replays it too
    request_id, body = sent["iris"]
    code, found = replay(cli, request_id, "--input", _write(recorded, "kept.json", body))
    assert code == 0 and found["identical"], found
    done = cli("audit", "replay", request_id)  # the text form says so
    assert done.returncode == 0 and "identical: the replay gives the recorded answer, byte for byte" in done.stdout


def test_a_changed_input_another_version_and_a_changed_artifact_are_named(recorded):
    _, home, sent, cli = recorded
    request_id, body = sent["iris"]
    other = json.loads(body)
    other["inputs"][0]["data"] = [6.3, 2.5, 5.0, 1.9]
    code, found = replay(cli, request_id, "--input", _write(recorded, "changed.json", json.dumps(other).encode()))
    assert code == 1 and not found["identical"]
    assert any("the input is not the recorded request" in p for p in found["problems"]), found

    code, found = replay(cli, request_id, "--version", "2")
    assert code == 1 and found["version"] == 2 and found["recorded_version"] == 1
    assert any("another version: replayed version 2, the record names version 1" in p for p in found["problems"]), found
    assert found["max_abs_diff"], found  # the two answers compared output by output

    # the artifact that answered is changed on disk: refused and named, nothing replayed
    registry = Registry(f"sqlite:///{home}/registry.db", home / "artifacts")
    path = registry.store.path_for(registry.resolve("iris", "1").sha256)
    original = path.read_bytes()
    os.chmod(path, 0o600)
    path.write_bytes(original[:-8] + bytes(8))
    try:
        code, found = replay(cli, request_id)
    finally:
        path.write_bytes(original)
        registry.close()
    assert code == 1 and found["output_sha256"] is None
    assert any("the artifact of version 1 cannot be used" in p and "sha256" in p for p in found["problems"]), found


def test_kept_bodies_are_sealed_and_explain_gives_the_regulators_view(recorded):
    _, home, sent, cli = recorded
    request_id, body = sent["iris"]
    database = (home / "audit.db").read_bytes()
    for text in (body, base64.b64encode(body)):
        assert text not in database  # neither the request nor its base64 is in the database
    assert (home / "audit-payload.key").stat().st_mode & 0o077 == 0
    done = cli("audit", "explain", request_id, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["record"]["request_id"] == request_id and report["record"]["kind"] == "infer"
    version = report["version"]
    assert version["version"] == 1 and version["sha256"] == report["record"]["detail"]["sha256"]
    assert version["registered_by"] and any(d["kind"] == "register" for d in version["decisions"])
    assert report["replay"]["identical"] is True
    assert report["replay"]["explanation"] and "error" not in report["replay"]["explanation"], report["replay"]["explanation"]
    missing = cli("audit", "replay", "no-such-request")
    assert (
        missing.returncode != 0 and "no audit record of an inference request 'no-such-request'" in missing.stderr + missing.stdout
    )


def _write(recorded, name: str, data: bytes) -> str:
    _, home, _, _ = recorded
    path = home.parent / name
    path.write_bytes(data)
    return str(path)
