"""Triton's model configuration extension: a served version described as Triton's ``config.pbtxt``
would describe it, in the JSON that ``GET /v2/models/<m>[/versions/<v>]/config`` answers with.

perf_analyzer, Model Analyzer and tritonclient's ``get_model_config`` read it: the batch size, each
input and output with its Triton type and its dimensions (without the batch dimension when the
model batches), the dynamic batcher's settings and the instance group, as lockgate serves them.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig, WarmupSample
from .model import ModelVersion, TensorSpec

__all__ = ["TRITON_TYPES", "triton_model_config"]

# Open Inference Protocol datatypes -> Triton's model configuration DataType names.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def _dims(spec: TensorSpec, batching: bool) -> list[int]:
    return list(spec.shape[1:] if batching else spec.shape)


def _version_policy(config: ModelConfig) -> dict[str, Any]:
    policy = config.version_policy
    if policy.all is not None:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": list(policy.specific.versions)}}
    assert policy.latest is not None
    return {"latest": {"num_versions": policy.latest.num_versions}}


def _accelerators(config: ModelConfig) -> dict[str, Any]:
    """The configured GPU providers as Triton's execution_accelerators (names as Triton writes them)."""
    gpu = []
    for p in config.execution.providers:
        if p.name == "TensorRT":
            params = {"precision_mode": "FP16" if p.fp16 else ("INT8" if p.int8 else "FP32")}
            gpu.append({"name": "tensorrt", "parameters": {**params, "max_workspace_size_bytes": str(p.max_workspace_size)}})
        elif p.name == "CUDA":
            gpu.append({"name": "cuda", "parameters": {"device_id": str(p.device_id)}})
    return {"gpu_execution_accelerator": gpu, "cpu_execution_accelerator": []}


def _instances(name: str, config: ModelConfig, provider: str) -> list[dict[str, Any]]:
    count = config.replicas if config.autoscaling is None else max(config.autoscaling.min_replicas, 1)
    gpu = provider != "CPUExecutionProvider"
    devices = sorted({p.device_id for p in config.execution.providers if p.name != "CPU"}) if gpu else []
    return [
        {
            "name": name,
            "kind": "KIND_GPU" if gpu else "KIND_CPU",
            "count": count,
            "gpus": devices,
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
    ]


def _dynamic_batching(config: ModelConfig) -> dict[str, Any]:
    b = config.dynamic_batching
    return {
        "preferred_batch_size": list(b.preferred_batch_sizes),
        "max_queue_delay_microseconds": b.max_queue_delay_us,
        "preserve_ordering": False,
        "priority_levels": b.priority_levels,
        "default_priority_level": b.default_priority_level or b.priority_levels,
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": b.default_timeout_us,
            "allow_timeout_override": True,
            "max_queue_size": b.max_queue_size,
        },
        "priority_queue_policy": {},
    }


def _warmup(model: ModelVersion, batching: bool, sample: WarmupSample) -> dict[str, Any]:
    inputs = {}
    for name, given in sample.inputs.items():
        spec = model.input_index.get(name)
        entry: dict[str, Any] = {"data_type": TRITON_TYPES[spec.datatype] if spec else "TYPE_INVALID"}
        entry["dims"] = given.dims if given.dims is not None else (_dims(spec, batching) if spec else [])
        entry["zero_data" if given.zero_data else "random_data"] = True
        inputs[name] = entry
    return {"name": sample.name, "batch_size": sample.batch_size, "count": sample.count, "inputs": inputs}


def triton_model_config(name: str, model: ModelVersion, max_batch_size: int, config: ModelConfig) -> dict[str, Any]:
    """Triton's model configuration (as JSON) of version ``model`` of ``name``, served with
    ``max_batch_size`` under ``config``. Inputs are described as clients send them (a
    preprocessed input with the datatype and layout of its ``preprocess`` section)."""
    batching = max_batch_size > 0
    ort = config.onnxruntime
    parameters = {
        "lockgate.sha256": model.sha256,
        "lockgate.execution_provider": model.provider,
        "lockgate.graph_optimization_level": ort.graph_optimization_level,
        "lockgate.intra_op_num_threads": str(ort.intra_op_num_threads),
        "lockgate.inter_op_num_threads": str(ort.inter_op_num_threads),
        "lockgate.execution_mode": ort.execution_mode,
    }
    answer: dict[str, Any] = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "runtime": "",
        "version_policy": _version_policy(config),
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": s.name,
                "data_type": TRITON_TYPES[s.datatype],
                "format": "FORMAT_NONE",
                "dims": _dims(s, batching),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for s in model.inputs
        ],
        "output": [
            {
                "name": s.name,
                "data_type": TRITON_TYPES[s.datatype],
                "dims": _dims(s, batching),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for s in model.outputs
        ],
        "batch_input": [],
        "batch_output": [],
        "optimization": {
            "priority": "PRIORITY_DEFAULT",
            "execution_accelerators": _accelerators(config),
            "input_pinned_memory": {"enable": False},
            "output_pinned_memory": {"enable": False},
            "gather_kernel_buffer_threshold": 0,
            "eager_batching": False,
        },
        "instance_group": _instances(name, config, model.provider),
        "default_model_filename": "model.onnx",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
        "model_warmup": [_warmup(model, batching, w) for w in config.model_warmup],
    }
    if batching:
        answer["dynamic_batching"] = _dynamic_batching(config)
    return answer
