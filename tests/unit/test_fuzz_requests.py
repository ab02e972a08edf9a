"""Hostile and broken requests through a model replica's whole request path (body limit, JSON and
binary framing, the OIP decoder, the Cython codec, the batcher, onnxruntime), in-process:
whatever hypothesis sends, the answer is 200 or a 4xx with an OIP error body naming the
problem, never a 500, and the replica keeps answering good requests afterwards."""

from __future__ import annotations

import asyncio
import json
import re

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

# Numbers of more digits than Python turns into an int (4300): json.dumps cannot write them, so a
# marker string stands in and ``encode`` writes the digits in its place.
HUGE = re.compile(r'"__huge_(\d+)__"')
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
    st.binary(max_size=8).map(lambda b: b.hex()),
    st.integers(4290, 4400).map(lambda n: f"__huge_{n}__"),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=24
)
shapes = st.one_of(
    st.lists(st.integers(-3, 6), max_size=4),
    json_values,
    st.lists(st.integers(0, 2**40), min_size=1, max_size=3),
    st.lists(st.sampled_from([0, 1, 4, 2**31, 2**62, 2**63 - 1, 2**64]), min_size=1, max_size=3),  # extreme, empty
)
parameters = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["data", "timeout", "binary_data_output", "explains", "x"]), json_values, max_size=3),
)
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
        "parameters": parameters,
    },
)


def encode(doc: object) -> bytes:
    return HUGE.sub(lambda m: "9" * int(m.group(1)), json.dumps(doc, allow_nan=True)).encode()


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
    check(send(iris, encode(doc)))


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
    header = encode(doc)
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


TWIN_SCRIPT = """
import asyncio, json, sys, tempfile, pathlib
from lockgate.fastpath import IMPLEMENTATION
from lockgate.plugins.registry import Registry
from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from lockgate.server.tools.demo import write_demo_repository
from lockgate.server.tools.repository import import_repository
from tests.asgi import call

tmp = pathlib.Path(tempfile.mkdtemp())
write_demo_repository(tmp / "repo", ["iris", "identity"])
registry = Registry(f"sqlite:///{tmp}/r.db", tmp / "a")
import_repository(tmp / "repo", registry, actor="t")
apps = {n: ModelApp(ModelService(n, ModelConfig.model_validate(registry.model_config(n)), registry)) for n in ("iris", "identity")}
out = {"implementation": IMPLEMENTATION}
for key, (model, body) in json.loads(sys.stdin.read()).items():
    r = asyncio.run(call(apps[model], "POST", f"/v2/models/{model}/infer", body.encode()))
    answer = json.loads(r.body)
    out[key] = [r.status, answer.get("parameters") if r.status == 200 else answer["error"]]
print(json.dumps(out))
"""

ROW = '"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]'
TWIN_CASES = {
    "huge number in data": (
        "iris",
        '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[' + "9" * 5000 + ",1,2,3]}]}",
    ),
    "huge number in parameters": ("iris", '{"parameters":{"x":' + "9" * 5000 + "}," + ROW + "}"),
    "huge empty shape": (
        "identity",
        '{"inputs":[{"name":"in_FP32","datatype":"FP32","shape":[0,4611686018427387904],"data":[]}]}',
    ),
    "array parameter named data": ("iris", '{"parameters":{"data":[1,2],"nested":{"data":[true]}},' + ROW + "}"),
    "object-valued timeout": ("iris", '{"parameters":{"timeout":{"a":1}},' + ROW + "}"),
    "lone surrogate id": ("iris", '{"id":"\\ud800",' + ROW + "}"),
    "lone surrogate input name": ("iris", '{"inputs":[{"name":"\\udfff","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'),
}


def test_both_twins_answer_the_hostile_classes_alike_and_never_5xx():
    """The compiled codec and its twin, each in a process of its own: the same status for every
    class of input that once gave a 500 (or a 500 with one twin and 200 with the other)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    answers = {}
    for twins in ("0", "1"):
        env = {**os.environ, "LOCKGATE_NO_EXTENSIONS": twins, "PYTHONPATH": str(root)}
        run = subprocess.run(
            [sys.executable, "-c", TWIN_SCRIPT],
            input=json.dumps(TWIN_CASES),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        answers[twins] = json.loads(run.stdout.strip().splitlines()[-1])
    compiled, twin = answers["0"], answers["1"]
    assert twin.pop("implementation") == "python"
    if compiled.pop("implementation") != "cython":
        pytest.skip("the compiled codec is not built here: nothing to compare the twin with")
    assert compiled == twin
    assert all(status < 500 for status, _ in compiled.values()), compiled
    assert compiled["huge number in data"][0] == compiled["huge number in parameters"][0] == 400
    assert compiled["array parameter named data"] == [200, {"data": [1, 2], "nested": {"data": [True]}}]
    assert "more than 4300 digits" in compiled["huge number in data"][1]
