"""Tensor codec, pure-Python/numpy twin of ``_codec.pyx``.

Same names, same results, same errors as the compiled module; selected with
``LOCKGATE_NO_EXTENSIONS=1`` and used wherever the extension is not built.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from ._common import (
    TOO_MANY_DIGITS,
    CodecError,
    Datatype,
    datatype,
    element_count,
    element_error,
    encode_bytes_json,
    shape_error,
)

__all__ = ["decode_binary", "decode_json_data", "encode_binary", "encode_json_data", "parse_json"]

_U32 = struct.Struct("<I")


def parse_json(raw: bytes | bytearray | memoryview) -> object:
    """Parse a JSON request body (UTF-8). Malformed input is a CodecError naming the byte."""
    data = bytes(raw)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CodecError(f"invalid UTF-8 at byte {e.start}", where="body") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = len(text[: e.pos].encode("utf-8"))
        raise CodecError(f"{e.msg} at byte {at}", where="body") from None
    except RecursionError:
        raise CodecError("nesting too deep", where="body") from None
    except ValueError:  # json.loads turns an integer of more than MAX_INT_DIGITS digits into this
        raise CodecError(TOO_MANY_DIGITS, where="body") from None


def _check(dt: Datatype, index: int, x: object) -> object:
    kind = dt.kind
    if kind == "bool":
        if type(x) is bool:
            return x
    elif kind in ("int", "uint"):
        if type(x) is int and dt.low <= x <= dt.high:
            return x
    elif kind == "float":
        t = type(x)
        if t is float:
            return x
        if t is int:
            try:
                return float(x)  # type: ignore[arg-type]  # an int here: the type check above
            except OverflowError:
                pass
    elif type(x) is str:
        return x.encode("utf-8")
    raise element_error(dt, index, x)


def _walk(node: list[Any], shape: tuple[int, ...], depth: int, path: str, dt: Datatype, out: list[Any]) -> None:
    want = shape[depth]
    if len(node) != want:
        raise shape_error(path, len(node), shape, want)
    last = depth == len(shape) - 1
    for i, child in enumerate(node):
        if last:
            if type(child) is list:
                raise CodecError(
                    f"{path}[{i}] is an array where shape {list(shape)} expects a value",
                    where=f"{path}[{i}]",
                )
            out.append(_check(dt, len(out), child))
        else:
            if type(child) is not list:
                raise CodecError(
                    f"{path}[{i}] is a value where shape {list(shape)} expects an array",
                    where=f"{path}[{i}]",
                )
            _walk(child, shape, depth + 1, f"{path}[{i}]", dt, out)


def decode_json_data(data: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode an OIP JSON ``data`` array (flat, or nested as ``shape``) into a typed array."""
    dt = datatype(name)
    if type(data) is not list:
        raise CodecError("'data' must be a JSON array", where="data")
    n = element_count(shape)
    nested = len(shape) > 1 and len(data) > 0 and type(data[0]) is list
    flat: list[Any] = []
    if nested:
        _walk(data, shape, 0, "data", dt, flat)
    else:
        if len(data) != n:
            raise shape_error("data", len(data), shape, n)
        for i, x in enumerate(data):
            if type(x) is list:
                raise CodecError(
                    f"data[{i}] is an array in flat data for shape {list(shape)}",
                    where=f"data[{i}]",
                )
            flat.append(_check(dt, i, x))
    if dt.kind == "bytes":
        out = np.empty(n, dtype=object)
        out[:] = flat
        return out.reshape(shape)
    with np.errstate(over="ignore"):
        return np.array(flat, dtype=dt.dtype).reshape(shape)


def encode_json_data(array: np.ndarray) -> bytes:
    """The flattened (row-major) tensor as JSON array text; floats round-trip exactly, FP32 in
    the fewest digits that read back to the same float32."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype == object:
        return encode_bytes_json(flat)
    if flat.dtype.kind == "f" and flat.dtype.itemsize == 4:
        return ("[" + ",".join(map(_float32_text, flat.tolist())) + "]").encode("ascii")
    if flat.dtype.kind == "f":
        flat = flat.astype(np.float64)
    return json.dumps(flat.tolist(), separators=(",", ":")).encode("ascii")


def _reads_back(digits: int, exp10: int, f: float) -> bool:
    """Whether digits x 10^exp10, read as a double and rounded to float32, is ``f``."""
    try:
        return bool(_F32.unpack(_F32.pack(float(f"{digits}e{exp10}")))[0] == f)
    except OverflowError:  # past float32's largest: reads back as infinity
        return False


_F32 = struct.Struct("<f")


def _float32_text(f: float) -> str:
    """The shortest decimal that reads back to the float32 ``f`` (a float holding a float32
    value), as repr writes it; the steps of the compiled ``_put_float32``."""
    if f != f or f in (_INF, -_INF) or f == 0.0:
        return json.dumps(f)  # NaN, Infinity, -Infinity, 0.0, -0.0
    sign = "-" if f < 0 else ""
    f = abs(f)
    text = format(f, ".16e")
    n17, x = int(text[0] + text[2:18]), int(text[19:])
    chosen, k = n17, x - 16
    for p in range(1, 18):
        scale = 10 ** (17 - p)
        t, r = divmod(n17, scale)
        k = x - p + 1
        chosen, other = (t + 1, t) if r > scale // 2 else (t, t + 1)
        if _reads_back(chosen, k, f):
            break
        if r != 0 and _reads_back(other, k, f):
            chosen = other
            break
    return sign + repr(float(f"{chosen}e{k}"))


_INF = float("inf")


def decode_binary(buffer: bytes | memoryview, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A zero-copy view of Triton binary tensor data (BYTES: length-prefixed elements)."""
    dt = datatype(name)
    n = element_count(shape)
    if dt.kind != "bytes":
        need = n * dt.itemsize
        if len(buffer) != need:
            raise CodecError(
                f"binary data for shape {list(shape)} of {dt.name} needs {need} bytes, got {len(buffer)}",
                where="binary data",
            )
        return np.frombuffer(buffer, dtype=dt.dtype, count=n).reshape(shape)
    view = memoryview(buffer).cast("B")
    out = np.empty(n, dtype=object)
    pos, end = 0, len(view)
    # The twin of _codec.pyx's BYTES loop, with the same messages (the tests compare the two).
    for i in range(n):
        if pos + 4 > end:
            raise CodecError(f"binary BYTES data ends at element {i} of {n}", where="binary data")
        (size,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + size > end:
            raise CodecError(
                f"binary BYTES element {i} declares {size} bytes, only {end - pos} remain",
                where="binary data",
            )
        out[i] = bytes(view[pos : pos + size])
        pos += size
    if pos != end:
        raise CodecError(f"binary BYTES data has {end - pos} bytes after its {n} elements", where="binary data")
    return out.reshape(shape)


def encode_binary(array: np.ndarray) -> bytes | memoryview:
    """Triton binary tensor data for an output: raw little-endian bytes, or length-prefixed BYTES."""
    arr = np.asarray(array)
    if arr.dtype == object:
        parts = []
        for x in arr.reshape(-1):
            b = x.encode("utf-8") if isinstance(x, str) else bytes(x)
            parts.append(_U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype)
    return memoryview(arr.data).cast("B")
