# cython: language_level=3
"""Tensor codec, compiled.

Decodes OIP JSON ``data`` (flat or nested lists) straight into the typed buffer of
the result array, one C store per element with no intermediate list, and encodes
outputs to JSON text with CPython's shortest round-trip float formatting, without a
Python float or str object per element. ``_codec_py.py`` is the twin: same names,
same results, same errors.
"""

import struct

import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsDouble, PyLong_AsLongLong, PyLong_AsUnsignedLongLong
from cpython.mem cimport PyMem_Free
from libc.math cimport isinf, isnan
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from ._common import CodecError, datatype, element_count, element_error, encode_bytes_json, shape_error

cnp.import_array()

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0

__all__ = ["decode_binary", "decode_json_data", "encode_binary", "encode_json_data"]

cdef enum:
    C_BOOL = 0
    C_INT8 = 1
    C_INT16 = 2
    C_INT32 = 3
    C_INT64 = 4
    C_UINT8 = 5
    C_UINT16 = 6
    C_UINT32 = 7
    C_UINT64 = 8
    C_FP16 = 9
    C_FP32 = 10
    C_FP64 = 11
    C_BYTES = 12

_U32 = struct.Struct("<I")


cdef class _Sink:
    """Where decoded elements go: a raw typed buffer, or an object array for BYTES."""
    cdef char* buf
    cdef int code
    cdef long long low
    cdef long long high
    cdef object dt
    cdef object objects
    cdef Py_ssize_t n


cdef int _store(_Sink s, Py_ssize_t i, object x) except -1:
    cdef int code = s.code
    cdef long long v
    cdef unsigned long long u
    cdef double d
    cdef type t = type(x)
    if code == C_BOOL:
        if x is True:
            (<uint8_t*>s.buf)[i] = 1
            return 0
        if x is False:
            (<uint8_t*>s.buf)[i] = 0
            return 0
        raise element_error(s.dt, i, x)
    if code >= C_FP16 and code <= C_FP64:
        if t is float:
            d = PyFloat_AS_DOUBLE(x)
        elif t is int:
            try:
                d = PyLong_AsDouble(x)
            except OverflowError:
                raise element_error(s.dt, i, x) from None
        else:
            raise element_error(s.dt, i, x)
        if code == C_FP32:
            (<float*>s.buf)[i] = <float>d
        else:  # FP64, and FP16 which is staged as float64 and rounded once by numpy
            (<double*>s.buf)[i] = d
        return 0
    if code == C_BYTES:
        if t is str:
            s.objects[i] = (<str>x).encode("utf-8")
            return 0
        raise element_error(s.dt, i, x)
    if t is not int:
        raise element_error(s.dt, i, x)
    if code == C_UINT64:
        try:
            u = PyLong_AsUnsignedLongLong(x)
        except OverflowError:
            raise element_error(s.dt, i, x) from None
        (<uint64_t*>s.buf)[i] = u
        return 0
    try:
        v = PyLong_AsLongLong(x)
    except OverflowError:
        raise element_error(s.dt, i, x) from None
    if v < s.low or v > s.high:
        raise element_error(s.dt, i, x)
    if code == C_INT8:
        (<int8_t*>s.buf)[i] = <int8_t>v
    elif code == C_INT16:
        (<int16_t*>s.buf)[i] = <int16_t>v
    elif code == C_INT32:
        (<int32_t*>s.buf)[i] = <int32_t>v
    elif code == C_INT64:
        (<int64_t*>s.buf)[i] = <int64_t>v
    elif code == C_UINT8:
        (<uint8_t*>s.buf)[i] = <uint8_t>v
    elif code == C_UINT16:
        (<uint16_t*>s.buf)[i] = <uint16_t>v
    else:
        (<uint32_t*>s.buf)[i] = <uint32_t>v
    return 0


cdef Py_ssize_t _walk(_Sink s, list node, tuple shape, Py_ssize_t depth, str path, Py_ssize_t pos) except -1:
    cdef Py_ssize_t want = shape[depth]
    cdef Py_ssize_t count = len(node)
    cdef Py_ssize_t i
    cdef bint last = depth == len(shape) - 1
    cdef object child
    if count != want:
        raise shape_error(path, count, shape, want)
    for i in range(count):
        child = node[i]
        if last:
            if type(child) is list:
                raise CodecError(
                    f"{path}[{i}] is an array where shape {list(shape)} expects a value",
                    where=f"{path}[{i}]",
                )
            _store(s, pos, child)
            pos += 1
        else:
            if type(child) is not list:
                raise CodecError(
                    f"{path}[{i}] is a value where shape {list(shape)} expects an array",
                    where=f"{path}[{i}]",
                )
            pos = _walk(s, <list>child, shape, depth + 1, f"{path}[{i}]", pos)
    return pos


def decode_json_data(object data, str name, tuple shape):
    """Decode an OIP JSON ``data`` array (flat, or nested as ``shape``) into a typed array."""
    dt = datatype(name)
    if type(data) is not list:
        raise CodecError("'data' must be a JSON array", where="data")
    cdef list items = <list>data
    cdef Py_ssize_t n = element_count(shape)
    cdef Py_ssize_t i
    cdef Py_ssize_t count = len(items)
    cdef _Sink s = _Sink()
    cdef cnp.ndarray out
    s.code = dt.code
    s.dt = dt
    s.low = dt.low if dt.kind == "int" or dt.kind == "uint" else 0
    s.high = dt.high if dt.kind == "int" else (dt.high if dt.kind == "uint" and dt.code != C_UINT64 else 0)
    s.n = n
    if s.code == C_BYTES:
        out = np.empty(n, dtype=object)
        s.objects = out
        s.buf = NULL
    else:
        out = np.empty(n, dtype=np.float64 if s.code == C_FP16 else dt.dtype)
        s.buf = <char*>cnp.PyArray_DATA(out)
    nested = len(shape) > 1 and count > 0 and type(items[0]) is list
    if nested:
        _walk(s, items, shape, 0, "data", 0)
    else:
        if count != n:
            raise shape_error("data", count, shape, n)
        for i in range(count):
            x = items[i]
            if type(x) is list:
                raise CodecError(
                    f"data[{i}] is an array in flat data for shape {list(shape)}",
                    where=f"data[{i}]",
                )
            _store(s, i, x)
    if s.code == C_FP16:
        with np.errstate(over="ignore"):
            out = out.astype(dt.dtype)
    return out.reshape(shape)


cdef inline Py_ssize_t _put(char* buf, Py_ssize_t pos, const char* text, Py_ssize_t size) noexcept:
    memcpy(buf + pos, text, size)
    return pos + size


cdef Py_ssize_t _put_double(char* buf, Py_ssize_t pos, double d) except -1:
    cdef char* text
    cdef Py_ssize_t size
    if isnan(d):
        return _put(buf, pos, b"NaN", 3)
    if isinf(d):
        if d > 0:
            return _put(buf, pos, b"Infinity", 8)
        return _put(buf, pos, b"-Infinity", 9)
    text = PyOS_double_to_string(d, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    size = 0
    while text[size] != 0:
        size += 1
    pos = _put(buf, pos, text, size)
    PyMem_Free(text)
    return pos


def encode_json_data(object array):
    """The flattened (row-major) tensor as JSON array text; floats round-trip exactly."""
    cdef cnp.ndarray flat = np.ascontiguousarray(np.asarray(array).reshape(-1))
    cdef Py_ssize_t n = flat.shape[0]
    cdef Py_ssize_t i, pos = 0
    cdef char kind = ord(flat.dtype.kind)
    cdef int itemsize = flat.dtype.itemsize
    cdef char* src
    cdef char* buf
    cdef char num[32]
    cdef int size
    if flat.dtype == object:
        return encode_bytes_json(flat)
    if kind == c'f' and itemsize == 2:
        flat = flat.astype(np.float64)
        itemsize = 8
    if not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    src = <char*>cnp.PyArray_DATA(flat)
    buf = <char*>malloc(n * 26 + 2)
    if buf == NULL:
        raise MemoryError()
    try:
        pos = _put(buf, pos, b"[", 1)
        for i in range(n):
            if i:
                pos = _put(buf, pos, b",", 1)
            if kind == c'b':
                if (<uint8_t*>src)[i]:
                    pos = _put(buf, pos, b"true", 4)
                else:
                    pos = _put(buf, pos, b"false", 5)
            elif kind == c'f':
                if itemsize == 4:
                    pos = _put_double(buf, pos, (<float*>src)[i])
                else:
                    pos = _put_double(buf, pos, (<double*>src)[i])
            elif kind == c'i':
                if itemsize == 1:
                    size = snprintf(num, 32, "%d", <int>(<int8_t*>src)[i])
                elif itemsize == 2:
                    size = snprintf(num, 32, "%d", <int>(<int16_t*>src)[i])
                elif itemsize == 4:
                    size = snprintf(num, 32, "%d", <int>(<int32_t*>src)[i])
                else:
                    size = snprintf(num, 32, "%lld", <long long>(<int64_t*>src)[i])
                pos = _put(buf, pos, num, size)
            elif kind == c'u':
                if itemsize == 1:
                    size = snprintf(num, 32, "%u", <unsigned int>(<uint8_t*>src)[i])
                elif itemsize == 2:
                    size = snprintf(num, 32, "%u", <unsigned int>(<uint16_t*>src)[i])
                elif itemsize == 4:
                    size = snprintf(num, 32, "%u", <unsigned int>(<uint32_t*>src)[i])
                else:
                    size = snprintf(num, 32, "%llu", <unsigned long long>(<uint64_t*>src)[i])
                pos = _put(buf, pos, num, size)
            else:
                raise CodecError(f"cannot encode dtype {flat.dtype} as JSON", where="output")
        pos = _put(buf, pos, b"]", 1)
        return PyBytes_FromStringAndSize(buf, pos)
    finally:
        free(buf)


def decode_binary(object buffer, str name, tuple shape):
    """A zero-copy view of Triton binary tensor data (BYTES: length-prefixed elements)."""
    dt = datatype(name)
    cdef Py_ssize_t n = element_count(shape)
    cdef Py_ssize_t need, pos, end, i
    cdef uint32_t size
    cdef const uint8_t[::1] view
    if dt.kind != "bytes":
        need = n * dt.itemsize
        if len(buffer) != need:
            raise CodecError(
                f"binary data for shape {list(shape)} of {dt.name} needs {need} bytes, got {len(buffer)}",
                where="binary data",
            )
        return np.frombuffer(buffer, dtype=dt.dtype, count=n).reshape(shape)
    view = memoryview(buffer).cast("B")
    mv = memoryview(buffer).cast("B")
    out = np.empty(n, dtype=object)
    pos = 0
    end = view.shape[0]
    for i in range(n):
        if pos + 4 > end:
            raise CodecError(f"binary BYTES data ends at element {i} of {n}", where="binary data")
        memcpy(&size, &view[pos], 4)
        pos += 4
        if pos + <Py_ssize_t>size > end:
            raise CodecError(
                f"binary BYTES element {i} declares {size} bytes, only {end - pos} remain",
                where="binary data",
            )
        out[i] = bytes(mv[pos:pos + size])
        pos += size
    if pos != end:
        raise CodecError(
            f"binary BYTES data has {end - pos} bytes after its {n} elements", where="binary data"
        )
    return out.reshape(shape)


def encode_binary(object array):
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
    return memoryview(arr).cast("B")
