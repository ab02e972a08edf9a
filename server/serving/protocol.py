"""Open Inference Protocol v2 inference bodies, with Triton's binary tensor extension.

``parse_infer_request`` turns a request body into typed arrays checked against the
model's signature; every client mistake is a BadRequest that names the input and
says what was expected and what came. ``encode_infer_response`` writes the answer
as JSON, or JSON plus binary tensors when the client asked for them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lockgate.fastpath import CodecError, decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

from ..errors import BadRequest, PayloadTooLarge
from .limits import DEFAULT_LIMITS
from .model import ModelVersion, TensorSpec

__all__ = ["HEADER_LENGTH", "OFF_LOOP_BYTES", "InferRequest", "encode_infer_response", "parse_infer_request", "parse_off_loop"]

HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request; ``rows`` is the batch size (1 for models without batching)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    # requested outputs: whether each goes binary, and its top-k to classify (0: the tensor itself)
    outputs: list[tuple[TensorSpec, bool, int]]
    parameters: dict[str, Any] | None
    rows: int
    # Triton's statistics of the request: queue, batch input and infer, response writing (ns)
    timing: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


def _json(raw: bytes) -> Any:
    try:
        return parse_json(raw)
    except CodecError as e:
        raise BadRequest(f"malformed JSON body: {e}") from None


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if type(value) is not list or not all(type(d) is int and d >= 0 for d in value):
        raise BadRequest(f"{where}: 'shape' must be an array of non-negative integers, got {json.dumps(value)[:60]}")
    return tuple(value)


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    params = item.get("parameters")
    if params is None:
        return {}
    if type(params) is not dict:
        raise BadRequest(f"{where}: 'parameters' must be a JSON object")
    return {k: _plain(v) for k, v in params.items()}


def _plain(value: Any) -> Any:
    """A parameter's value as plain JSON values: the compiled parser keeps any array under a
    'data' key as spans of the body (it cannot know it is not tensor data), the twin as a list."""
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    if type(value) is list:
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return [_plain(v) for v in value.tolist()]


def _check_against(spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
    if datatype != spec.datatype:
        raise BadRequest(f"input '{spec.name}': datatype {datatype} does not match the model's {spec.datatype}")
    if len(shape) != len(spec.shape) or any(w != -1 and w != g for w, g in zip(spec.shape, shape)):
        raise BadRequest(
            f"input '{spec.name}': shape {list(shape)} does not match the model's {list(spec.shape)} (-1 is any size)"
        )


# A BYTES element is decoded into a bytes and then a str object (about 100 bytes with their
# headers, whatever its length), a number into 1-8 bytes of an array: against max_tensor_elements,
# a BYTES element counts this many times, so a request's decoded tensors stay within a stated size.
BYTES_WEIGHT = 16

# A body larger than this is decoded on a worker thread: decoding tens of MB of JSON takes
# seconds, which the event loop (every other request of the replica) must not wait for. Below it,
# the hand-over would cost more than the decode.
OFF_LOOP_BYTES = 1 << 20


async def parse_off_loop(
    body: bytes,
    header_length: int | None,
    model: ModelVersion,
    max_batch_size: int,
    max_elements: int = DEFAULT_LIMITS.max_tensor_elements,
) -> InferRequest:
    """``parse_infer_request``, on a worker thread for a body over OFF_LOOP_BYTES."""
    if len(body) <= OFF_LOOP_BYTES:
        return parse_infer_request(body, header_length, model, max_batch_size, max_elements)
    return await asyncio.to_thread(parse_infer_request, body, header_length, model, max_batch_size, max_elements)


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    model: ModelVersion,
    max_batch_size: int,
    max_elements: int = DEFAULT_LIMITS.max_tensor_elements,
) -> InferRequest:
    """Decode ``body`` for ``model``; ``header_length`` is Inference-Header-Content-Length, if sent.
    A tensor whose shape holds more than ``max_elements`` elements is refused before any decode."""
    doc, binary = _document(body, header_length)
    request_id = _request_id(doc.get("id"))
    params = _parameters(doc, "request")
    items = doc.get("inputs")
    if type(items) is not list or not items:
        raise BadRequest(f"'inputs' must be a non-empty array; model '{model.name}' takes {_names(model.inputs)}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    batch_dims: set[int] = set()
    for item in items:
        name, spec, datatype, shape = _declared_input(item, model, inputs, max_elements)
        if max_batch_size > 0:
            batch_dims.add(shape[0])
            if shape[0] > max_batch_size:
                raise BadRequest(f"input '{name}': batch of {shape[0]} exceeds the model's max_batch_size of {max_batch_size}")
        inputs[name], offset = _decode_input(item, spec, datatype, shape, binary, offset)
    missing = [s.name for s in model.inputs if s.name not in inputs]
    if missing:
        raise BadRequest(
            f"missing input{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} of model '{model.name}'"
        )
    if binary is not None and offset != len(binary):
        raise BadRequest(
            f"the body has {len(binary) - offset} bytes of binary data that no input's binary_data_size accounts for"
        )
    rows = 1
    if max_batch_size > 0:
        if len(batch_dims) > 1:
            raise BadRequest(f"inputs disagree on the batch size (first dimension): {sorted(batch_dims)}")
        rows = batch_dims.pop()
    return InferRequest(request_id, inputs, _requested_outputs(doc, model, params), params or None, rows)


MAX_ID_LENGTH = 256


def _request_id(value: Any) -> str | None:
    """The client's request id: it goes into the audit record, so it must be text that can be
    stored and hashed anywhere (UTF-8, no NUL, at most MAX_ID_LENGTH characters)."""
    if value is None:
        return None
    if type(value) is not str:
        raise BadRequest("'id' must be a string")
    if len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"'id' is {len(value)} characters long; at most {MAX_ID_LENGTH} are accepted")
    if "\x00" in value:
        raise BadRequest("'id' must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"'id' holds a lone UTF-16 surrogate at character {e.start}, which is not text") from None
    return value


def _document(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview | None]:
    """The JSON document of the request, and the binary tensor data after it (None: all JSON)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
        doc = _json(body[:header_length])
        binary: memoryview | None = memoryview(body)[header_length:]
    else:
        doc = _json(body)
        binary = None
    if type(doc) is not dict:
        raise BadRequest("the request body must be a JSON object")
    return doc, binary


def _declared_input(
    item: Any, model: ModelVersion, seen: dict[str, np.ndarray], max_elements: int
) -> tuple[str, TensorSpec, str, tuple[int, ...]]:
    """One element of 'inputs', checked against the model before any data is decoded."""
    if type(item) is not dict:
        raise BadRequest("each element of 'inputs' must be a JSON object")
    name = item.get("name")
    if type(name) is not str:
        raise BadRequest("an input has no 'name' string")
    spec = model.input_index.get(name)
    if spec is None:
        raise BadRequest(f"unknown input '{name}'; model '{model.name}' takes {_names(model.inputs)}")
    if name in seen:
        raise BadRequest(f"input '{name}' is given twice")
    datatype = item.get("datatype")
    if type(datatype) is not str:
        raise BadRequest(f"input '{name}': 'datatype' must be a string such as \"{spec.datatype}\"")
    shape = _shape(item.get("shape"), f"input '{name}'")
    _check_against(spec, datatype, shape)
    elements = math.prod(shape)
    too_wide = next((d for d in shape if d > max_elements), None)
    if too_wide is not None:  # even in an empty tensor: no dimension holds more than the limit
        raise PayloadTooLarge(
            f"input '{name}': shape {list(shape)} has a dimension of {too_wide}, more than the limit of {max_elements}"
        )
    if elements > max_elements:
        raise PayloadTooLarge(
            f"input '{name}': shape {list(shape)} has {elements} elements, more than the limit of {max_elements}"
        )
    if spec.datatype == "BYTES" and elements * BYTES_WEIGHT > max_elements:
        raise PayloadTooLarge(
            f"input '{name}': {elements} BYTES elements, more than the limit of {max_elements // BYTES_WEIGHT} "
            f"(a BYTES element becomes two Python objects, so it counts as {BYTES_WEIGHT} of the {max_elements} elements a tensor may hold)"
        )
    return name, spec, datatype, shape


def _decode_input(
    item: dict[str, Any], spec: TensorSpec, datatype: str, shape: tuple[int, ...], binary: memoryview | None, offset: int
) -> tuple[np.ndarray, int]:
    """An input's tensor, from its JSON 'data' or from the binary data at ``offset``; and the
    offset of the next input's binary data."""
    name = spec.name
    size = _parameters(item, f"input '{name}'").get("binary_data_size")
    try:
        if size is not None:
            if type(size) is not int or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if binary is None:
                raise BadRequest(f"input '{name}' has binary_data_size but the request has no Inference-Header-Content-Length")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input '{name}': binary_data_size {size} runs past the end of the body ({len(binary) - offset} bytes remain)"
                )
            array = decode_binary(binary[offset : offset + size], datatype, shape)
            offset += size
        else:
            if "data" not in item:
                raise BadRequest(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
            array = decode_json_data(item["data"], datatype, shape)
        if spec.datatype == "BYTES":
            array = _as_text(array, name)
    except CodecError as e:
        raise BadRequest(f"input '{name}': {e}") from None
    return array, offset


def _requested_outputs(doc: dict[str, Any], model: ModelVersion, params: dict[str, Any]) -> list[tuple[TensorSpec, bool, int]]:
    """The outputs to send, each with whether it goes as binary data and its classification count."""
    default_binary = params.get("binary_data_output", False)
    if type(default_binary) is not bool:
        raise BadRequest(f"parameter 'binary_data_output' must be true or false, got {json.dumps(default_binary)}")
    requested = doc.get("outputs")
    if requested is None:
        return [(s, default_binary, 0) for s in model.outputs]
    if type(requested) is not list:
        raise BadRequest("'outputs' must be an array")
    outputs = []
    for item in requested:
        if type(item) is not dict or type(item.get("name")) is not str:
            raise BadRequest("each element of 'outputs' must be an object with a 'name'")
        spec = model.output_index.get(item["name"])
        if spec is None:
            raise BadRequest(f"unknown output '{item['name']}'; model '{model.name}' gives {_names(model.outputs)}")
        item_params = _parameters(item, f"output '{spec.name}'")
        flag = item_params.get("binary_data", default_binary)
        if type(flag) is not bool:
            raise BadRequest(f"output '{spec.name}': parameter 'binary_data' must be true or false, got {json.dumps(flag)}")
        outputs.append((spec, flag, _class_count(spec, item_params.get("classification"))))
    return outputs


def _class_count(spec: TensorSpec, value: Any) -> int:
    """Triton's classification parameter of a requested output: how many top classes to send."""
    if value is None:
        return 0
    if type(value) is not int or value < 1:
        raise BadRequest(f"output '{spec.name}': parameter 'classification' must be a positive integer, got {json.dumps(value)}")
    if spec.datatype in ("BYTES", "BOOL"):
        raise BadRequest(f"output '{spec.name}' is {spec.datatype}: classification needs a numeric output")
    return value


def _as_text(array: np.ndarray, name: str) -> np.ndarray:
    """onnxruntime's string tensors take Python str: BYTES elements must be UTF-8 text."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, b in enumerate(flat_in):
        try:
            flat_out[i] = b.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"input '{name}': BYTES element {i} is not UTF-8 text, which ONNX string tensors require") from None
    return out


def _names(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"'{s.name}' ({s.datatype} {list(s.shape)})" for s in specs)


_PASSED_THROUGH_EXCLUDED = frozenset({"binary_data_output"})


def classify(array: np.ndarray, count: int, batched: bool, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: the ``count`` largest elements of each batch entry
    (of the whole tensor without batching) as BYTES ``"value:index[:label]"``, largest first,
    the lower index first among equals; the value written as C's ``%f``."""
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim > 0 else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    floating = rows.dtype.kind == "f"
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for j, index in enumerate(order[r].tolist()):
            value = rows[r, index]
            text = f"{float(value):f}" if floating else str(int(value))
            label = labels[index] if labels is not None and index < len(labels) else None
            out[r, j] = f"{text}:{index}:{label}".encode() if label is not None else f"{text}:{index}".encode()
    return out if batched and array.ndim > 0 else out.reshape(k)


@functools.lru_cache(maxsize=1024)
def _opening(model_name: str, version: int) -> bytes:
    """A response's first bytes for a model version: the same for every answer it gives (kept,
    not encoded again for each: three ``json.dumps`` were half the cost of encoding an answer)."""
    return b'{"model_name":%s,"model_version":"%d"' % (json.dumps(model_name).encode(), version)


@functools.lru_cache(maxsize=1024)
def _output_head(name: str, datatype: str) -> bytes:
    """An output's name and datatype, up to its shape."""
    return b'{"name":%s,"datatype":"%s","shape":' % (json.dumps(name).encode(), datatype.encode())


def encode_infer_response(
    request: InferRequest,
    model_name: str,
    version: int,
    results: dict[str, np.ndarray],
    labels: dict[str, list[str]] | None = None,
    batched: bool = True,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response body and its content headers for ``results`` (every requested output);
    ``labels`` and ``batched`` (whether dimension 0 is the batch) serve classification."""
    parts = [_opening(model_name, version)]
    if request.id is not None:
        parts += [b',"id":', json.dumps(request.id).encode()]
    if request.parameters:
        passed = {k: v for k, v in request.parameters.items() if k not in _PASSED_THROUGH_EXCLUDED}
        if passed:
            parts += [b',"parameters":', json.dumps(passed).encode()]
    parts.append(b',"outputs":[')
    blobs: list[bytes | memoryview] = []
    for i, (spec, binary, classes) in enumerate(request.outputs):
        array = results[spec.name]
        datatype = spec.datatype
        if classes:
            array = classify(array, classes, batched, labels.get(spec.name) if labels else None)
            datatype = "BYTES"
        if i:
            parts.append(b",")
        parts += [_output_head(spec.name, datatype), b"[%s]" % b",".join([b"%d" % d for d in array.shape])]
        if binary:
            blob = encode_binary(array)
            blobs.append(blob)
            parts.append(b',"parameters":{"binary_data_size":%d}}' % len(blob))
        else:
            try:
                data = encode_json_data(array)
            except CodecError as e:
                raise BadRequest(f"output '{spec.name}': {e}") from None
            parts += [b',"data":', data, b"}"]
    parts.append(b"]}")
    header = b"".join(parts)
    if not blobs:
        return header, [(b"content-type", b"application/json")]
    body = b"".join([header, *blobs])
    return body, [
        (b"content-type", b"application/octet-stream"),
        (HEADER_LENGTH.encode(), str(len(header)).encode()),
    ]
