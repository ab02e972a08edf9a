"""Execution providers per model: preference order, prefer or require for a provider the
onnxruntime build lacks, their options, and what the metadata and /config say serves."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from lockgate.server.errors import ConfigError
from lockgate.server.serving.config import ExecutionConfig, ModelConfig
from lockgate.server.serving.model import session_providers
from lockgate.server.serving.service import ModelService
from lockgate.server.serving.triton_config import triton_model_config


def _service(registry, execution: dict) -> ModelService:
    raw = {**registry.model_config("mlp"), "execution": execution}
    return ModelService("mlp", ModelConfig.model_validate(raw), registry)


def test_cpu_by_default_and_the_metadata_says_so(services):
    s = services["mlp"]
    assert s.served[1].model.provider == "CPUExecutionProvider"
    assert s.served[1].model.metadata()["execution_provider"] == "CPUExecutionProvider"
    config = triton_model_config("mlp", s.served[1].model, 32, s.config)
    assert config["parameters"]["lockgate.execution_provider"] == {"string_value": "CPUExecutionProvider"}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["optimization"]["execution_accelerators"] == {"gpu_execution_accelerator": [], "cpu_execution_accelerator": []}


@pytest.mark.parametrize(
    ("onnxruntime", "on_caller"),
    [({}, True), ({"intra_op_num_threads": 2}, False), ({"intra_op_num_threads": 0}, False)],
)
def test_the_batcher_weighs_a_run_by_its_threads_cpu_time_only_when_the_run_is_that_threads(
    demo_registry, onnxruntime, on_caller
):
    """The CPU provider with one thread per operator does a run's work on the calling thread:
    its CPU time is the run's cost (the batcher's inline choice). A thread pool or a device
    computes while the caller waits: wall time then."""
    raw = {**demo_registry.model_config("mlp"), "onnxruntime": onnxruntime}
    s = ModelService("mlp", ModelConfig.model_validate(raw), demo_registry)
    try:
        assert s.served[1].model.runs_on_caller is on_caller
        assert s.served[1].batcher._cpu_timed is on_caller
    finally:
        s.close()


def test_a_provider_this_build_lacks_is_skipped_with_a_warning_when_preferred(demo_registry, caplog):
    with caplog.at_level(logging.WARNING, logger="lockgate.server"):
        s = _service(demo_registry, {"providers": [{"name": "CUDA", "device_id": 1}, {"name": "CPU"}]})
    try:
        assert s.served[1].model.provider == "CPUExecutionProvider"
        warned = [r.getMessage() for r in caplog.records if "CUDAExecutionProvider" in r.getMessage()]
        assert warned and "is not in this onnxruntime build" in warned[0] and "skipped" in warned[0]
        config = triton_model_config("mlp", s.served[1].model, 32, s.config)
        accelerators = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
        assert accelerators == [{"name": "cuda", "parameters": {"device_id": "1"}}]
        assert config["instance_group"][0]["kind"] == "KIND_CPU"  # what serves, not what was asked for
    finally:
        s.close()


def test_a_required_provider_this_build_lacks_is_refused_naming_it(demo_registry):
    with pytest.raises(ConfigError) as info:
        _service(demo_registry, {"providers": [{"name": "TensorRT"}, {"name": "CPU"}], "missing": "require"})
    message = str(info.value)
    assert "TensorRT (TensorrtExecutionProvider) is not in this onnxruntime build" in message
    assert "CPUExecutionProvider" in message and "model mlp version 1: execution" in message
    with pytest.raises(ConfigError, match="none of the execution providers \\(CUDA\\) is in this onnxruntime build"):
        _service(demo_registry, {"providers": [{"name": "CUDA"}]})


def test_options_must_fit_their_provider():
    with pytest.raises(ValidationError, match="fp16 do not apply to CUDA"):
        ExecutionConfig.model_validate({"providers": [{"name": "CUDA", "fp16": True}]})
    with pytest.raises(ValidationError, match="device_id do not apply to CPU"):
        ExecutionConfig.model_validate({"providers": [{"name": "CPU", "device_id": 2}]})
    with pytest.raises(ValidationError, match="providers"):
        ExecutionConfig.model_validate({"providers": []})


def test_provider_options_as_onnxruntime_takes_them(monkeypatch):
    """The options each provider gets, and TensorRT's engine cache folder keyed by the artifact's
    sha256 (a build that has the GPU providers, as onnxruntime-gpu's does)."""
    import onnxruntime as ort

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    execution = ExecutionConfig.model_validate(
        {
            "providers": [
                {"name": "TensorRT", "fp16": True, "max_workspace_size": 1 << 28},
                {"name": "CUDA", "device_id": 1, "gpu_mem_limit": 1 << 30, "cudnn_conv_algo_search": "HEURISTIC"},
                {"name": "CPU"},
            ]
        }
    )
    names, options = session_providers(execution, "test", "ab" * 32, "/home/x/engines")
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options[0] == {
        "device_id": "0",
        "trt_fp16_enable": "true",
        "trt_int8_enable": "false",
        "trt_max_workspace_size": str(1 << 28),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": "/home/x/engines/" + "ab" * 32,
    }
    assert options[1] == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": str(1 << 30)}
    assert options[2] == {}


def test_the_optimised_graph_is_cached_by_artifact_and_reused_and_a_changed_one_is_rebuilt(demo_registry, tmp_path, caplog):
    import numpy as np

    raw = {**demo_registry.model_config("cnn"), "onnxruntime": {"optimized_model_cache": True}}
    config = ModelConfig.model_validate(raw)
    folder = tmp_path / "optimized"

    def answer(service: ModelService) -> np.ndarray:
        model = service.served[1].model
        x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
        return model.session.run(None, {model.session.get_inputs()[0].name: x})[0]

    plain = ModelService("cnn", ModelConfig.model_validate(demo_registry.model_config("cnn")), demo_registry)
    first = ModelService("cnn", config, demo_registry, optimized_dir=str(folder))
    sha = demo_registry.get_version("cnn", 1).sha256
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and files[0].startswith(sha) and {f.rsplit(".", 1)[1] for f in files} == {"onnx", "sha256"}
    cached = next(folder.glob("*.onnx"))
    assert "-all-CPU-ort" in cached.name  # level, provider and onnxruntime build in the key
    stamp = cached.stat().st_mtime_ns
    second = ModelService("cnn", config, demo_registry, optimized_dir=str(folder))
    assert cached.stat().st_mtime_ns == stamp  # read, not written again
    want = answer(plain)
    np.testing.assert_allclose(answer(first), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(answer(second), want, rtol=1e-5, atol=1e-6)
    # a cached graph changed on disk: not loaded; optimised again from the verified artifact
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    with caplog.at_level(logging.WARNING, logger="lockgate.server"):
        third = ModelService("cnn", config, demo_registry, optimized_dir=str(folder))
    assert "does not match its digest" in caplog.text
    np.testing.assert_allclose(answer(third), want, rtol=1e-5, atol=1e-6)
    assert next(folder.glob("*.onnx")).read_bytes() != b"" and not list(folder.glob(".*"))
    for s in (plain, first, second, third):
        s.close()


def test_io_binding_gives_the_same_answers_and_is_off_on_cpu_by_default(demo_registry, services):
    import numpy as np

    assert services["mlp"].served[1].model.io_device is None  # auto: no GPU provider serves here
    bound = _service(demo_registry, {"providers": [{"name": "CPU"}], "io_binding": "on"})
    try:
        model = bound.served[1].model
        assert model.io_device == ("cpu", 0)
        x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
        plain = services["mlp"].served[1].model.run({"input": x})
        through = model.run({"input": x})
        assert len(through) == len(plain) and all(np.array_equal(a, b) for a, b in zip(through, plain))
    finally:
        bound.close()
