"""OIP over gRPC against a live lockgate: tritonclient.grpc (raw contents, every datatype), the
service stub with typed contents, health, metadata, config, statistics, the repository, and
errors with Triton's status codes, all through the gRPC ingress (HAProxy routing by model)."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from lockgate.server.tools.demo import IDENTITY_TYPES

from .test_tritonclient import sample


@pytest.fixture(scope="module")
def address(server, settings):
    return settings.grpc_address


@pytest.fixture(scope="module")
def client(address):
    c = grpcclient.InferenceServerClient(address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(address):
    channel = grpc.insecure_channel(address)
    yield pbg.GRPCInferenceServiceStub(channel)
    channel.close()


def test_health_metadata_and_repository(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "lockgate" and {"binary_tensor_data", "model_configuration", "statistics"} <= set(meta.extensions)
    assert client.is_model_ready("iris") and client.is_model_ready("mlp", "1")
    model = client.get_model_metadata("mlp")
    assert model.name == "mlp" and model.platform == "onnxruntime_onnx" and list(model.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 64])]
    index = client.get_model_repository_index()
    assert {m.name: m.state for m in index.models} == {n: "READY" for n in ("cnn", "digits", "identity", "iris", "mlp")}


@pytest.mark.parametrize("model", ["iris", "mlp", "identity", "cnn", "digits"])
def test_every_model_is_routed_to_its_own_replicas(client, model):
    """The ingress reads the model's name from each message: metadata of each model comes from that model."""
    assert client.get_model_metadata(model).name == model
    assert client.get_model_config(model).config.name == model


def test_every_datatype_round_trips_with_raw_contents(client, demo_repo):
    rng = np.random.default_rng(17)
    arrays = {name: sample(name, rng) for name in IDENTITY_TYPES}
    inputs, outputs = [], []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
        outputs.append(grpcclient.InferRequestedOutput(f"out_{name}"))
    result = client.infer("identity", inputs, outputs=outputs, request_id="grpc-raw")
    assert result.get_response().id == "grpc-raw" and result.get_response().model_version == "1"
    session = ort.InferenceSession(str(demo_repo / "identity" / "1" / "model.onnx"))
    feeds = {f"in_{n}": (a.astype(str) if n == "BYTES" else a) for n, a in arrays.items()}
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for name, array in arrays.items():
        got = result.as_numpy(f"out_{name}")
        if name == "BYTES":
            assert [v.decode() for v in got.reshape(-1)] == [str(v) for v in expected[f"out_{name}"].reshape(-1)]
        else:
            assert got.dtype == array.dtype and got.shape == array.shape
            np.testing.assert_array_equal(got, expected[f"out_{name}"])


_TYPED = {
    "BOOL": ("bool_contents", lambda a: a.tolist()),
    "INT8": ("int_contents", lambda a: a.tolist()),
    "INT16": ("int_contents", lambda a: a.tolist()),
    "INT32": ("int_contents", lambda a: a.tolist()),
    "INT64": ("int64_contents", lambda a: a.tolist()),
    "UINT8": ("uint_contents", lambda a: a.tolist()),
    "UINT16": ("uint_contents", lambda a: a.tolist()),
    "UINT32": ("uint_contents", lambda a: a.tolist()),
    "UINT64": ("uint64_contents", lambda a: a.tolist()),
    "FP32": ("fp32_contents", lambda a: a.tolist()),
    "FP64": ("fp64_contents", lambda a: a.tolist()),
    "BYTES": ("bytes_contents", lambda a: [v.encode() for v in a.tolist()]),
}


def test_typed_contents_of_every_datatype_that_has_them(stub):
    rng = np.random.default_rng(23)
    request = pb.ModelInferRequest(model_name="identity", id="typed")
    arrays = {}
    for name, (field, values) in _TYPED.items():
        array = sample(name, rng, shape=(1, 3))
        arrays[name] = array
        tensor = request.inputs.add(name=f"in_{name}", datatype=name, shape=[1, 3])
        getattr(tensor.contents, field).extend(values(array.reshape(-1)))
    fp16 = sample("FP16", rng, shape=(1, 3))  # FP16 has no typed field: it must come raw
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "send it in raw_input_contents" in info.value.details()
    del request.inputs[-1]
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3])
    raw = [_raw(arrays[t.datatype]) if t.datatype in arrays else fp16.tobytes() for t in request.inputs]
    for t in request.inputs:
        t.ClearField("contents")
    request.raw_input_contents.extend(raw)
    response, call = stub.ModelInfer.with_call(request)
    assert response.id == "typed"
    assert len(dict(call.trailing_metadata())["lockgate-request-id"]) == 32  # the id of its audit record
    outs = {o.name: i for i, o in enumerate(response.outputs)}
    np.testing.assert_array_equal(
        np.frombuffer(response.raw_output_contents[outs["out_INT16"]], "<i2"), arrays["INT16"].reshape(-1)
    )
    # and typed contents as such: every typed input at once, FP16 left out of the request
    typed = pb.ModelInferRequest(model_name="identity")
    for name, (field, values) in _TYPED.items():
        tensor = typed.inputs.add(name=f"in_{name}", datatype=name, shape=[1, 3])
        getattr(tensor.contents, field).extend(values(arrays[name].reshape(-1)))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(typed)  # the identity model needs every input, FP16 too
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "in_FP16" in info.value.details()


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in array.reshape(-1))
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_typed_fp32_contents_answer_like_onnxruntime(stub, demo_repo):
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(rows.reshape(-1).tolist())
    request.outputs.add(name="probabilities")
    response = stub.ModelInfer(request)
    (out,) = response.outputs
    assert out.name == "probabilities" and list(out.shape) == [2, 3] and out.datatype == "FP32"
    expected = ort.InferenceSession(str(demo_repo / "iris" / "1" / "model.onnx")).run(["probabilities"], {"input": rows})[0]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3), expected)


def test_config_statistics_and_classification(client):
    config = client.get_model_config("mlp").config
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [64])]
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP32"
    before = client.get_inference_statistics("mlp").model_stats[0]
    x = grpcclient.InferInput("input", [2, 64], "FP32")
    x.set_data_from_numpy(np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32))
    for _ in range(3):
        client.infer("mlp", [x])
    after = client.get_inference_statistics("mlp").model_stats[0]
    assert after.inference_count - before.inference_count == 6
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    every = client.get_inference_statistics()  # no name: every model, from the control replica
    assert {s.name for s in every.model_stats} >= {"mlp", "iris"}
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    t = grpcclient.InferInput("input", [1, 4], "FP32")
    t.set_data_from_numpy(rows)
    top = client.infer("iris", [t], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=2)])
    first = [v.decode() for v in top.as_numpy("probabilities")[0]]
    assert first[0].endswith(":0:setosa") and len(first) == 2


def test_errors_carry_tritons_status_codes(client, stub):
    x = grpcclient.InferInput("petals", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer("iris", [x])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "unknown input 'petals'" in info.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer("nope", [x])
    assert info.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in info.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.get_model_metadata("iris", "9")
    assert info.value.status() == "StatusCode.NOT_FOUND" and "no version '9'" in info.value.message()
    good = grpcclient.InferInput("input", [1, 4], "FP32")
    good.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer("iris", [good], priority=7)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "parameter 'priority'" in info.value.message()
    with pytest.raises(grpc.RpcError) as rpc:
        stub.TraceSetting(pb.TraceSettingRequest())
    assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    broken = pb.ModelInferRequest(model_name="iris", raw_input_contents=[b"\x00" * 16])
    broken.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    broken.inputs.add(name="extra", datatype="FP32", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as rpc:
        stub.ModelInfer(broken)
    assert (
        rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "raw_input_contents has 1 entries for 2 inputs" in rpc.value.details()
    )
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.load_model("nope")  # RepositoryModelLoad, answered by the control replica
    assert info.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope' in the registry" in info.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.unload_model("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    # the replica is still answering
    assert client.infer("iris", [good]).as_numpy("probabilities").shape == (1, 3)


def test_a_model_name_that_shares_a_prefix_goes_to_no_other_model(stub):
    """'mlpx' starts with 'mlp': the ingress matches the whole name with its length, so it is unknown, not mlp's."""
    request = pb.ModelMetadataRequest(name="mlpx")
    with pytest.raises(grpc.RpcError) as rpc:
        stub.ModelMetadata(request)
    assert rpc.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'mlpx'" in rpc.value.details()
