"""Datatype table and error type shared by both codec implementations.

Nothing here is on the per-element path; both twins import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DATATYPES",
    "MAX_INT_DIGITS",
    "TOO_MANY_DIGITS",
    "CodecError",
    "Datatype",
    "datatype",
    "describe",
    "element_count",
    "element_error",
    "encode_bytes_json",
    "shape_error",
]


# Python's int() refuses text of more digits than this (sys.get_int_max_str_digits()); both twins
# refuse such a JSON integer at parse time with TOO_MANY_DIGITS.
MAX_INT_DIGITS = 4300
TOO_MANY_DIGITS = f"a number has more than {MAX_INT_DIGITS} digits, more than Python turns into an integer"


class CodecError(ValueError):
    """Tensor data that cannot be decoded as declared.

    ``where`` locates the fault inside the tensor (``data[2][1]``, ``element 7``,
    ``binary data``); the caller adds which input it was.
    """

    def __init__(self, message: str, *, where: str = "data") -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True, slots=True)
class Datatype:
    """One Open Inference Protocol datatype and its little-endian numpy storage."""

    name: str
    dtype: np.dtype
    code: int  # stable small integer used by the compiled codec's switch
    kind: str  # "bool", "int", "uint", "float", "bytes"
    low: int = 0
    high: int = 0

    @property
    def itemsize(self) -> int:
        return 0 if self.kind == "bytes" else self.dtype.itemsize


def _int(name: str, code: int, np_name: str) -> Datatype:
    info = np.iinfo(np.dtype(np_name))
    kind = "uint" if info.min == 0 else "int"
    return Datatype(name, np.dtype(np_name).newbyteorder("<"), code, kind, int(info.min), int(info.max))


DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("BOOL", np.dtype(np.bool_), 0, "bool"),
        _int("INT8", 1, "int8"),
        _int("INT16", 2, "int16"),
        _int("INT32", 3, "int32"),
        _int("INT64", 4, "int64"),
        _int("UINT8", 5, "uint8"),
        _int("UINT16", 6, "uint16"),
        _int("UINT32", 7, "uint32"),
        _int("UINT64", 8, "uint64"),
        Datatype("FP16", np.dtype("<f2"), 9, "float"),
        Datatype("FP32", np.dtype("<f4"), 10, "float"),
        Datatype("FP64", np.dtype("<f8"), 11, "float"),
        Datatype("BYTES", np.dtype(object), 12, "bytes"),
    )
}


def datatype(name: str) -> Datatype:
    """Look up an OIP datatype by name; CodecError names the accepted ones."""
    try:
        return DATATYPES[name]
    except (KeyError, TypeError):
        raise CodecError(f"unknown datatype {name!r}; accepted: {', '.join(DATATYPES)}", where="datatype") from None


def element_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def describe(value: object) -> str:
    """A short JSON rendering of a client value for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def expectation(dt: Datatype) -> str:
    if dt.kind == "bool":
        return "true or false"
    if dt.kind in ("int", "uint"):
        return f"an integer in [{dt.low}, {dt.high}]"
    if dt.kind == "float":
        return "a number"
    return "a string"


def element_error(dt: Datatype, index: int, value: object) -> CodecError:
    return CodecError(
        f"element {index}: expected {expectation(dt)} for {dt.name}, got {describe(value)}",
        where=f"element {index}",
    )


def shape_error(path: str, got: int, shape: tuple[int, ...], want: int) -> CodecError:
    return CodecError(f"{path} has {got} elements where shape {list(shape)} expects {want}", where=path)


def encode_bytes_json(flat: np.ndarray) -> bytes:
    items = []
    for i, x in enumerate(flat):
        if isinstance(x, str):
            items.append(x)
            continue
        try:
            items.append(bytes(x).decode("utf-8"))
        except UnicodeDecodeError:
            raise CodecError(
                f"element {i} of a BYTES output is not UTF-8 text and cannot be sent as JSON;"
                " request this output with binary_data",
                where=f"element {i}",
            ) from None
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
