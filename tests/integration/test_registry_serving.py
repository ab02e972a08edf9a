"""Serving from the registry: versions by route, alias moves with no failed request, the repository
API, and an application built by the Serve application builder from config-file args."""

from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests

from lockgate.server.tools.demo import build_mlp

ROW = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW.reshape(-1).tolist()}]}


def logits(model_path: str) -> np.ndarray:
    return ort.InferenceSession(model_path).run(None, {"input": ROW})[0].reshape(-1)


@pytest.fixture(scope="module")
def mlp_v2(server, registry, tmp_path_factory):
    path = tmp_path_factory.mktemp("v2") / "mlp2.onnx"
    onnx.save(build_mlp(seed=1), str(path))
    record = registry.register(path, "mlp", created_by="tester", lineage={"parent_version": 1})
    assert record.version == 2
    return record


def wait_for_version(server, version, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=5).json()["model_version"] == str(version):
            return
        time.sleep(0.05)
    raise AssertionError(f"mlp did not move to version {version}")


def test_versions_by_route_and_default_alias(server, registry, mlp_v2):
    answers = [
        requests.post(f"{server}/v2/models/mlp{route}/infer", json=BODY, timeout=10)
        for route in ("/versions/1", "/versions/2", "")  # version 2 loads on demand
    ]
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
    v1, v2, default = (r.json() for r in answers)
    assert (v1["model_version"], v2["model_version"], default["model_version"]) == ("1", "2", "1")
    np.testing.assert_allclose(v1["outputs"][0]["data"], logits(registry.get_version("mlp", 1).artifact_path), rtol=1e-5)
    np.testing.assert_allclose(v2["outputs"][0]["data"], logits(mlp_v2.artifact_path), rtol=1e-5)
    r = requests.post(f"{server}/v2/models/mlp/versions/3/infer", json=BODY, timeout=10)
    assert r.status_code == 404 and "registered: 1, 2" in r.json()["error"]


@pytest.mark.slow
def test_moving_an_alias_swaps_the_served_version_with_no_failed_request(server, registry, governance, mlp_v2):
    expected = {"1": logits(registry.get_version("mlp", 1).artifact_path), "2": logits(mlp_v2.artifact_path)}
    stop = threading.Event()
    results: list[tuple[int, str | None, bool]] = []
    lock = threading.Lock()

    def client():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=10)
            except requests.RequestException as e:
                with lock:
                    results.append((0, repr(e), False))
                continue
            version = r.json().get("model_version") if r.status_code == 200 else None
            ok = version is not None and np.allclose(r.json()["outputs"][0]["data"], expected[version], rtol=1e-5)
            with lock:
                results.append((r.status_code, version, ok))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        governance.decide("approve", "mlp", 2, actor="reviewer")  # production is a protected alias
        registry.set_alias("mlp", "production", 2, actor="tester")
        time.sleep(2.0)
        registry.set_alias("mlp", "production", 1, actor="tester")
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [r for r in results if r[0] != 200 or not r[2]]
    assert not failures, failures[:5]
    versions = [v for _, v, _ in results]
    assert len(results) > 100
    first2, last2 = versions.index("2"), len(versions) - 1 - versions[::-1].index("2")
    assert set(versions[:first2]) == {"1"} and set(versions[last2 + 1 :]) <= {"1"}
    assert versions[-1] == "1"
    wait_for_version(server, 1)


def test_repository_index_unload_and_load(server, registry):
    index = requests.post(f"{server}/v2/repository/index", timeout=10).json()
    by_name = {m["name"]: m for m in index}
    assert by_name["digits"] == {"name": "digits", "state": "READY", "version": "1"}
    assert "model_repository" in requests.get(f"{server}/v2", timeout=5).json()["extensions"]
    assert requests.post(f"{server}/v2/repository/models/digits/unload", timeout=120).status_code == 200
    gone = requests.post(f"{server}/v2/models/digits/infer", json={"inputs": []}, timeout=10)
    assert gone.status_code == 404 and "unknown model 'digits'" in gone.json()["error"]
    states = {m["name"]: m["state"] for m in requests.post(f"{server}/v2/repository/index", timeout=10).json()}
    assert states["digits"] == "UNAVAILABLE"
    assert requests.post(f"{server}/v2/repository/models/digits/load", timeout=300).status_code == 200
    x = np.zeros((1, 64), np.float32).reshape(-1).tolist()
    back = requests.post(
        f"{server}/v2/models/digits/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]},
        timeout=30,
    )
    assert back.status_code == 200 and back.json()["model_version"] == "1"
    missing = requests.post(f"{server}/v2/repository/models/ghost/load", timeout=10)
    assert missing.status_code == 404 and "unknown model 'ghost'" in missing.json()["error"]
    assert requests.get(f"{server}/v2/repository/index", timeout=10).status_code == 405


def test_an_application_from_the_builder_serves_callers_with_a_key_only(server, settings, manager, tmp_path, monkeypatch):
    """The builder (serve deploy, KubeRay) makes no open-mode server: with no key in its
    database, anonymous callers are refused (401); a key's holder is served. Its own registry
    and key store, so the session's loopback server stays in open mode."""
    from ray import serve

    from lockgate.server.hosting.app import BuildArgs, build
    from lockgate.server.serving.settings import LockgateSettings

    session_settings, session_manager = settings, manager
    settings = LockgateSettings.from_env(home=str(tmp_path / "built-home"), anonymous=True)  # the CLI's view
    # A process's plugins are module-level objects: building this manager (and the builder's)
    # configures them for the other home, so the session's manager is configured back at the end.
    manager = settings.manager()
    registry, governance = manager.registry(), manager.plugin("governance")
    onnx.save(build_mlp(seed=4), str(tmp_path / "model.onnx"))
    registry.register(tmp_path / "model.onnx", "built", created_by="tester", config={"max_batch_size": 8, "num_cpus": 0.05})
    governance.decide("approve", "built", 1, actor="reviewer")
    registry.set_alias("built", "production", 1, actor="tester")
    # what a Serve config file's runtime_env gives the builder
    monkeypatch.setenv("LOCKGATE_HOME", settings.home)
    monkeypatch.setenv("LOCKGATE_REGISTRY_URL", settings.registry_url)
    monkeypatch.setenv("LOCKGATE_ARTIFACTS", settings.artifact_dir)
    app = build(BuildArgs.model_validate({"model": "built"}))
    serve.run(app, name="built", route_prefix="/v2/models/built")
    try:
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x.reshape(-1).tolist()}]}
        anonymous = requests.post(f"{server}/v2/models/built/infer", json=body, timeout=30)
        assert anonymous.status_code == 401, anonymous.text
        assert "takes no anonymous callers" in anonymous.json()["error"]
        governance.create_key("root", ["admin"], ["*"], actor="tester")  # the first key is an admin's
        key, _ = governance.create_key("app", ["invoker"], ["built"], actor="root")
        deadline = time.monotonic() + 10  # the replicas re-read the key table every second
        while True:
            r = requests.post(
                f"{server}/v2/models/built/infer", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
            )
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["model_name"] == "built" and r.json()["model_version"] == "1", r.text
        assert len(r.headers["lockgate-request-id"]) == 32
    finally:
        serve.delete("built")
        manager.plugin("audit").close()
        session_manager.configure(session_settings.plugin_settings())
