# cython: language_level=3
"""Tensor codec, compiled.

Decodes OIP JSON ``data`` (flat or nested lists) straight into the typed buffer of
the result array, one C store per element with no intermediate list, and encodes
outputs to JSON text without a Python float or str object per element: FP64 in CPython's
shortest round-trip form, FP32 in the shortest text that reads back to the same float32. ``_codec_py.py`` is the twin: same names,
same results, same errors.
"""

import json
import struct

import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsDouble, PyLong_AsLongLong, PyLong_AsUnsignedLongLong
from cpython.mem cimport PyMem_Free
from libc.math cimport HUGE_VAL, NAN, isinf, isnan, signbit
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
cimport libc.errno
from libc.errno cimport ERANGE
from libc.stdlib cimport atoi, free, malloc, realloc, strtod, strtoll, strtoull
from libc.string cimport memcpy
from cpython.unicode cimport PyUnicode_DecodeUTF8

from ._common import TOO_MANY_DIGITS, CodecError, datatype, element_count, element_error, encode_bytes_json, shape_error

DEF MAX_INT_DIGITS = 4300  # _common.MAX_INT_DIGITS, as a compile-time constant

cnp.import_array()

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    ctypedef struct PyObject
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception) except? -1.0
    int Py_DTSF_ADD_DOT_0

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    #ifdef __SIZEOF_INT128__
    /* Powers of ten up to 10^38, the largest under 2^128. */
    static unsigned __int128 lg_pow10[39];
    static int lg_pow10_made = 0;

    static void lg_make_pow10(void) {
        unsigned __int128 r = 1;
        for (int i = 0; i < 39; i++) {
            lg_pow10[i] = r;
            r *= 10;
        }
        lg_pow10_made = 1;
    }

    /* The 17 significant digits of a positive finite float32 f, rounded half to even as
       printf's "%.16e" writes them: *digits in [10^16, 10^17), *exp10 the power of ten of the
       first digit. Exact: f is m x 2^e with m < 2^24, and every product and quotient below
       fits 128 bits for f >= 1e-15. Returns 0 (nothing written) below that, and the caller
       asks printf. */
    static int lg_f32_digits17(float f, long long *digits, int *exp10) {
        uint32_t bits;
        memcpy(&bits, &f, 4);
        uint32_t biased = (bits >> 23) & 0xFFu, fraction = bits & 0x7FFFFFu;
        if (biased == 0xFFu || (bits & 0x80000000u)) return 0;
        unsigned __int128 m = biased ? (fraction | 0x800000u) : fraction;
        int e = biased ? (int)biased - 150 : -149;
        double d = (double)f;
        if (m == 0 || d < 1e-15) return 0;
        if (!lg_pow10_made) lg_make_pow10();
        unsigned __int128 low = lg_pow10[16], high = lg_pow10[17];
        int x = (int)floor(log10(d));
        for (int tries = 0; tries < 4; tries++) {
            int s = 16 - x;
            unsigned __int128 q, r, half;
            int odd_half;
            if (e >= 0 && s >= 0) {  /* an integer below 10^17, times 10^s: exact */
                q = (m << e) * lg_pow10[s];
                r = 0;
                half = 1;
            } else if (e >= 0) {  /* an integer of 18 digits or more, divided by 10^-s */
                if (-s > 38) return 0;
                unsigned __int128 den = lg_pow10[-s], num = m << e;
                q = num / den;
                r = num % den;
                half = den / 2;  /* 10^k is even: r == half is an exact tie */
            } else {  /* m x 10^s / 2^k */
                int k = -e;
                if (s < 0 || s > 31 || k >= 127) return 0;
                unsigned __int128 num = m * lg_pow10[s];
                q = num >> k;
                r = num & ((((unsigned __int128)1) << k) - 1);
                half = ((unsigned __int128)1) << (k - 1);
            }
            odd_half = (r == half) && (q & 1);
            if (r > half || odd_half) q += 1;
            if (q >= high) { x += 1; continue; }
            if (q < low) { x -= 1; continue; }
            *digits = (long long)q;
            *exp10 = x;
            return 1;
        }
        return 0;
    }
    #else
    /* A compiler without 128-bit integers: printf writes every float32's digits. */
    static int lg_f32_digits17(float f, long long *digits, int *exp10) { return 0; }
    #endif

    /* Doubles that are exact powers of ten: 10^0 .. 10^22. */
    static const double lg_exact_pow10[23] = {
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    };

    /* A JSON number's value (s: its n characters, valid JSON number syntax) when it has at most
       15 significant digits and a power of ten within 10^-22 .. 10^22 after them: the digits
       are then an exact double, and one multiply or divide by an exact power of ten rounds
       correctly (Clinger's fast path), as a correctly rounding parser would. 0 otherwise, and
       the caller asks the general parser. */
    static int lg_fast_double(const char *s, int n, double *out) {
        int i = 0, neg = 0, digits = 0, exp10 = 0;
        unsigned long long mantissa = 0;
        if (i < n && s[i] == '-') { neg = 1; i++; }
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (mantissa || s[i] != '0') {
                if (++digits > 15) return 0;
                mantissa = mantissa * 10 + (unsigned)(s[i] - '0');
            }
            i++;
        }
        if (i < n && s[i] == '.') {
            i++;
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                if (mantissa || s[i] != '0') {
                    if (++digits > 15) return 0;
                    mantissa = mantissa * 10 + (unsigned)(s[i] - '0');
                }
                exp10--;
                i++;
            }
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
            int negative_exponent = 0, exponent = 0;
            i++;
            if (i < n && (s[i] == '+' || s[i] == '-')) { negative_exponent = s[i] == '-'; i++; }
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                if (exponent > 1000) return 0;
                exponent = exponent * 10 + (s[i] - '0');
                i++;
            }
            exp10 += negative_exponent ? -exponent : exponent;
        }
        if (i != n) return 0;
        double d = (double)mantissa;
        if (mantissa != 0) {
            if (exp10 < -22 || exp10 > 22) return 0;
            d = exp10 < 0 ? d / lg_exact_pow10[-exp10] : d * lg_exact_pow10[exp10];
        }
        *out = neg ? -d : d;
        return 1;
    }

    /* Decimal digits of n > 0 into text; their count. */
    static int lg_utoa(long long n, char *text) {
        char tmp[24];
        int size = 0;
        while (n > 0) {
            tmp[size++] = (char)('0' + n % 10);
            n /= 10;
        }
        for (int i = 0; i < size; i++) text[i] = tmp[size - 1 - i];
        return size;
    }
    """
    int lg_f32_digits17(float f, long long* digits, int* exp10) noexcept nogil
    int lg_utoa(long long n, char* text) noexcept nogil
    int lg_fast_double(const char* s, int n, double* out) noexcept nogil
    const double* lg_exact_pow10  # 10^0 .. 10^22, exact doubles


__all__ = ["NumberArray", "decode_binary", "decode_json_data", "encode_binary", "encode_json_data", "parse_json"]

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


cdef inline void _put_int(char* buf, int code, Py_ssize_t i, long long v) noexcept:
    """Store an in-range integer as the datatype ``code`` (every integer type but UINT64)."""
    if code == C_INT8:
        (<int8_t*>buf)[i] = <int8_t>v
    elif code == C_INT16:
        (<int16_t*>buf)[i] = <int16_t>v
    elif code == C_INT32:
        (<int32_t*>buf)[i] = <int32_t>v
    elif code == C_INT64:
        (<int64_t*>buf)[i] = <int64_t>v
    elif code == C_UINT8:
        (<uint8_t*>buf)[i] = <uint8_t>v
    elif code == C_UINT16:
        (<uint16_t*>buf)[i] = <uint16_t>v
    else:
        (<uint32_t*>buf)[i] = <uint32_t>v


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
    _put_int(s.buf, code, i, v)
    return 0


# ------------------------------------------------------------------------------------------
# JSON request parser. Arrays of numbers or booleans under a "data" key are kept as token
# spans of the body (NumberArray) and decoded later straight into the tensor's buffer with
# the datatype then known; everything else becomes the usual Python objects.
# ------------------------------------------------------------------------------------------

cdef enum TokenKind:
    T_INT = 0
    T_FLOAT = 1
    T_TRUE = 2
    T_FALSE = 3
    T_NAN = 4
    T_INF = 5
    T_NINF = 6

ctypedef struct Token:
    Py_ssize_t start
    int length
    int kind

DEF MAX_DEPTH = 256


cdef class NumberArray:
    """A JSON array of numbers or booleans, as spans of the request body."""
    cdef Token* tokens
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    cdef bytes body

    def __dealloc__(self):
        free(self.tokens)

    def __len__(self):
        return self.n

    cdef int push(self, Py_ssize_t start, int length, int kind) except -1:
        cdef Token* grown
        if self.n == self.cap:
            self.cap = 16 if self.cap == 0 else self.cap * 2
            grown = <Token*>realloc(self.tokens, self.cap * sizeof(Token))
            if grown == NULL:
                raise MemoryError()
            self.tokens = grown
        self.tokens[self.n].start = start
        self.tokens[self.n].length = length
        self.tokens[self.n].kind = kind
        self.n += 1
        return 0

    cdef object value(self, Py_ssize_t i):
        """The Python value json.loads would give for token ``i`` (error messages, tolist)."""
        cdef Token t = self.tokens[i]
        text = self.body[t.start:t.start + t.length].decode("ascii")
        if t.kind == T_INT:
            return int(text)
        if t.kind == T_TRUE:
            return True
        if t.kind == T_FALSE:
            return False
        return float(text)

    def tolist(self):
        return [self.value(i) for i in range(self.n)]


cdef class _Parser:
    cdef const unsigned char* s
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    cdef bytes body

    cdef object fail(self, str what):
        return CodecError(f"{what} at byte {self.i}", where="body")

    cdef inline void ws(self) noexcept:
        cdef unsigned char c
        while self.i < self.n:
            c = self.s[self.i]
            if c == 32 or c == 10 or c == 13 or c == 9:
                self.i += 1
            else:
                break

    cdef int literal(self, const char* word, int size) except -1:
        cdef int k
        if self.i + size > self.n:
            raise self.fail("invalid literal")
        for k in range(size):
            if self.s[self.i + k] != <unsigned char>word[k]:
                raise self.fail("invalid literal")
        self.i += size
        return 0

    cdef int number(self, int* kind) except -1:
        """Scan a JSON number (or NaN, Infinity, -Infinity) at i; set its kind; return its start."""
        cdef Py_ssize_t start = self.i
        cdef unsigned char c
        kind[0] = T_INT
        if self.s[self.i] == 78:  # N
            self.literal(b"NaN", 3)
            kind[0] = T_NAN
            return start
        if self.s[self.i] == 73:  # I
            self.literal(b"Infinity", 8)
            kind[0] = T_INF
            return start
        if self.s[self.i] == 45:  # -
            self.i += 1
            if self.i < self.n and self.s[self.i] == 73:
                self.literal(b"Infinity", 8)
                kind[0] = T_NINF
                return start
        if self.i >= self.n:
            raise self.fail("invalid number")
        c = self.s[self.i]
        if c == 48:  # 0
            self.i += 1
        elif 49 <= c <= 57:
            while self.i < self.n and 48 <= self.s[self.i] <= 57:
                self.i += 1
        else:
            raise self.fail("invalid number")
        if self.i < self.n and self.s[self.i] == 46:  # .
            self.i += 1
            kind[0] = T_FLOAT
            if self.i >= self.n or not (48 <= self.s[self.i] <= 57):
                raise self.fail("invalid number")
            while self.i < self.n and 48 <= self.s[self.i] <= 57:
                self.i += 1
        if self.i < self.n and (self.s[self.i] == 101 or self.s[self.i] == 69):  # e E
            self.i += 1
            kind[0] = T_FLOAT
            if self.i < self.n and (self.s[self.i] == 43 or self.s[self.i] == 45):
                self.i += 1
            if self.i >= self.n or not (48 <= self.s[self.i] <= 57):
                raise self.fail("invalid number")
            while self.i < self.n and 48 <= self.s[self.i] <= 57:
                self.i += 1
        if kind[0] == T_INT and self.i - start - (self.s[start] == 45) > MAX_INT_DIGITS:
            # Python turns no longer text into an int; refused where the twin's json.loads refuses it.
            raise CodecError(TOO_MANY_DIGITS, where="body")
        return start

    cdef object string(self):
        cdef Py_ssize_t start = self.i + 1
        cdef Py_ssize_t j = start
        cdef bint escaped = False
        cdef unsigned char c
        while True:
            if j >= self.n:
                self.i = j
                raise self.fail("unterminated string")
            c = self.s[j]
            if c == 34:  # "
                break
            if c == 92:  # backslash
                escaped = True
                j += 2
                continue
            if c < 32:
                self.i = j
                raise self.fail("control character in string")
            j += 1
        self.i = j + 1
        if escaped:
            try:
                return json.loads(self.body[start - 1:j + 1])
            except ValueError as e:
                self.i = start
                raise self.fail(f"invalid string ({e})") from None
        try:
            return PyUnicode_DecodeUTF8(<const char*>self.s + start, j - start, "strict")
        except UnicodeDecodeError:
            self.i = start
            raise self.fail("invalid UTF-8 in string") from None

    cdef object scalar_token(self, int* kind, Py_ssize_t* start):
        """A number/true/false at i as a token: returns True and fills kind/start, or None."""
        cdef unsigned char c = self.s[self.i]
        if c == 116:  # t
            start[0] = self.i
            self.literal(b"true", 4)
            kind[0] = T_TRUE
            return True
        if c == 102:  # f
            start[0] = self.i
            self.literal(b"false", 5)
            kind[0] = T_FALSE
            return True
        if c == 45 or (48 <= c <= 57) or c == 78 or c == 73:
            start[0] = self.number(kind)
            return True
        return None

    cdef object array(self, bint numeric, int depth):
        cdef NumberArray nums = None
        cdef list items = None
        cdef int kind = 0
        cdef Py_ssize_t start = 0
        cdef Py_ssize_t k
        self.i += 1
        self.ws()
        if self.i < self.n and self.s[self.i] == 93:  # ]
            self.i += 1
            return []
        while True:
            self.ws()
            if self.i >= self.n:
                raise self.fail("unterminated array")
            if numeric and items is None and self.scalar_token(&kind, &start) is not None:
                if nums is None:
                    nums = NumberArray()
                    nums.body = self.body
                nums.push(start, <int>(self.i - start), kind)
            else:
                if items is None:
                    items = [] if nums is None else [nums.value(k) for k in range(nums.n)]
                items.append(self.value(numeric, depth + 1))
            self.ws()
            if self.i >= self.n:
                raise self.fail("unterminated array")
            if self.s[self.i] == 44:  # ,
                self.i += 1
                continue
            if self.s[self.i] == 93:
                self.i += 1
                return items if items is not None else nums
            raise self.fail("expected ',' or ']'")

    cdef object obj(self, int depth):
        cdef dict out = {}
        self.i += 1
        self.ws()
        if self.i < self.n and self.s[self.i] == 125:  # }
            self.i += 1
            return out
        while True:
            self.ws()
            if self.i >= self.n or self.s[self.i] != 34:
                raise self.fail("expected a string key")
            key = self.string()
            self.ws()
            if self.i >= self.n or self.s[self.i] != 58:  # :
                raise self.fail("expected ':'")
            self.i += 1
            out[key] = self.value(key == "data", depth + 1)
            self.ws()
            if self.i >= self.n:
                raise self.fail("unterminated object")
            if self.s[self.i] == 44:
                self.i += 1
                continue
            if self.s[self.i] == 125:
                self.i += 1
                return out
            raise self.fail("expected ',' or '}'")

    cdef object value(self, bint numeric, int depth):
        cdef int kind = 0
        cdef Py_ssize_t start
        cdef unsigned char c
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH}")
        self.ws()
        if self.i >= self.n:
            raise self.fail("unexpected end")
        c = self.s[self.i]
        if c == 123:
            return self.obj(depth)
        if c == 91:
            return self.array(numeric, depth)
        if c == 34:
            return self.string()
        if c == 110:  # n
            self.literal(b"null", 4)
            return None
        if self.scalar_token(&kind, &start) is None:
            raise self.fail("unexpected character")
        if kind == T_TRUE:
            return True
        if kind == T_FALSE:
            return False
        text = self.body[start:self.i].decode("ascii")
        return int(text) if kind == T_INT else float(text)


def parse_json(object raw):
    """Parse a JSON request body; numeric arrays under "data" stay as NumberArray token spans."""
    cdef _Parser p = _Parser()
    p.body = raw if type(raw) is bytes else bytes(raw)
    p.s = <const unsigned char*>(<const char*>p.body)
    p.n = len(p.body)
    p.i = 0
    out = p.value(False, 0)
    p.ws()
    if p.i != p.n:
        raise p.fail("extra data after the JSON value")
    return out


cdef int _store_token(_Sink s, Py_ssize_t i, NumberArray a, Py_ssize_t k) except -1:
    """Decode token ``k`` of ``a`` into element ``i`` of the sink, with _store's checks and errors."""
    cdef Token t = a.tokens[k]
    cdef const char* text = (<const char*>a.body) + t.start
    cdef char* end
    cdef int code = s.code
    cdef long long v
    cdef unsigned long long u
    cdef double d
    if code == C_BOOL:
        if t.kind == T_TRUE:
            (<uint8_t*>s.buf)[i] = 1
            return 0
        if t.kind == T_FALSE:
            (<uint8_t*>s.buf)[i] = 0
            return 0
        raise element_error(s.dt, i, a.value(k))
    if code >= C_FP16 and code <= C_FP64:
        if t.kind == T_INT or t.kind == T_FLOAT:
            if not lg_fast_double(text, t.length, &d):  # most numbers: exact in one step
                d = PyOS_string_to_double(text, &end, NULL)  # NULL: overflow gives +-HUGE_VAL
            if t.kind == T_INT:
                if d == HUGE_VAL or d == -HUGE_VAL:
                    raise element_error(s.dt, i, a.value(k))  # float(int) overflows in the twin too
                if d == 0.0:
                    d = 0.0  # "-0" is the integer 0: no negative zero
        elif t.kind == T_NAN:
            d = NAN
        elif t.kind == T_INF:
            d = HUGE_VAL
        elif t.kind == T_NINF:
            d = -HUGE_VAL
        else:
            raise element_error(s.dt, i, a.value(k))
        if code == C_FP32:
            (<float*>s.buf)[i] = <float>d
        else:
            (<double*>s.buf)[i] = d
        return 0
    if t.kind != T_INT:
        raise element_error(s.dt, i, a.value(k))
    libc.errno.errno = 0
    if code == C_UINT64:
        if text[0] == 45:  # '-': only -0 is in range
            if t.length == 2 and text[1] == 48:
                (<uint64_t*>s.buf)[i] = 0
                return 0
            raise element_error(s.dt, i, a.value(k))
        u = strtoull(text, &end, 10)
        if libc.errno.errno == ERANGE:
            raise element_error(s.dt, i, a.value(k))
        (<uint64_t*>s.buf)[i] = u
        return 0
    v = strtoll(text, &end, 10)
    if libc.errno.errno == ERANGE or v < s.low or v > s.high:
        raise element_error(s.dt, i, a.value(k))
    _put_int(s.buf, code, i, v)
    return 0


cdef Py_ssize_t _store_tokens(_Sink s, NumberArray a, Py_ssize_t pos) except -1:
    cdef Py_ssize_t k
    if s.code == C_BYTES:
        if a.n:
            raise element_error(s.dt, pos, a.value(0))
        return pos
    for k in range(a.n):
        _store_token(s, pos + k, a, k)
    return pos + a.n


cdef Py_ssize_t _walk(_Sink s, object node, tuple shape, Py_ssize_t depth, str path, Py_ssize_t pos) except -1:
    cdef Py_ssize_t want = shape[depth]
    cdef Py_ssize_t count = len(node)
    cdef Py_ssize_t i
    cdef bint last = depth == len(shape) - 1
    cdef object child
    if count != want:
        raise shape_error(path, count, shape, want)
    if type(node) is NumberArray:
        if last:
            return _store_tokens(s, <NumberArray>node, pos)
        if count:
            raise CodecError(
                f"{path}[0] is a value where shape {list(shape)} expects an array",
                where=f"{path}[0]",
            )
        return pos
    for i in range(count):
        child = node[i]
        if last:
            if type(child) is list or type(child) is NumberArray:
                raise CodecError(
                    f"{path}[{i}] is an array where shape {list(shape)} expects a value",
                    where=f"{path}[{i}]",
                )
            _store(s, pos, child)
            pos += 1
        else:
            if type(child) is not list and type(child) is not NumberArray:
                raise CodecError(
                    f"{path}[{i}] is a value where shape {list(shape)} expects an array",
                    where=f"{path}[{i}]",
                )
            pos = _walk(s, child, shape, depth + 1, f"{path}[{i}]", pos)
    return pos


def decode_json_data(object data, str name, tuple shape):
    """Decode an OIP JSON ``data`` array (flat, or nested as ``shape``) into a typed array."""
    dt = datatype(name)
    if type(data) is not list and type(data) is not NumberArray:
        raise CodecError("'data' must be a JSON array", where="data")
    cdef Py_ssize_t n = element_count(shape)
    cdef Py_ssize_t i
    cdef Py_ssize_t count = len(data)
    cdef list items
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
    if type(data) is NumberArray:
        if count != n:
            raise shape_error("data", count, shape, n)
        _store_tokens(s, <NumberArray>data, 0)
        if s.code == C_FP16:
            with np.errstate(over="ignore"):
                out = out.astype(dt.dtype)
        return out.reshape(shape)
    items = <list>data
    nested = len(shape) > 1 and count > 0 and (type(items[0]) is list or type(items[0]) is NumberArray)
    if nested:
        _walk(s, items, shape, 0, "data", 0)
    else:
        if count != n:
            raise shape_error("data", count, shape, n)
        for i in range(count):
            x = items[i]
            if type(x) is list or type(x) is NumberArray:
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


cdef inline bint _reads_back(long long digits, int exp10, float f) noexcept:
    """Whether ``digits`` x 10^``exp10``, read as a double (correctly rounded) and then
    rounded to float32 as JSON readers do, is ``f``. Digits under 2^53 and powers of ten up
    to 1e22 are exact doubles, so one multiply or divide rounds correctly; else strtod."""
    cdef double v
    cdef char text[40]
    if 0 <= exp10 <= 22:
        v = <double>digits * lg_exact_pow10[exp10]
    elif -22 <= exp10 < 0:
        v = <double>digits / lg_exact_pow10[-exp10]
    else:
        snprintf(text, 40, "%llde%d", digits, exp10)
        v = strtod(text, NULL)
    return <float>v == f


cdef Py_ssize_t _put_float32(char* buf, Py_ssize_t pos, float f) except -1:
    """The shortest decimal that reads back to ``f`` (float32), written as repr writes a
    float: among the texts of the fewest digits that do, the one nearest to ``f``.

    Candidates come from the 17 correctly rounded digits of ``f``'s exact value (computed in
    128-bit integers, the digits printf's "%.16e" writes, without printf): for p =
    1, 2, ... digits, the two p-digit neighbours of those digits, nearer first; the first
    that reads back is taken (at most 9 digits: float32's round-trip bound). The twin
    (_codec_py._float32_text) does the same steps."""
    cdef double d = f
    cdef char text[40]
    cdef long long n17 = 0, scale = 10000000000000000, t, r, half, chosen = 0, other
    cdef int x, p, k = 0, i, size, decpt
    if isnan(d) or isinf(d):
        return _put_double(buf, pos, d)
    if d == 0.0:
        if signbit(d):
            return _put(buf, pos, b"-0.0", 4)
        return _put(buf, pos, b"0.0", 3)
    if d < 0:
        pos = _put(buf, pos, b"-", 1)
        d = -d
        f = -f
    if not lg_f32_digits17(f, &n17, &x):  # exact, in integers; printf below 1e-15
        snprintf(text, 40, "%.16e", d)  # d.dddddddddddddddde[+-]XX
        n17 = text[0] - 48
        for i in range(2, 18):
            n17 = n17 * 10 + (text[i] - 48)
        x = atoi(text + 19)
    for p in range(1, 18):
        t = n17 // scale
        r = n17 % scale
        half = scale // 2
        k = x - p + 1
        if r > half:
            chosen, other = t + 1, t
        else:
            chosen, other = t, t + 1
        if _reads_back(chosen, k, f):
            break
        if r != 0 and _reads_back(other, k, f):
            chosen = other
            break
        scale //= 10
    while chosen % 10 == 0:
        chosen //= 10
        k += 1
    size = lg_utoa(chosen, text)
    decpt = size + k  # the value is 0.<digits> x 10^decpt
    if decpt <= -4 or decpt > 16:  # repr's switch to an exponent
        pos = _put(buf, pos, text, 1)
        if size > 1:
            pos = _put(buf, pos, b".", 1)
            pos = _put(buf, pos, text + 1, size - 1)
        size = snprintf(text, 40, "e%c%02d", 45 if decpt - 1 < 0 else 43, abs(decpt - 1))
        return _put(buf, pos, text, size)
    if decpt <= 0:
        pos = _put(buf, pos, b"0.", 2)
        for i in range(-decpt):
            pos = _put(buf, pos, b"0", 1)
        return _put(buf, pos, text, size)
    if decpt >= size:
        pos = _put(buf, pos, text, size)
        for i in range(decpt - size):
            pos = _put(buf, pos, b"0", 1)
        return _put(buf, pos, b".0", 2)
    pos = _put(buf, pos, text, decpt)
    pos = _put(buf, pos, b".", 1)
    return _put(buf, pos, text + decpt, size - decpt)


def encode_json_data(object array):
    """The flattened (row-major) tensor as JSON array text; floats round-trip exactly, FP32 in
    the fewest digits that read back to the same float32."""
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
                    pos = _put_float32(buf, pos, (<float*>src)[i])
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
    mv = memoryview(buffer).cast("B")
    view = mv
    out = np.empty(n, dtype=object)
    pos = 0
    end = view.shape[0]
    # The same loop, with the same messages, as _codec_py.decode_binary: twins on purpose (the
    # tests compare them on every input); only the length read differs (memcpy, no GIL work).
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


# Nothing to compile here: a numpy view (or a join for BYTES) either way.
from ._codec_py import encode_binary  # noqa: E402
