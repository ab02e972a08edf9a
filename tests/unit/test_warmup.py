"""Triton's model_warmup: samples run through batch assembly and the session when a version loads,
before the service exists; a sample that fails keeps the version from serving, naming it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lockgate.server.errors import ModelLoadError
from lockgate.server.serving.config import ModelConfig, WarmupSample, parse_model_config
from lockgate.server.serving.service import ModelService
from lockgate.server.serving.triton_config import triton_model_config
from lockgate.server.serving.warmup import warmup_inputs


def _service(registry, name: str, warmup: list[dict]) -> ModelService:
    raw = {**registry.model_config(name), "model_warmup": warmup}
    return ModelService(name, ModelConfig.model_validate(raw), registry)


def test_warmup_runs_each_sample_through_assembly_and_the_model_before_the_service_exists(demo_registry, caplog):
    samples = [
        {"name": "zeros", "batch_size": 4, "count": 2, "inputs": {"image": {"zero_data": True}}},
        {"name": "noise", "batch_size": 1, "inputs": {"image": {"random_data": True}}},
    ]
    with caplog.at_level(logging.INFO, logger="lockgate.server"):
        s = _service(demo_registry, "cnn", samples)
    try:
        lines = [r.getMessage() for r in caplog.records if "warmup" in r.getMessage()]
        assert len(lines) == 2
        assert "model cnn version 1 warmup 'zeros': 2 run(s) of batch 4" in lines[0]
        assert "warmup 'noise': 1 run(s) of batch 1" in lines[1]
        # the cnn's uint8 HWC input went through the fused preprocessing into a batch buffer
        assert s.served[1].batcher._assembler.allocations == 1
        config = triton_model_config("cnn", s.served[1].model, 4, s.config)
        first = config["model_warmup"][0]
        assert first["name"] == "zeros" and first["batch_size"] == 4 and first["count"] == 2
        assert first["inputs"]["image"]["data_type"] == "TYPE_UINT8" and first["inputs"]["image"]["zero_data"] is True
    finally:
        s.close()


@pytest.mark.parametrize(
    "sample,fragment",
    [
        ({"name": "s1", "inputs": {"pixels": {"zero_data": True}}}, "names input(s) pixels; the model's inputs are input"),
        ({"name": "s2", "inputs": {}}, "gives no data for input 'input'"),
        (
            {"name": "s3", "batch_size": 33, "inputs": {"input": {"zero_data": True}}},
            "batch_size 33 is over the model's max_batch_size of 32",
        ),
        (
            {"name": "s4", "inputs": {"input": {"zero_data": True, "dims": [5]}}},
            "dims [5] of input 'input' do not fit its shape [64]",
        ),
    ],
)
def test_a_failing_sample_keeps_the_version_from_loading_and_names_it(demo_registry, sample, fragment):
    with pytest.raises(ModelLoadError) as info:
        _service(demo_registry, "mlp", [sample])
    message = str(info.value)
    assert "mlp" in message and "version 1" in message and f"warmup sample '{sample['name']}' failed" in message
    assert fragment in message


def test_warmup_config_is_checked_when_read():
    for bad, fragment in [
        ({"name": "x", "inputs": {"a": {}}}, "exactly one of zero_data: true, random_data: true"),
        ({"name": "x", "inputs": {"a": {"zero_data": True, "random_data": True}}}, "exactly one of"),
        ({"name": "x", "count": 0, "inputs": {"a": {"zero_data": True}}}, "count"),
        ({"name": "x", "inputs": {"a": {"zero_data": True, "dims": [0]}}}, "dims must be positive"),
        ({"inputs": {"a": {"zero_data": True}}}, "model_warmup.0.name"),
    ]:
        with pytest.raises(Exception, match="model_warmup") as info:
            parse_model_config({"model_warmup": [bad]}, source="test")
        assert fragment in str(info.value), str(info.value)


def test_random_and_zero_data_of_every_datatype(demo_registry):
    s = ModelService("identity", ModelConfig.model_validate(demo_registry.model_config("identity")), demo_registry)
    try:
        model = s.served[1].model
        sample = WarmupSample.model_validate(
            {"name": "all", "batch_size": 2, "inputs": {spec.name: {"random_data": True, "dims": [3]} for spec in model.inputs}}
        )
        inputs = warmup_inputs(model, sample, 8, np.random.default_rng(0))
        assert {n: a.shape for n, a in inputs.items()} == {spec.name: (2, 3) for spec in model.inputs}
        assert inputs["in_BYTES"].dtype == object and isinstance(inputs["in_BYTES"][0, 0], str)
        assert inputs["in_BOOL"].dtype == np.bool_ and inputs["in_FP16"].dtype == np.float16
        outputs = model.run(inputs)  # the identity model takes them as they are
        assert len(outputs) == len(model.outputs)
        zeros = WarmupSample.model_validate(
            {"name": "z", "inputs": {spec.name: {"zero_data": True, "dims": [2]} for spec in model.inputs}}
        )
        assert not warmup_inputs(model, zeros, 8, np.random.default_rng(0))["in_INT64"].any()
    finally:
        s.close()
