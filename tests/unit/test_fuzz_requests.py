"""Hostile and broken requests through a model replica's whole request path (body limit, JSON and
binary framing, the OIP decoder, the Cython codec, the batcher, onnxruntime), in-process:
whatever hypothesis sends, the answer is 200 or a 4xx with an OIP error body naming the
problem, never a 500, and the replica keeps answering good requests afterwards."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockgate.server.serving.model_app import ModelApp
from tests.asgi import call

from .test_protocol import service

CLIENT_ERRORS = {400, 404, 405, 413}
DATATYPES = [
    "FP32",
    "FP64",
    "FP16",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT64",
    "BOOL",
    "BYTES",
    "BF16",
    "fp32",
    "",
    "COMPLEX",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8).map(lambda b: b.hex()),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=24
)
shapes = st.one_of(st.lists(st.integers(-3, 6), max_size=4), json_values, st.lists(st.integers(0, 2**40), min_size=1, max_size=3))
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.just("input"), st.text(max_size=10), json_values),
        "datatype": st.one_of(st.sampled_from(DATATYPES), json_values),
        "shape": shapes,
        "data": st.one_of(
            st.lists(st.floats(allow_nan=False, width=32), max_size=12),
            json_values,
            st.lists(st.lists(st.integers(-5, 5), max_size=4), max_size=4),
        ),
        "parameters": st.one_of(
            st.dictionaries(st.sampled_from(["binary_data_size", "binary_data", "x"]), json_values, max_size=2), json_values
        ),
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.one_of(st.lists(tensors, max_size=3), json_values),
        "outputs": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.just("output"), st.text(max_size=8))}, optional={"parameters": json_values}
                ),
                max_size=2,
            ),
            json_values,
        ),
        "parameters": json_values,
    },
)


@pytest.fixture(scope="module")
def iris(demo_registry):
    s = service(demo_registry, "iris")
    yield s
    s.close()


def send(svc, body: bytes, headers: dict[str, str] | None = None, path: str = "/infer", method: str = "POST"):
    app = ModelApp(svc)
    return asyncio.run(call(app, method, f"/v2/models/{svc.name}{path}", body, headers, root_path=f"/v2/models/{svc.name}"))


def check(r) -> None:
    assert r.status == 200 or r.status in CLIENT_ERRORS, (r.status, r.body[:300])
    if r.status != 200:
        error = json.loads(r.body)["error"]
        assert isinstance(error, str) and error and "internal error" not in error


GOOD = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()

FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(doc=documents)
def test_structured_oip_documents(iris, doc):
    check(send(iris, json.dumps(doc, allow_nan=True).encode()))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_raw_bytes(iris, raw):
    check(send(iris, raw))


@FUZZ
@given(
    doc=documents,
    declared=st.one_of(st.integers(-5, 400).map(str), st.text(max_size=6)),
    tail=st.binary(max_size=64),
)
def test_binary_extension_framing(iris, doc, declared, tail):
    header = json.dumps(doc, allow_nan=True).encode()
    check(send(iris, header + tail, {"Inference-Header-Content-Length": declared}))


@FUZZ
@given(
    path=st.text(alphabet=st.characters(codec="ascii"), max_size=40),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
)
def test_paths_and_methods(iris, path, method):
    r = send(iris, GOOD, path="/" + path, method=method)
    check(r)


def test_the_replica_still_answers_after_the_fuzzing(iris):
    r = send(iris, GOOD)
    outputs = {o["name"]: o for o in json.loads(r.body)["outputs"]}
    assert r.status == 200 and outputs["probabilities"]["shape"] == [1, 3]
