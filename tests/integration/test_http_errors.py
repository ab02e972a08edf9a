"""One test per row of the error list, against the live server: right status, OIP body, named problem."""

from __future__ import annotations

import json

import pytest
import requests

IRIS = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}


def infer(server, doc=None, raw=None, headers=None, model="iris", version=None):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = raw if raw is not None else json.dumps(doc).encode()
    return requests.post(server + path, data=body, headers=headers or {"Content-Type": "application/json"}, timeout=10)


def error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    return body["error"]


def with_input(**changes):
    doc = json.loads(json.dumps(IRIS))
    doc["inputs"][0].update(changes)
    return doc


def test_ok_baseline(server):
    r = infer(server, IRIS)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert r.headers["server"] == "lockgate"  # answered by the replica-owned listener, not Serve's uvicorn


def test_malformed_json(server):
    assert "malformed JSON body" in error(infer(server, raw=b'{"inputs": ['), 400)


def test_malformed_binary_framing(server):
    header = json.dumps(with_input(parameters={"binary_data_size": 16})).encode()
    h = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    assert "runs past the end" in error(infer(server, raw=header + b"\0" * 8, headers=h), 400)
    h["Inference-Header-Content-Length"] = str(len(header) + 100)
    assert "Inference-Header-Content-Length is" in error(infer(server, raw=header, headers=h), 400)


def test_unknown_input(server):
    assert "unknown input 'sepal'" in error(infer(server, with_input(name="sepal")), 400)


def test_missing_input(server):
    doc = {"inputs": [{"name": "in_FP32", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    assert "missing inputs" in error(infer(server, doc, model="identity"), 400)


def test_wrong_datatype(server):
    msg = error(infer(server, with_input(datatype="INT64", data=[1, 2, 3, 4])), 400)
    assert "datatype INT64 does not match the model's FP32" in msg


def test_shape_disagrees_with_data_length(server):
    msg = error(infer(server, with_input(shape=[2, 4])), 400)
    assert "input 'input'" in msg and "4 elements" in msg and "expects 8" in msg


def test_shape_disagrees_with_model(server):
    msg = error(infer(server, with_input(shape=[1, 3], data=[1.0, 2.0, 3.0])), 400)
    assert "shape [1, 3] does not match the model's [-1, 4]" in msg


def test_batch_larger_than_max_batch_size(server):
    msg = error(infer(server, with_input(shape=[40, 4], data=[0.5] * 160)), 400)
    assert "batch of 40 exceeds the model's max_batch_size of 32" in msg


def test_unknown_model_and_version_are_404(server):
    assert "unknown model 'nope'" in error(infer(server, IRIS, model="nope"), 404)
    assert "unknown model 'iris2'" in error(infer(server, IRIS, model="iris2"), 404)
    assert "no version '3'" in error(infer(server, IRIS, version="3"), 404)
    assert "no version" in error(requests.get(f"{server}/v2/models/iris/versions/3/ready", timeout=5), 404)


def test_wrong_method_is_405(server):
    assert "use POST" in error(requests.get(f"{server}/v2/models/iris/infer", timeout=5), 405)


def test_a_client_mistake_never_takes_the_replica_down(server):
    junk = [
        b"",
        b"null",
        b"\x00\xff" * 100,
        b'{"inputs": {}}',
        b'{"inputs": [null]}',
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[-1,4],"data":[]}]}',
    ]
    for raw in junk:
        r = infer(server, raw=raw)
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
    assert infer(server, IRIS).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/iris",
        "/v2/models/iris/ready",
        "/v2/models/iris/versions/1",
        "/v2/models/iris/versions/1/ready",
    ],
)
def test_read_routes(server, path):
    assert requests.get(server + path, timeout=5).status_code == 200
