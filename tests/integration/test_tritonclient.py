"""tritonclient's HTTP client against a live lockgate: JSON and binary tensors, every datatype."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from lockgate.server.tools.demo import IDENTITY_TYPES

NP = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.removeprefix("http://"))
    yield c
    c.close()


def sample(name: str, rng: np.random.Generator, shape=(2, 3)) -> np.ndarray:
    if name == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if name == "BYTES":
        return np.array([f"s{i}-\u00e9" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    if name.startswith("FP"):
        return (rng.standard_normal(shape) * 1000).astype(NP[name])
    info = np.iinfo(NP[name])
    return rng.integers(info.min, info.max, shape, dtype=NP[name], endpoint=True)


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris")
    meta = client.get_server_metadata()
    assert meta["name"] == "lockgate" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("mlp")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips_like_onnxruntime(client, demo_repo, binary):
    rng = np.random.default_rng(7)
    arrays = {name: sample(name, rng) for name in IDENTITY_TYPES}
    inputs, outputs = [], []
    for name, arr in arrays.items():
        tensor = httpclient.InferInput(f"in_{name}", list(arr.shape), name)
        tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
        outputs.append(httpclient.InferRequestedOutput(f"out_{name}", binary_data=binary))
    result = client.infer("identity", inputs, outputs=outputs, request_id="rt-1")
    session = ort.InferenceSession(str(demo_repo / "identity" / "1" / "model.onnx"))
    feeds = {f"in_{n}": (a.astype(str) if n == "BYTES" else a) for n, a in arrays.items()}
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert result.get_response()["id"] == "rt-1"
    for name in IDENTITY_TYPES:
        got = result.as_numpy(f"out_{name}")
        want = expected[f"out_{name}"]
        if name == "BYTES":
            decoded = [x.decode() if isinstance(x, bytes) else x for x in got.reshape(-1)]
            assert decoded == want.reshape(-1).tolist()
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_mixed_json_and_binary_in_one_request(client, demo_repo):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    first = httpclient.InferInput("input", [2, 64], "FP32")
    first.set_data_from_numpy(x[:2], binary_data=True)
    result = client.infer("mlp", [first], outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"))
    np.testing.assert_allclose(result.as_numpy("logits"), session.run(None, {"input": x[:2]})[0], rtol=1e-6)

    ins = []
    for name, arr, binary in (("in_FP32", x[:1, :3], True), ("in_INT64", np.arange(3).reshape(1, 3), False)):
        t = httpclient.InferInput(name, list(arr.shape), "FP32" if name == "in_FP32" else "INT64")
        t.set_data_from_numpy(arr, binary_data=binary)
        ins.append(t)
    # every other input of the identity model as JSON
    for name in IDENTITY_TYPES:
        if name in ("FP32", "INT64"):
            continue
        arr = sample(name, rng, (1, 3))
        t = httpclient.InferInput(f"in_{name}", [1, 3], name)
        t.set_data_from_numpy(arr, binary_data=False)
        ins.append(t)
    out = client.infer(
        "identity",
        ins,
        outputs=[
            httpclient.InferRequestedOutput("out_FP32", binary_data=True),
            httpclient.InferRequestedOutput("out_INT64", binary_data=False),
        ],
    )
    np.testing.assert_array_equal(out.as_numpy("out_FP32"), x[:1, :3])
    np.testing.assert_array_equal(out.as_numpy("out_INT64"), np.arange(3).reshape(1, 3))


def test_sklearn_models_answer_like_onnxruntime(client, demo_repo):
    from sklearn.datasets import load_digits, load_iris

    for name, data in (("iris", load_iris().data[:10]), ("digits", load_digits().data[:10])):
        x = data.astype(np.float32)
        t = httpclient.InferInput("input", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=True)
        result = client.infer(name, [t])
        session = ort.InferenceSession(str(demo_repo / name / "1" / "model.onnx"))
        label, probs = session.run(None, {"input": x})
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)


def test_errors_surface_in_tritonclient(client):
    t = httpclient.InferInput("petals", [1, 4], "FP32")
    t.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(httpclient.InferenceServerException) as info:
        client.infer("iris", [t])
    assert "unknown input 'petals'" in str(info.value)
    with pytest.raises(httpclient.InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert "unknown model 'nope'" in str(info.value)


def test_uint8_images_as_binary_tensors_normalised_in_the_fast_path(client, demo_repo):
    from lockgate.server.tools.demo import IMAGE_SCALE, IMAGE_SHIFT
    from lockgate.server.tools.demo import IMAGE_SIZE as S

    pixels = np.random.default_rng(11).integers(0, 256, (4, S, S, 3), dtype=np.uint8)
    t = httpclient.InferInput("image", list(pixels.shape), "UINT8")
    t.set_data_from_numpy(pixels, binary_data=True)
    got = client.infer("cnn", [t], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)]).as_numpy("logits")
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) * np.array(IMAGE_SCALE, np.float32).reshape(1, 3, 1, 1)
    x = x + np.array(IMAGE_SHIFT, np.float32).reshape(1, 3, 1, 1)
    want = ort.InferenceSession(str(demo_repo / "cnn" / "1" / "model.onnx")).run(None, {"image": x})[0]
    np.testing.assert_array_equal(got, want)


def test_model_config_and_statistics_through_tritonclient(client):
    config = client.get_model_config("mlp")
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 32
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("input", "TYPE_FP32", [64])]
    assert client.get_model_config("mlp", "1") == config
    before = client.get_inference_statistics("mlp", "1")["model_stats"][0]
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    t = httpclient.InferInput("input", [3, 64], "FP32")
    t.set_data_from_numpy(x, binary_data=True)
    for _ in range(4):
        client.infer("mlp", [t])
    after = client.get_inference_statistics("mlp", "1")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 12
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    assert after["execution_count"] - before["execution_count"] == 4
    every = client.get_inference_statistics()["model_stats"]  # GET /v2/models/stats: all models
    assert {"mlp", "iris"} <= {m["name"] for m in every}
    assert "statistics" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_class_count_returns_triton_classification_strings(client, binary):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    t = httpclient.InferInput("input", list(rows.shape), "FP32")
    t.set_data_from_numpy(rows, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=2)
    result = client.infer("iris", [t], outputs=[out])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    text = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in top]  # bytes from binary, str from JSON
    first = text[0]
    assert first[0].endswith(":0:setosa") and text[1][0].endswith(":2:virginica")
    scores = [float(v.split(":")[0]) for v in first]
    assert scores[0] >= scores[1] and 0.5 < scores[0] <= 1.0
