"""The OIP request path of a model replica, driven in-process (no Ray): every client mistake is a 4xx."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import onnxruntime as ort
import pytest

from lockgate.server.serving.config import ModelConfig
from lockgate.server.serving.control_app import ControlApp
from lockgate.server.serving.limits import DEFAULT_LIMITS, LimitOptions
from lockgate.server.serving.model_app import ModelApp
from lockgate.server.serving.service import ModelService
from tests.asgi import call

PREFIX = "/v2/models/iris"


def service(registry, name, **kwargs):
    return ModelService(name, ModelConfig.model_validate(registry.model_config(name)), registry, **kwargs)


def post(service, path, doc=None, raw=None, headers=None):
    body = raw if raw is not None else json.dumps(doc).encode()
    app = ModelApp(service)
    return asyncio.run(
        call(app, "POST", f"/v2/models/{service.name}{path}", body, headers, root_path=f"/v2/models/{service.name}")
    )


def get(service, path):
    return asyncio.run(call(ModelApp(service), "GET", f"/v2/models/{service.name}{path}", root_path=f"/v2/models/{service.name}"))


IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def iris_request(**extra):
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}]}
    doc.update(extra)
    return doc


def test_infer_matches_onnxruntime(services):
    s = services["iris"]
    r = post(s, "/infer", iris_request(id="abc", parameters={"trace": "x"}))
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["id"] == "abc" and doc["model_name"] == "iris" and doc["model_version"] == "1"
    assert doc["parameters"] == {"trace": "x"}
    sess = ort.InferenceSession(s.registry.get_version("iris", 1).artifact_path)
    label, probs = sess.run(None, {"input": np.array([IRIS_ROW], np.float32)})
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["label"]["data"] == label.tolist()
    assert np.array(outs["probabilities"]["data"], np.float32).tolist() == probs.reshape(-1).tolist()


def test_nested_data_and_output_selection(services):
    doc = iris_request(outputs=[{"name": "label"}])
    doc["inputs"][0]["data"] = [IRIS_ROW]
    r = post(services["iris"], "/versions/1/infer", doc)
    assert r.status == 200
    assert [o["name"] for o in r.json()["outputs"]] == ["label"]


def test_binary_output_and_mixed_binary_input(services):
    s = services["identity"]
    blob = np.array([[1.5, -2.0]], np.float32).tobytes()
    inputs = []
    for spec in s.served[1].model.inputs:
        if spec.datatype == "FP32":
            inputs.append({"name": spec.name, "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": len(blob)}})
        else:
            value = {"BOOL": True, "BYTES": "hi"}.get(spec.datatype, 1)
            inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": [1, 2], "data": [value, value]})
    header = json.dumps(
        {"inputs": inputs, "outputs": [{"name": "out_FP32", "parameters": {"binary_data": True}}, {"name": "out_BYTES"}]}
    ).encode()
    r = post(s, "/infer", raw=header + blob, headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status == 200, r.body
    n = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.body[:n])
    first = doc["outputs"][0]
    assert first["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(r.body[n:], np.float32).tolist() == [1.5, -2.0]
    assert doc["outputs"][1]["data"] == ["hi", "hi"]


def test_metadata_and_ready(services):
    r = get(services["iris"], "")
    assert r.status == 200
    meta = r.json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert get(services["iris"], "/ready").json() == {"name": "iris", "ready": True}
    assert get(services["iris"], "/versions/1").json()["versions"] == ["1"]
    assert get(services["iris"], "/versions/9/ready").status == 404


def _err(r, status, *fragments):
    assert r.status == status, (r.status, r.body)
    message = r.json()["error"]
    for f in fragments:
        assert f in message, message
    return message


@pytest.mark.parametrize(
    "mutate,fragments",
    [
        (lambda d: d["inputs"][0].update(name="petals"), ["unknown input 'petals'", "'input' (FP32 [-1, 4])"]),
        (lambda d: d.update(inputs=[]), ["'inputs' must be a non-empty array"]),
        (lambda d: d["inputs"][0].update(datatype="FP64"), ["input 'input'", "FP64", "FP32"]),
        (lambda d: d["inputs"][0].update(shape=[1, 5], data=[1] * 5), ["shape [1, 5] does not match the model's [-1, 4]"]),
        (lambda d: d["inputs"][0].update(shape=[1, 4], data=[1, 2, 3]), ["input 'input'", "3 elements", "expects 4"]),
        (lambda d: d["inputs"][0].update(shape=[33, 4], data=[1.0] * 132), ["batch of 33", "max_batch_size of 32"]),
        (lambda d: d["inputs"][0].update(data=[1, 2, "x", 4]), ["input 'input'", "element 2", "a number"]),
        (lambda d: d["inputs"][0].update(shape="1,4"), ["'shape' must be an array"]),
        (lambda d: d["inputs"][0].pop("data"), ["neither 'data' nor a binary_data_size"]),
        (lambda d: d.update(outputs=[{"name": "nope"}]), ["unknown output 'nope'", "'label'"]),
        (lambda d: d["inputs"].append(dict(d["inputs"][0])), ["given twice"]),
        (lambda d: d.update(id=5), ["'id' must be a string"]),
        (lambda d: d.update(id="\ud800"), ["'id' holds a lone UTF-16 surrogate at character 0"]),
        (lambda d: d.update(id="a\x00b"), ["'id' must not contain NUL"]),
        (lambda d: d.update(id="x" * 257), ["'id' is 257 characters long; at most 256"]),
        (lambda d: d.update(parameters={"timeout": -1}), ["timeout"]),
        (lambda d: d.update(parameters={"binary_data_output": "yes"}), ["parameter 'binary_data_output' must be true or false"]),
        (
            lambda d: d.update(outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
            ["output 'label': parameter 'binary_data' must be true or false, got 1"],
        ),
    ],
)
def test_client_mistakes_are_400_naming_the_problem(services, mutate, fragments):
    doc = iris_request()
    mutate(doc)
    _err(post(services["iris"], "/infer", doc), 400, *fragments)


def test_missing_input_is_named(services):
    s = services["identity"]
    doc = {"inputs": [{"name": "in_FP32", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    msg = _err(post(s, "/infer", doc), 400, "missing inputs", "'in_BOOL'")
    assert "in_FP32" not in msg


@pytest.mark.parametrize(
    "raw,headers,fragments",
    [
        (b"{not json", None, ["malformed JSON body"]),
        (b"[1,2]", None, ["must be a JSON object"]),
        (b"\xff\xfe", None, ["malformed JSON body"]),
        (b'{"inputs":[]}', {"Inference-Header-Content-Length": "999"}, ["Inference-Header-Content-Length is 999"]),
        (b'{"inputs":[]}', {"Inference-Header-Content-Length": "abc"}, ["must be an integer"]),
    ],
)
def test_malformed_bodies_are_400(services, raw, headers, fragments):
    _err(post(services["iris"], "/infer", raw=raw, headers=headers), 400, *fragments)


def test_binary_framing_errors_are_400(services):
    s = services["iris"]
    header = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}
    ).encode()
    h = {"Inference-Header-Content-Length": str(len(header))}
    _err(post(s, "/infer", raw=header + b"\0" * 12, headers=h), 400, "binary_data_size 16 runs past the end", "12 bytes remain")
    _err(post(s, "/infer", raw=header + b"\0" * 20, headers=h), 400, "4 bytes of binary data")
    bad = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 12}}]}
    ).encode()
    _err(
        post(s, "/infer", raw=bad + b"\0" * 12, headers={"Inference-Header-Content-Length": str(len(bad))}),
        400,
        "needs 16 bytes, got 12",
    )
    _err(post(s, "/infer", raw=header), 400, "no Inference-Header-Content-Length")
    msg = _err(post(s, "/infer", raw=struct.pack("<4f", 1, 2, 3, 4), headers=h), 400)
    assert "Inference-Header-Content-Length" in msg


def test_unknown_version_and_route_are_404_and_wrong_method_405(services):
    s = services["iris"]
    _err(post(s, "/versions/2/infer", iris_request()), 404, "no version '2'", "registered: 1")
    _err(post(s, "/versions/x/infer", iris_request()), 404, "no version 'x'")
    _err(get(s, "/explode"), 404, "no route")
    _err(get(s, "/infer"), 405, "use POST")
    _err(post(s, "/ready", {}), 405)


def test_control_app_routes():
    app = ControlApp(["iris"])
    r = asyncio.run(call(app, "GET", "/v2/models/nope/infer"))
    assert r.status == 404 and "unknown model 'nope'" in r.json()["error"]
    r = asyncio.run(call(app, "GET", "/v2/models/iris"))
    assert r.status == 503 and "not ready" in r.json()["error"]
    assert asyncio.run(call(app, "GET", "/v2/health/live")).status == 200
    meta = asyncio.run(call(app, "GET", "/v2")).json()
    assert meta["name"] == "lockgate" and "binary_tensor_data" in meta["extensions"]

    async def deploying():
        return {"iris": "DEPLOYING", "lockgate-control": "RUNNING"}

    r = asyncio.run(call(ControlApp(["iris"], deploying), "GET", "/v2/health/ready"))
    assert r.status == 503 and "iris" in r.json()["error"]

    async def running():
        return {"iris": "RUNNING"}

    assert asyncio.run(call(ControlApp(["iris"], running), "GET", "/v2/health/ready")).status == 200
    # a running model's path that reached the control routes was not the model's route before
    # decoding (the ingress routes on the raw path): 404, not "not ready"
    r = asyncio.run(
        call(
            ControlApp(["iris"], running),
            "POST",
            "/v2/models/iris/../digits/infer",
            raw_path=b"/v2/models/iris%2F..%2Fdigits/infer",
        )
    )
    assert (
        r.status == 404
        and r.json()["error"] == "no route /v2/models/iris%2F..%2Fdigits/infer: routes are matched before percent-decoding"
    )
    r = asyncio.run(call(app, "POST", "/v2/repository/index"))
    assert r.status == 404 and "no model repository API" in r.json()["error"]


def test_body_limit_is_413(demo_registry):
    s = service(demo_registry, "iris", limits=DEFAULT_LIMITS.model_copy(update={"max_body_bytes": 100}))
    try:
        _err(post(s, "/infer", raw=b" " * 5000), 413, "larger than the limit of 100 bytes")
    finally:
        s.close()


def test_tensor_elements_over_the_limit_are_413_before_any_decode(demo_registry):
    s = service(demo_registry, "iris", limits=LimitOptions(max_tensor_elements=100))
    try:
        # 32 x 4 = 128 elements: a batch the model accepts, over this server's limit; the data
        # is short on purpose: the shape alone decides, before the data is looked at.
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [32, 4], "data": [0.0]}]}
        _err(post(s, "/infer", doc), 413, "input 'input': shape [32, 4] has 128 elements, more than the limit of 100")
        assert post(s, "/infer", iris_request()).status == 200
    finally:
        s.close()


def test_preprocessing_uint8_hwc_is_normalised_in_the_fast_path(services):
    from lockgate.server.tools.demo import IMAGE_SCALE, IMAGE_SHIFT
    from lockgate.server.tools.demo import IMAGE_SIZE as S

    s = services["cnn"]
    meta = get(s, "").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, S, S, 3]}]
    pixels = np.random.default_rng(5).integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": [2, S, S, 3], "parameters": {"binary_data_size": pixels.nbytes}}
            ]
        }
    ).encode()
    r = post(s, "/infer", raw=header + pixels.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status == 200, r.body
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) * np.array(IMAGE_SCALE, np.float32).reshape(1, 3, 1, 1)
    x = x + np.array(IMAGE_SHIFT, np.float32).reshape(1, 3, 1, 1)
    want = ort.InferenceSession(s.registry.get_version("cnn", 1).artifact_path).run(None, {"image": x})[0]
    np.testing.assert_array_equal(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10), want)
    wrong = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, S, S], "data": [0.0] * (3 * S * S)}]}
    _err(post(s, "/infer", wrong), 400, "datatype FP32 does not match the model's UINT8")


@pytest.mark.parametrize("name", ["iris", "cnn", "identity", "mlp"])
def test_the_printed_example_request_is_accepted(services, demo_registry, name):
    from lockgate.server.cli.serve import _example

    record = demo_registry.resolve(name)
    body = _example(record, ModelConfig.model_validate(demo_registry.model_config(name))).encode()
    r = post(services[name], "/infer", raw=body)
    assert r.status == 200, r.body


def test_bytes_elements_count_sixteen_times_against_the_tensor_limit(demo_registry):
    """A tiny BYTES element is 4 bytes of binary body but two Python objects once decoded (a
    24 MiB body made 513 MiB): they count 16 times each, so memory stays bounded by the limit."""
    s = service(demo_registry, "identity", limits=LimitOptions(max_tensor_elements=1600))
    try:

        def doc(n: int) -> dict:  # every input of the identity model, BYTES with n elements
            inputs = []
            for spec in s.served[1].model.inputs:
                if spec.datatype == "BYTES":
                    inputs.append({"name": spec.name, "datatype": "BYTES", "shape": [1, n], "data": ["a"] * n})
                else:
                    value = True if spec.datatype == "BOOL" else 1
                    inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": [1, n], "data": [value] * n})
            return {"inputs": inputs}

        assert post(s, "/infer", doc(100)).status == 200
        _err(post(s, "/infer", doc(101)), 413, "101 BYTES elements, more than the limit of 100", "counts as 16")
    finally:
        s.close()
