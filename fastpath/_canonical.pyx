# cython: language_level=3
"""Canonical JSON, compiled: sorted keys, no spaces, UTF-8 kept, NaN refused.

The text is the one ``json.JSONEncoder(sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` writes (the twin, ``_canonical_py``), built in one C
buffer for dicts with str keys, lists, tuples, str, int, float, True, False and None, each of
exactly that type. Anything else (another key type, a subclass, NaN or an infinity, a string
with a lone surrogate, nesting deeper than ``MAX_DEPTH``, a circular reference) goes to the twin,
so the text or the error is the twin's. The audit log hashes this text for every record: the
twin spent about 5 us on a record's 18 fields here, mostly in its per-call set-up and the
pieces it joins.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject_Repr
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc, realloc

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* type) except NULL
    void PyMem_Free(void* p)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    int Py_DTSF_ADD_DOT_0
from libc.string cimport memcpy

from ._canonical_py import canonical_json as _twin

__all__ = ["MAX_DEPTH", "canonical_json"]

MAX_DEPTH = 64

cdef const char* HEX = b"0123456789abcdef"
# The escapes json writes as a backslash and one letter (the rest of the control characters: \u00XX).
cdef char SHORT[128]
SHORT[0x22] = b'"'
SHORT[0x5C] = b"\\"
SHORT[0x0A] = b"n"
SHORT[0x0D] = b"r"
SHORT[0x09] = b"t"
SHORT[0x08] = b"b"
SHORT[0x0C] = b"f"
cdef double INF = float("inf")


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _grow(Buf* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    while cap < b.size + need:
        cap *= 2
    cdef char* grown = <char*>realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.size, s, n)
    b.size += n
    return 0


cdef inline int _put1(Buf* b, char c) except -1:
    if b.size + 1 > b.cap:
        _grow(b, 1)
    b.data[b.size] = c
    b.size += 1
    return 0


cdef int _text(Buf* b, str s) except -1:
    """A str as JSON: '"', '\\' and the control characters escaped as json escapes them; 1
    when it cannot be written as UTF-8 (a lone surrogate: the twin's business)."""
    cdef Py_ssize_t n, i, start = 0
    cdef const char* u
    cdef unsigned char c
    try:
        u = PyUnicode_AsUTF8AndSize(s, &n)
    except UnicodeEncodeError:
        return 1
    _put1(b, b'"')
    for i in range(n):
        c = <unsigned char>u[i]
        if c >= 0x20 and c != 0x22 and c != 0x5C:
            continue
        if i > start:
            _put(b, u + start, i - start)
        start = i + 1
        _put1(b, b"\\")
        if SHORT[c]:
            _put1(b, SHORT[c])
        else:
            _put(b, b"u00", 3)
            _put1(b, HEX[c >> 4])
            _put1(b, HEX[c & 15])
    if n > start:
        _put(b, u + start, n - start)
    _put1(b, b'"')
    return 0


cdef int _ascii(Buf* b, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* u = PyUnicode_AsUTF8AndSize(s, &n)
    _put(b, u, n)
    return 0


cdef int _int(Buf* b, object o) except -1:
    """An exact int as int.__repr__ writes it: digits of our own below 2**63."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
    cdef unsigned long long u
    cdef char digits[24]
    cdef int n = 0
    if overflow:
        return _ascii(b, PyObject_Repr(o))
    u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    while True:
        digits[23 - n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    if v < 0:
        digits[23 - n] = b"-"
        n += 1
    return _put(b, digits + 24 - n, n)


cdef int _float(Buf* b, double d) except -1:
    """A finite float as float.__repr__ writes it (the shortest text that reads back)."""
    cdef char* text = PyOS_double_to_string(d, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
    cdef Py_ssize_t n = 0
    while text[n]:
        n += 1
    try:
        _put(b, text, n)
    finally:
        PyMem_Free(text)
    return 0


cdef int _value(Buf* b, object o, int depth) except -1:
    """Write ``o``; 0 when written, 1 when it is the twin's to write (``b`` is then discarded)."""
    cdef type t = type(o)
    cdef double d
    cdef list keys
    cdef Py_ssize_t i
    if o is None:
        _put(b, b"null", 4)
    elif o is True:
        _put(b, b"true", 4)
    elif o is False:
        _put(b, b"false", 5)
    elif t is str:
        return _text(b, <str>o)
    elif t is int:
        _int(b, o)
    elif t is float:
        d = o
        if d != d or d == INF or d == -INF:
            return 1
        _float(b, d)
    elif t is dict:
        if depth >= MAX_DEPTH:
            return 1
        keys = list(<dict>o)
        for i in range(len(keys)):
            if type(keys[i]) is not str:
                return 1
        keys.sort()
        _put1(b, b"{")
        for i in range(len(keys)):
            if i:
                _put1(b, b",")
            if _text(b, <str>keys[i]):
                return 1
            _put1(b, b":")
            if _value(b, (<dict>o)[keys[i]], depth + 1):
                return 1
        _put1(b, b"}")
    elif t is list:
        if depth >= MAX_DEPTH:
            return 1
        _put1(b, b"[")
        i = 0
        while i < PyList_GET_SIZE(o):  # read again each time: the list is not ours
            if i:
                _put1(b, b",")
            if _value(b, <object>PyList_GET_ITEM(o, i), depth + 1):
                return 1
            i += 1
        _put1(b, b"]")
    elif t is tuple:
        if depth >= MAX_DEPTH:
            return 1
        _put1(b, b"[")
        for i in range(PyTuple_GET_SIZE(o)):
            if i:
                _put1(b, b",")
            if _value(b, <object>PyTuple_GET_ITEM(o, i), depth + 1):
                return 1
        _put1(b, b"]")
    else:
        return 1
    return 0


def canonical_json(obj: object) -> str:
    """``obj`` as canonical JSON: the twin's text, or the twin's error."""
    cdef Buf b
    cdef int rc
    b.data = <char*>malloc(1024)
    if b.data == NULL:
        raise MemoryError()
    b.size = 0
    b.cap = 1024
    try:
        try:
            rc = _value(&b, obj, 0)
        except (ValueError, TypeError, OverflowError, RecursionError):
            rc = 1  # an int too long for text, say: the twin raises what it raises
        if rc:
            return _twin(obj)
        return PyUnicode_DecodeUTF8(b.data, b.size, NULL)
    finally:
        free(b.data)
