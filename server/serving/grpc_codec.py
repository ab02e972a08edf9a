"""Between the Open Inference Protocol's gRPC messages (``inference.GRPCInferenceService``, the
definitions Triton publishes in ``tritonclient.grpc.service_pb2``) and its HTTP bodies.

A ``ModelInferRequest`` becomes the HTTP request a Triton client would have sent with every
tensor in binary form (``raw_input_contents`` as they are; typed ``contents`` packed little-endian,
BYTES length-prefixed), so the gRPC path runs the same parser, gate, batcher, audit record and
metrics as HTTP; the answer comes back as ``raw_output_contents``, as Triton's gRPC server sends it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from lockgate.fastpath import parse_json

from ..errors import BadRequest

__all__ = ["STATUS_CODES", "infer_request_body", "infer_response", "parameters_json", "set_parameters"]

# Typed contents field of each datatype (FP16 has none: raw contents only), and its numpy type.
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int8),
    "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint8),
    "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}

# The HTTP status of an OIP error -> the gRPC status code Triton's gRPC server answers with.
STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    414: "INVALID_ARGUMENT",
    431: "INVALID_ARGUMENT",
    499: "CANCELLED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def parameters_json(params: Any) -> dict[str, Any]:
    """An ``InferParameter`` map as the JSON values an HTTP request would carry."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(value, which)
    return out


def set_parameters(target: Any, values: dict[str, Any]) -> None:
    """Fill an ``InferParameter`` map from JSON values (strings, integers, floats, booleans)."""
    for key, value in values.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value >= 1 << 63:
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = value if isinstance(value, str) else json.dumps(value)


def _typed_bytes(tensor: Any) -> bytes:
    """The little-endian bytes of a tensor given in typed ``contents``."""
    datatype = tensor.datatype
    contents = tensor.contents
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in contents.bytes_contents)
    found = _CONTENTS.get(datatype)
    if found is None:
        raise BadRequest(
            f"input '{tensor.name}': datatype {datatype!r} has no typed contents; send it in raw_input_contents"
            if datatype == "FP16"
            else f"input '{tensor.name}': unknown datatype {datatype!r}"
        )
    field, dtype = found
    values = getattr(contents, field)
    if dtype is np.bool_ or dtype in (np.float32, np.float64, np.int64, np.uint64):
        return np.asarray(values, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()
    wide = np.asarray(values, dtype=np.int64)
    info = np.iinfo(dtype)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise BadRequest(f"input '{tensor.name}': a value of {field} is outside {datatype}'s range [{info.min}, {info.max}]")
    return wide.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def infer_request_body(request: Any) -> tuple[bytes, int]:
    """The HTTP body (JSON header + binary tensors) of ``request`` and the header's length."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give every input's data there, or none of it"
        )
    inputs, blobs = [], []
    for i, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise BadRequest(f"input '{tensor.name}' has typed contents and the request raw_input_contents: give one of them")
        data = raw[i] if raw else _typed_bytes(tensor)
        blobs.append(data)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = parameters_json(tensor.parameters) if tensor.parameters else {}
        params.pop("binary_data_size", None)
        entry["parameters"] = {**params, "binary_data_size": len(data)}
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    params = parameters_json(request.parameters) if request.parameters else {}
    doc["parameters"] = {**params, "binary_data_output": True}
    if request.outputs:
        outputs = []
        for out in request.outputs:
            wanted = parameters_json(out.parameters) if out.parameters else {}
            wanted["binary_data"] = True
            outputs.append({"name": out.name, "parameters": wanted})
        doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    return b"".join([header, *blobs]), len(header)


def infer_response(body: bytes, header_length: int) -> Any:
    """A ``ModelInferResponse`` from an HTTP inference answer whose outputs are all binary."""
    doc: Any = parse_json(body[:header_length])
    response = pb.ModelInferResponse(model_name=doc["model_name"], model_version=doc.get("model_version", ""))
    if "id" in doc:
        response.id = doc["id"]
    if doc.get("parameters"):
        set_parameters(response.parameters, doc["parameters"])
    at = header_length
    raw = response.raw_output_contents
    for out in doc["outputs"]:
        response.outputs.add(name=out["name"], datatype=out["datatype"], shape=out["shape"])
        size = out["parameters"]["binary_data_size"]
        raw.append(body[at : at + size])
        at += size
    return response
