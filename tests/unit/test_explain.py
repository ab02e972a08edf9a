"""Explanations: Kernel SHAP is exact where it enumerates, additive always; the endpoint's errors are 4xx."""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import numpy as np
import pytest

from lockgate.plugins.monitoring import build_baseline
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.explain import ExplainOptions, kernel_shap
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from tests.asgi import call


def shapley(f, x, background):
    """Exact Shapley values of v(S) = E_background f(x_S, b_rest), by enumeration."""
    n = len(x)

    def v(subset):
        rows = background.copy()
        rows[:, list(subset)] = x[list(subset)]
        return f(rows).mean()

    phi = np.zeros(n)
    for j in range(n):
        others = [k for k in range(n) if k != j]
        for size in range(n):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                phi[j] += weight * (v(subset + (j,)) - v(subset))
    return phi


def test_enumerated_kernel_shap_is_the_exact_shapley_value_of_a_nonlinear_model():
    rng = np.random.default_rng(0)
    w = rng.normal(size=6)
    background, x = rng.normal(size=(12, 6)), rng.normal(size=6)
    f = lambda rows: np.tanh(rows @ w) * rows[:, 0] ** 2  # noqa: E731
    e = kernel_shap(f, x, background, 10_000, rng)
    assert e.exact and e.coalitions == 2**6 - 2 and e.evaluations == 1 + 12 + 62 * 12
    np.testing.assert_allclose(e.attributions, shapley(f, x, background), atol=1e-12)
    assert abs(e.attributions.sum() + e.base_value - e.value) < 1e-12


def test_sampled_kernel_shap_is_additive_and_recovers_a_linear_model():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 3))
    background, x = rng.normal(size=(8, 40)), rng.normal(size=40)
    e = kernel_shap(lambda rows: rows @ w, x, background, 8 * 400, rng)
    assert not e.exact and e.evaluations <= 8 * 400 and e.target == int(np.argmax(x @ w))
    np.testing.assert_allclose(e.attributions, w[:, e.target] * (x - background.mean(axis=0)), atol=1e-9)
    assert abs(e.attributions.sum() + e.base_value - e.value) < 1e-9


@pytest.fixture(scope="module")
def explained(demo_registry):
    """The demo mlp (64 features) and iris (4) with reference samples; digits without one."""
    rng = np.random.default_rng(5)
    for name, features in (("mlp", 64), ("iris", 4)):
        sample = rng.normal(size=(200, features)).astype(np.float32)
        demo_registry.set_reference(
            name, 1, {"input": sample}, build_baseline({"input": sample}), actor="tester", source_sha256="0" * 64
        )
    made = {
        n: ModelService(
            n,
            ModelConfig.model_validate(demo_registry.model_config(n)),
            demo_registry,
            explain=ExplainOptions(max_evaluations=4096),
        )
        for n in ("mlp", "iris", "digits", "identity")
    }
    yield made
    for s in made.values():
        s.close()


def post(service, path, doc):
    return asyncio.run(
        call(
            ModelApp(service),
            "POST",
            f"/v2/models/{service.name}{path}",
            json.dumps(doc).encode(),
            root_path=f"/v2/models/{service.name}",
        )
    )


def row(n, seed=0):
    return np.random.default_rng(seed).normal(size=(1, n)).astype(np.float32)


def request(x, **parameters):
    doc = {"id": "q1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]}
    if parameters:
        doc["parameters"] = parameters
    return doc


@pytest.mark.parametrize("name, features", [("mlp", 64), ("iris", 4)])
def test_an_explanation_adds_up_to_the_prediction_it_explains(explained, name, features):
    x = row(features)
    inferred = post(explained[name], "/infer", request(x))
    assert inferred.status == 200
    r = post(explained[name], "/explain", request(x, explains="abc123"))
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["method"] == "kernel_shap" and doc["id"] == "q1" and doc["explains"] == "abc123"
    assert len(doc["attributions"]) == len(doc["features"]) == features
    assert doc["evaluations"] <= doc["max_evaluations"] == 4096 and doc["background_rows"] == 16
    assert doc["exact"] is (features == 4)
    # additivity: attributions + base value = the explained prediction (stated tolerance 1e-6, relative)
    assert abs(sum(doc["attributions"]) + doc["base_value"] - doc["value"]) <= 1e-6 * max(1.0, abs(doc["value"]))
    outputs = {o["name"]: o for o in inferred.json()["outputs"]}
    scores = outputs[doc["output"]]["data"]
    assert doc["value"] == pytest.approx(scores[doc["target"]], rel=1e-5, abs=1e-6)
    assert doc["target"] == int(np.argmax(scores))


def test_explanations_are_reproducible(explained):
    x = row(64, seed=2)
    first = post(explained["mlp"], "/explain", request(x)).json()
    again = post(explained["mlp"], "/explain", request(x)).json()
    assert first["attributions"] == again["attributions"]


@pytest.mark.parametrize(
    "name, doc, status, message",
    [
        ("digits", request(row(64)), 409, "lockgate models reference digits 1 FILE"),
        ("mlp", request(np.zeros((2, 64), np.float32)), 400, "an explanation is of one row"),
        ("mlp", request(row(64), max_evaluations=10**9), 400, "parameter 'max_evaluations'"),
        ("mlp", request(row(64), output="nope"), 400, "parameter 'output' must name"),
        ("mlp", request(row(64), target=99), 400, "target 99 is not a column"),
        ("mlp", request(row(64), target="x"), 400, "parameter 'target'"),
        ("mlp", request(row(64), explains=["x"]), 400, "parameter 'explains'"),
        ("identity", {"inputs": []}, 400, "is not tabular"),
    ],
)
def test_explain_mistakes_are_named(explained, name, doc, status, message):
    r = post(explained[name], "/explain", doc)
    assert r.status == status and message in r.json()["error"], r.body


def test_explain_wants_post(explained):
    r = asyncio.run(call(ModelApp(explained["mlp"]), "GET", "/v2/models/mlp/explain", root_path="/v2/models/mlp"))
    assert r.status == 405 and "use POST" in r.json()["error"]


def test_explain_applies_the_tensor_element_limit(explained, demo_registry):
    """/explain decodes its request like /infer, within max_tensor_elements (it ignored it)."""
    from lockgate.server.serving.limits import LimitOptions

    small = ModelService(
        "iris",
        ModelConfig.model_validate(demo_registry.model_config("iris")),
        demo_registry,
        limits=LimitOptions(max_tensor_elements=3),
    )
    try:
        r = post(small, "/explain", request(row(4)))
    finally:
        small.close()
    assert r.status == 413 and "more than the limit of 3" in r.json()["error"], r.body


def test_a_large_body_is_decoded_off_the_event_loop(explained, monkeypatch):
    """Tens of MB of JSON take seconds to decode: not on the loop every other request waits on."""
    import threading

    from lockgate.server.serving import protocol

    threads: list[str] = []
    real = protocol.parse_infer_request

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "parse_infer_request", spy)
    small = request(row(4))
    large = {**small, "parameters": {"padding": "x" * (protocol.OFF_LOOP_BYTES + 1)}}
    assert post(explained["iris"], "/infer", small).status == 200
    assert post(explained["iris"], "/infer", large).status == 200
    assert threads[0] == "MainThread" and threads[1] != "MainThread", threads
