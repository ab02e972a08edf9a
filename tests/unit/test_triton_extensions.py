"""Triton's protocol extensions on a model replica, driven in-process (no Ray): model
configuration, statistics, classification and the priority of the schedule policy."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lockgate.server.errors import BadRequest, ConfigError
from lockgate.server.serving.batching import Batcher
from lockgate.server.serving.config import DynamicBatchingConfig, ModelConfig, load_model_config
from lockgate.server.serving.control_app import ControlApp
from lockgate.server.serving.protocol import classify
from lockgate.server.serving.stats import FLUSH_S, Statistics, read_statistics
from tests.asgi import call
from tests.unit.test_protocol import IRIS_ROW, get, iris_request, post, service

# -- model configuration ---------------------------------------------------------------------------


def test_config_describes_the_served_version_as_triton_does(services):
    r = get(services["mlp"], "/config")
    assert r.status == 200, r.body
    config = r.json()
    assert config["name"] == "mlp" and config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 32
    assert config["input"] == [
        {
            "name": "input",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NONE",
            "dims": [64],
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        }
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [("logits", "TYPE_FP32", [10])]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["instance_group"][0]["count"] == 1
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    sha = services["mlp"].served[1].model.sha256
    assert config["parameters"]["lockgate.sha256"] == {"string_value": sha}
    assert get(services["mlp"], "/versions/1/config").json() == config
    assert get(services["mlp"], "/versions/7/config").status == 404


def test_config_gives_inputs_as_clients_send_them(services):
    """The cnn's image input is preprocessed: clients send UINT8 HWC, the graph takes FP32 NCHW."""
    config = get(services["cnn"], "/config").json()
    image = config["input"][0]
    assert image["data_type"] == "TYPE_UINT8"
    assert image["dims"] == list(services["cnn"].served[1].model.inputs[0].shape[1:])
    assert image["dims"][-1] == 3  # channels last, as sent
    types = {o["name"]: o["data_type"] for o in get(services["identity"], "/config").json()["output"]}
    assert types["out_BYTES"] == "TYPE_STRING" and types["out_BOOL"] == "TYPE_BOOL" and types["out_FP16"] == "TYPE_FP16"


def test_a_model_without_batching_keeps_its_whole_shape(demo_registry):
    s = service(demo_registry, "mlp")
    try:
        s.config = s.config.model_copy(update={"max_batch_size": 0})
        from lockgate.server.serving.triton_config import triton_model_config

        config = triton_model_config("mlp", s.served[1].model, 0, s.config)
        assert config["input"][0]["dims"] == [-1, 64]
        assert "dynamic_batching" not in config
    finally:
        s.close()


# -- classification ---------------------------------------------------------------------------------


def _probabilities(s, rows):
    sess = ort.InferenceSession(s.registry.get_version("iris", 1).artifact_path)
    return sess.run(["probabilities"], {"input": np.array(rows, np.float32)})[0]


def test_class_count_gives_the_top_classes_with_their_labels(services):
    s = services["iris"]
    rows = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]
    doc = iris_request(outputs=[{"name": "probabilities", "parameters": {"classification": 2}}])
    doc["inputs"][0].update(shape=[2, 4], data=[v for r in rows for v in r])
    r = post(s, "/infer", doc)
    assert r.status == 200, r.body
    out = r.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    probs = _probabilities(s, rows)
    labels = ["setosa", "versicolor", "virginica"]
    expected = []
    for row in probs:
        for index in np.argsort(-row, kind="stable")[:2]:
            expected.append(f"{float(row[index]):f}:{index}:{labels[index]}")
    assert out["data"] == expected
    assert out["data"][0].endswith(":0:setosa") and out["data"][2].endswith(":2:virginica")


def test_class_count_without_labels_and_as_binary(services):
    s = services["mlp"]
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    doc = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x.reshape(-1).tolist()}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3, "binary_data": True}}],
    }
    r = post(s, "/infer", doc)
    assert r.status == 200, r.body
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.body[:n])
    assert head["outputs"][0]["datatype"] == "BYTES" and head["outputs"][0]["shape"] == [1, 3]
    blob = r.body[n:]
    texts, at = [], 0
    while at < len(blob):  # Triton's BYTES layout: a 4-byte little-endian length before each element
        size = int.from_bytes(blob[at : at + 4], "little")
        texts.append(blob[at + 4 : at + 4 + size].decode())
        at += 4 + size
    y = s.served[1].model.run({"input": x})[0][0]
    top = np.argsort(-y, kind="stable")[:3]
    assert texts == [f"{float(y[i]):f}:{i}" for i in top]


def test_classify_orders_ties_by_index_and_clamps_the_count():
    values = np.array([[1, 5, 5, 2]], np.int32)
    assert classify(values, 10, True, ["a", "b"]).tolist() == [[b"5:1:b", b"5:2", b"2:3", b"1:0:a"]]
    assert classify(np.array([0.5, 0.25], np.float32), 1, False, None).tolist() == [b"0.500000:0"]


@pytest.mark.parametrize(
    "value,fragment",
    [
        (0, "parameter 'classification' must be a positive integer, got 0"),
        ("2", "parameter 'classification' must be a positive integer, got \"2\""),
        (True, "parameter 'classification' must be a positive integer, got true"),
    ],
)
def test_a_bad_class_count_is_a_400_naming_it(services, value, fragment):
    r = post(
        services["iris"], "/infer", iris_request(outputs=[{"name": "probabilities", "parameters": {"classification": value}}])
    )
    assert r.status == 400, r.body
    assert fragment in r.json()["error"] and "output 'probabilities'" in r.json()["error"]


def test_classification_of_a_bytes_output_is_refused(services):
    s = services["identity"]
    inputs = [
        {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": [1, 1],
            "data": [{"BOOL": True, "BYTES": "a"}.get(spec.datatype, 1)],
        }
        for spec in s.served[1].model.inputs
    ]
    r = post(s, "/infer", {"inputs": inputs, "outputs": [{"name": "out_BYTES", "parameters": {"classification": 1}}]})
    assert r.status == 400 and "needs a numeric output" in r.json()["error"]


def test_labels_file_is_read_from_the_model_folder(tmp_path: Path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "classes.txt").write_text("cat\r\ndog\n\n", encoding="utf-8")
    (model / "config.yaml").write_text("labels:\n  y: classes.txt\n  z: [a, b]\n", encoding="utf-8")
    assert load_model_config(model).labels == {"y": ["cat", "dog"], "z": ["a", "b"]}
    (model / "config.yaml").write_text("labels:\n  y: ../secret.txt\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="outside the model's folder"):
        load_model_config(model)
    (model / "config.yaml").write_text("labels:\n  y: missing.txt\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="labels file 'missing.txt' cannot be read"):
        load_model_config(model)


def test_labels_for_an_output_the_model_lacks_are_refused(demo_registry):
    config = ModelConfig.model_validate({**demo_registry.model_config("mlp"), "labels": {"y": ["a"]}})
    from lockgate.server.serving.service import ModelService

    with pytest.raises(ConfigError, match="labels name output\\(s\\) y; version 1 gives logits"):
        ModelService("mlp", config, demo_registry)


# -- statistics -------------------------------------------------------------------------------------


def test_statistics_count_requests_batches_and_failures(demo_registry):
    s = service(demo_registry, "iris")
    try:
        for n in (1, 3):
            doc = iris_request()
            doc["inputs"][0].update(shape=[n, 4], data=IRIS_ROW * n)
            assert post(s, "/infer", doc).status == 200
        bad = iris_request()
        bad["inputs"][0]["data"] = [1, 2, "x", 4]
        assert post(s, "/infer", bad).status == 400  # reached version 1: a failed request of it
        assert post(s, "/versions/9/infer", iris_request()).status == 404  # no version: not counted
        r = get(s, "/stats")
        assert r.status == 200, r.body
        (stat,) = r.json()["model_stats"]
        assert stat["name"] == "iris" and stat["version"] == "1"
        assert stat["inference_count"] == 4 and stat["execution_count"] == 2
        inf = stat["inference_stats"]
        assert inf["success"]["count"] == 2 and inf["fail"]["count"] == 1
        assert inf["queue"]["count"] == 2 and inf["compute_infer"]["count"] == 2 and inf["compute_output"]["count"] == 2
        assert inf["success"]["ns"] > inf["compute_infer"]["ns"] > 0
        assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stat["batch_stats"]] == [(1, 1), (3, 1)]
        assert stat["last_inference"] > 1.7e12  # ms since the epoch
        assert get(s, "/versions/1/stats").json() == r.json()
        assert get(s, "/versions/9/stats").status == 404
    finally:
        s.close()


def test_statistics_add_up_across_the_processes_of_a_node(tmp_path: Path):
    """Two replicas of a model (two Statistics on one folder) and one that is gone: the totals of all three."""
    first, second, gone = (Statistics("m", str(tmp_path)) for _ in range(3))
    for stats, rows in ((first, 2), (second, 5), (gone, 1)):
        v = stats.version(1)
        v.batch(rows, 10, 100)
        v.answered(True, 5000, 1000, 10, 100, 7)
        stats.flush()
    gone._path = None  # its process ended: its file stays, as counters do
    second.version(2).answered(False, 9)
    second.flush()
    answer = read_statistics(str(tmp_path), "m")
    one, two = answer["model_stats"]
    assert (one["version"], one["inference_count"], one["execution_count"]) == ("1", 8, 3)
    assert one["inference_stats"]["success"] == {"count": 3, "ns": 15000}
    assert one["inference_stats"]["compute_output"] == {"count": 3, "ns": 21}
    assert one["inference_stats"]["queue"] == {"count": 3, "ns": 3000}
    assert one["inference_stats"]["compute_infer"] == {"count": 3, "ns": 300}
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in one["batch_stats"]] == [(1, 1), (2, 1), (5, 1)]
    assert two["inference_stats"]["fail"] == {"count": 1, "ns": 9}
    assert read_statistics(str(tmp_path), "other") == {"model_stats": []}
    assert [m["version"] for m in read_statistics(str(tmp_path), "m", 2)["model_stats"]] == ["2"]


def test_statistics_of_a_replica_reach_the_file_within_the_flush_interval(tmp_path: Path):
    async def go():
        stats = Statistics("m", str(tmp_path))
        stats.version(1).batch(4, 1, 1)
        await asyncio.sleep(FLUSH_S + 0.2)
        return read_statistics(str(tmp_path), "m")

    (stat,) = asyncio.run(go())["model_stats"]
    assert stat["inference_count"] == 4


def test_server_statistics_and_extensions_on_the_control_routes(tmp_path: Path):
    stats = Statistics("m", str(tmp_path))
    stats.version(3).batch(1, 1, 1)
    stats.flush()

    async def statistics():
        return read_statistics(str(tmp_path))

    app = ControlApp(["m"], statistics=statistics)
    r = asyncio.run(call(app, "GET", "/v2/models/stats"))
    assert r.status == 200 and [(m["name"], m["version"]) for m in r.json()["model_stats"]] == [("m", "3")]
    assert asyncio.run(call(app, "POST", "/v2/models/stats")).status == 405
    extensions = asyncio.run(call(app, "GET", "/v2")).json()["extensions"]
    assert {"binary_tensor_data", "classification", "model_configuration", "statistics", "schedule_policy"} <= set(extensions)
    bare = asyncio.run(call(ControlApp(["m"]), "GET", "/v2")).json()["extensions"]
    assert "statistics" not in bare
    assert asyncio.run(call(ControlApp(["m"]), "GET", "/v2/models/stats")).status == 404


# -- schedule policy: priority ---------------------------------------------------------------------


class Recorder:
    def __init__(self, hold: threading.Event) -> None:
        self.order: list[float] = []
        self.hold = hold

    def __call__(self, feeds):
        self.hold.wait(5)
        self.order.extend(feeds["x"][:, 0].tolist())
        return [feeds["x"]]


def test_higher_priority_requests_are_served_first():
    """Batch size 1, the model held busy: requests queued at levels 3, 2, 3, 1 run 1, 2, 3, 3 (level, then arrival)."""
    hold = threading.Event()
    model = Recorder(hold)

    async def go():
        b = Batcher(model, ["y"], 1, DynamicBatchingConfig(priority_levels=3), ThreadPoolExecutor(1))
        first = asyncio.ensure_future(b.submit({"x": np.full((1, 1), 0.0, np.float32)}, 1))
        await asyncio.sleep(0.05)  # the first request holds the model
        queued = [
            asyncio.ensure_future(b.submit({"x": np.full((1, 1), float(i), np.float32)}, 1, priority=p))
            for i, p in ((1, 3), (2, 2), (3, None), (4, 1))  # None: the default level, the lowest (3)
        ]
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(first, *queued)

    asyncio.run(go())
    assert model.order == [0.0, 4.0, 2.0, 1.0, 3.0]


def test_a_priority_outside_the_declared_levels_is_a_400():
    b = Batcher(lambda f: [f["x"]], ["y"], 1, DynamicBatchingConfig(priority_levels=2), ThreadPoolExecutor(1))
    with pytest.raises(BadRequest, match="parameter 'priority' must be 0 \\(the default level\\) or 1 to 2, got 3"):
        asyncio.run(b.submit({"x": np.zeros((1, 1), np.float32)}, 1, priority=3))
    none = Batcher(lambda f: [f["x"]], ["y"], 1, DynamicBatchingConfig(), ThreadPoolExecutor(1))
    with pytest.raises(BadRequest, match="declares no priority levels"):
        asyncio.run(none.submit({"x": np.zeros((1, 1), np.float32)}, 1, priority=1))
    assert asyncio.run(none.submit({"x": np.ones((1, 1), np.float32)}, 1, priority=0))["y"].tolist() == [[1.0]]
    with pytest.raises(ValueError, match="default_priority_level \\(3\\) must be at most priority_levels \\(2\\)"):
        DynamicBatchingConfig(priority_levels=2, default_priority_level=3)


@pytest.mark.parametrize("value", [-1, "high", 1.5])
def test_a_malformed_priority_parameter_is_a_400_naming_it(services, value):
    r = post(services["iris"], "/infer", iris_request(parameters={"priority": value}))
    assert r.status == 400 and "parameter 'priority'" in r.json()["error"], r.body
