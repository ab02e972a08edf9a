"""Both codec implementations give identical results and identical errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lockgate.fastpath as fastpath
from lockgate.fastpath import _codec_py, codec
from lockgate.fastpath._common import DATATYPES

try:
    from lockgate.fastpath import _codec as _codec_c
except ImportError:  # pragma: no cover - the compiled module is required in CI (test below)
    _codec_c = None

IMPLS = [pytest.param(_codec_py, id="python")]
if _codec_c is not None:
    IMPLS.append(pytest.param(_codec_c, id="cython"))
NUMERIC = [n for n in DATATYPES if n != "BYTES"]


def both(fn_name: str, *args):
    """Call ``fn_name`` on both implementations; return both outcomes (value or exception)."""
    assert _codec_c is not None, "the compiled codec is not built"
    out = []
    for impl in (_codec_py, _codec_c):
        try:
            out.append(("ok", getattr(impl, fn_name)(*args)))
        except Exception as e:  # noqa: BLE001 - compared below
            out.append(("err", (type(e), str(e))))
    return out


def assert_same(outcomes):
    (ka, a), (kb, b) = outcomes
    assert ka == kb, outcomes
    if ka == "err":
        assert a == b
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == object:
        assert a.tolist() == b.tolist()
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(
    os.environ.get("LOCKGATE_REQUIRE_COMPILED") != "1",
    reason="LOCKGATE_REQUIRE_COMPILED is not 1 (CI sets it): the twins may be what loaded",
)
def test_compiled_codec_is_loaded_when_required():
    """CI sets LOCKGATE_REQUIRE_COMPILED=1: the compiled kernels must be what the package loaded."""
    from lockgate.fastpath import _assemble, assemble

    assert fastpath.IMPLEMENTATION == "cython"
    assert _codec_c is not None and _codec_c.__file__.endswith(".so")
    assert fastpath.decode_json_data is _codec_c.decode_json_data
    assert _assemble.__file__.endswith(".so") and assemble.assemble_into is _assemble.assemble_into


def test_environment_variable_selects_the_twin():
    code = "import lockgate.fastpath as f; print(f.IMPLEMENTATION, f.decode_json_data.__module__)"
    env = {**os.environ, "LOCKGATE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["python", "lockgate.fastpath._codec_py"]
    if _codec_c is not None:
        env["LOCKGATE_NO_EXTENSIONS"] = "0"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split()[0] == "cython"


def _values(name: str):
    dt = DATATYPES[name]
    if dt.kind == "bool":
        return st.booleans()
    if dt.kind in ("int", "uint"):
        return st.integers(dt.low, dt.high)
    if dt.kind == "bytes":
        return st.text(max_size=8)
    width = {"FP16": 16, "FP32": 32, "FP64": 64}[name]
    return st.floats(width=width, allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40)


@st.composite
def tensors(draw, names=tuple(DATATYPES)):
    name = draw(st.sampled_from(names))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    n = math.prod(shape)
    flat = draw(st.lists(_values(name), min_size=n, max_size=n))
    nested = draw(st.booleans())
    data = flat
    if nested and len(shape) > 1 and n > 0:
        data = np.array(flat, dtype=object).reshape(shape).tolist()
    return name, shape, data


# Any JSON-like value nested in lists: ragged, mixed, out of range, wrong types.
RAGGED = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4),
    max_leaves=12,
)


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=400, deadline=None)
@given(tensors())
def test_decode_json_same_results(case):
    name, shape, data = case
    outcomes = both("decode_json_data", data, name, shape)
    assert_same(outcomes)
    assert outcomes[0][0] == "ok"
    arr = outcomes[0][1]
    assert arr.shape == shape


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(DATATYPES)),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
    RAGGED,
)
def test_decode_json_same_errors_on_arbitrary_input(name, shape, data):
    """Any JSON-like value: both implementations succeed alike or fail with the same message."""
    assert_same(both("decode_json_data", data, name, tuple(shape)))


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(NUMERIC).flatmap(
        lambda n: hnp.arrays(
            DATATYPES[n].dtype.newbyteorder("="), hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)
        )
    )
)
def test_encode_json_same_text_and_exact_round_trip(arr):
    a = _codec_py.encode_json_data(arr)
    b = _codec_c.encode_json_data(arr)
    assert a == b
    back = json.loads(a)
    assert len(back) == arr.size
    if arr.dtype.kind == "f":
        restored = np.array(back, dtype=np.float64).astype(arr.dtype)
        np.testing.assert_array_equal(restored, arr.reshape(-1))  # NaN == NaN here
    else:
        assert back == arr.reshape(-1).tolist()


def _significant_digits(text: str) -> int:
    mantissa = text.lstrip("-").split("e")[0].replace(".", "")
    return len(mantissa.strip("0")) or 1


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fp32_is_written_in_the_fewest_digits_that_read_back(bits):
    """Every float32 bit pattern: both implementations write the same text, it reads back
    (as a double rounded to float32, as JSON clients do) to the same bits, and it has no more
    significant digits than numpy's shortest float32 text (Dragon4, unique mode)."""
    value = np.array([bits], dtype=np.uint32).view(np.float32)
    text = _codec_c.encode_json_data(value)
    assert text == _codec_py.encode_json_data(value)
    if not np.isfinite(value[0]):
        return
    back = np.array(json.loads(text), dtype=np.float64).astype(np.float32)
    assert back.view(np.uint32)[0] == bits
    shortest = np.format_float_scientific(value[0], unique=True, trim="-")
    assert _significant_digits(text.decode()[1:-1]) <= _significant_digits(shortest)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp32_texts(impl):
    values = np.float32([0.98157287, 0.1, 1 / 3, 1e-5, 1e16, 123456.0, 1e-45, 3.4028235e38, -0.0, 0.0, -2.5, 1e7, 0.0001])
    assert impl.encode_json_data(values) == (
        b"[0.98157287,0.1,0.33333334,1e-05,1e+16,123456.0,1e-45,3.4028235e+38,-0.0,0.0,-2.5,10000000.0,0.0001]"
    )
    # float64 keeps CPython's shortest double text
    assert impl.encode_json_data(np.float64([0.1, 1 / 3])) == b"[0.1,0.3333333333333333]"


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
def test_encode_non_contiguous_and_big_endian():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[:, ::2].T  # non-contiguous
    assert _codec_c.encode_json_data(view) == _codec_py.encode_json_data(view)
    assert json.loads(_codec_c.encode_json_data(view)) == view.reshape(-1).tolist()
    be = np.arange(5, dtype=">i4")
    assert _codec_c.encode_json_data(be) == _codec_py.encode_json_data(be) == b"[0,1,2,3,4]"
    bef = np.array([0.1, 2.5], dtype=">f4")
    assert _codec_c.encode_json_data(bef) == _codec_py.encode_json_data(bef) == b"[0.1,2.5]"


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_inf_and_empty(impl):
    arr = impl.decode_json_data([float("nan"), float("inf"), -float("inf")], "FP32", (3,))
    assert np.isnan(arr[0]) and arr[1] == np.inf and arr[2] == -np.inf
    assert impl.encode_json_data(arr) == b"[NaN,Infinity,-Infinity]"
    empty = impl.decode_json_data([], "INT64", (0, 3))
    assert empty.shape == (0, 3) and empty.dtype == np.int64
    assert impl.encode_json_data(empty) == b"[]"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "data,name,shape,message",
    [
        ([1, 2, 3], "FP32", (2,), "data has 3 elements where shape [2] expects 2"),
        ([[1, 2], [3]], "FP32", (2, 2), "data[1] has 1 elements where shape [2, 2] expects 2"),
        ([[1, 2], 3], "FP32", (2, 2), "data[1] is a value where shape [2, 2] expects an array"),
        ([[[1], 2]], "FP32", (1, 2), "data[0][0] is an array where shape [1, 2] expects a value"),
        ([1, [2]], "FP32", (2,), "data[1] is an array in flat data for shape [2]"),
        ([1, 256], "UINT8", (2,), "element 1: expected an integer in [0, 255] for UINT8, got 256"),
        ([-1], "UINT64", (1,), "element 0: expected an integer in [0, 18446744073709551615] for UINT64, got -1"),
        ([2**64], "UINT64", (1,), "element 0: expected an integer in [0, 18446744073709551615] for UINT64"),
        ([1.5], "INT32", (1,), "element 0: expected an integer in [-2147483648, 2147483647] for INT32, got 1.5"),
        ([True], "INT8", (1,), "element 0: expected an integer in [-128, 127] for INT8, got true"),
        ([1], "BOOL", (1,), "element 0: expected true or false for BOOL, got 1"),
        (["a"], "FP64", (1,), 'element 0: expected a number for FP64, got "a"'),
        ([None], "FP16", (1,), "element 0: expected a number for FP16, got null"),
        ([10**400], "FP64", (1,), "element 0: expected a number for FP64"),
        ([1], "BYTES", (1,), "element 0: expected a string for BYTES, got 1"),
        ({"a": 1}, "FP32", (1,), "'data' must be a JSON array"),
        ([1], "FLOAT", (1,), "unknown datatype 'FLOAT'"),
    ],
)
def test_decode_errors_name_what_is_wrong(impl, data, name, shape, message):
    with pytest.raises(codec.CodecError) as info:
        impl.decode_json_data(data, name, shape)
    assert message in str(info.value)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", NUMERIC)
def test_binary_round_trip_is_zero_copy(impl, name):
    dt = DATATYPES[name]
    src = (np.arange(12) % 2).astype(dt.dtype).reshape(3, 4)
    blob = bytes(impl.encode_binary(src))
    assert len(blob) == src.size * dt.itemsize
    body = bytearray(b"xx" + blob)
    view = impl.decode_binary(memoryview(body)[2:], name, (3, 4))
    np.testing.assert_array_equal(view, src)
    assert np.shares_memory(view, np.frombuffer(body, dtype=np.uint8))


@pytest.mark.parametrize("impl", IMPLS)
def test_binary_bytes_and_framing_errors(impl):
    src = np.array([b"a", b"", "\u00e9".encode(), b"\x00\xff"], dtype=object).reshape(2, 2)
    blob = impl.encode_binary(src)
    assert impl.decode_binary(blob, "BYTES", (2, 2)).tolist() == src.tolist()
    with pytest.raises(codec.CodecError, match="ends at element"):
        impl.decode_binary(blob[:3], "BYTES", (2, 2))
    with pytest.raises(codec.CodecError, match="declares 1 bytes, only 0 remain"):
        impl.decode_binary(b"\x01\x00\x00\x00", "BYTES", (1,))
    with pytest.raises(codec.CodecError, match="bytes after its 4 elements"):
        impl.decode_binary(bytes(blob) + b"!", "BYTES", (2, 2))
    with pytest.raises(codec.CodecError, match=r"needs 16 bytes, got 15"):
        impl.decode_binary(b"\0" * 15, "FP32", (4,))
    with pytest.raises(codec.CodecError, match=r"needs 16 bytes, got 17"):
        impl.decode_binary(b"\0" * 17, "FP32", (4,))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_utf8_bytes_output_asks_for_binary(impl):
    with pytest.raises(codec.CodecError, match="binary_data"):
        impl.encode_json_data(np.array([b"\xff"], dtype=object))


# -- the request parser: compiled (numeric "data" arrays kept as token spans) against json.loads --


def plain(value):
    """The parsed value with NumberArrays turned into lists, for comparing with json.loads."""
    if hasattr(value, "tolist") and not isinstance(value, (list, dict, np.ndarray)):
        return value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def same_json(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["data", "name", "x", '\u00e9\\"k']), children, max_size=3)
    ),
    max_leaves=16,
)


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=400, deadline=None)
@given(json_values, st.sampled_from([None, 0, 2]))
def test_parse_json_gives_what_json_loads_gives(value, indent):
    body = json.dumps(value, indent=indent).encode()
    assert same_json(plain(_codec_c.parse_json(body)), _codec_py.parse_json(body))


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=400, deadline=None)
@given(json_values, st.data())
def test_parse_json_rejects_what_json_loads_rejects(value, draw):
    body = bytearray(json.dumps(value).encode())
    if body:
        at = draw.draw(st.integers(0, len(body) - 1))
        body[at] = draw.draw(st.sampled_from(list(b'{}[],:"\\ 0-eE.xtn')))
    outcomes = []
    for impl in (_codec_py, _codec_c):
        try:
            outcomes.append(("ok", plain(impl.parse_json(bytes(body)))))
        except codec.CodecError:
            outcomes.append(("err", None))
    assert outcomes[0][0] == outcomes[1][0], (bytes(body), outcomes)
    if outcomes[0][0] == "ok":
        assert same_json(outcomes[0][1], outcomes[1][1])


def _request(name, shape, data):
    return json.dumps({"inputs": [{"name": "x", "datatype": name, "shape": list(shape), "data": data}]}).encode()


def bytes_to_tensor(name, shape, data):
    """A request body through parse_json and decode_json_data of each implementation: value or error."""
    body = _request(name, shape, data)
    outcomes = []
    for impl in (_codec_py, _codec_c):
        doc = impl.parse_json(body)
        try:
            outcomes.append(("ok", impl.decode_json_data(doc["inputs"][0]["data"], name, shape)))
        except codec.CodecError as e:
            outcomes.append(("err", (codec.CodecError, str(e))))
    return outcomes


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=400, deadline=None)
@given(tensors())
def test_bytes_to_tensor_same_results(case):
    """The whole path, request bytes to typed array, on both implementations."""
    name, shape, data = case
    outcomes = bytes_to_tensor(name, shape, data)
    assert_same(outcomes)
    if outcomes[0][0] == "ok" and outcomes[0][1].dtype.kind == "f":
        assert outcomes[0][1].tobytes() == outcomes[1][1].tobytes()  # bit for bit, signs of zero included


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(DATATYPES)),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
    RAGGED,
)
def test_bytes_to_tensor_same_errors(name, shape, data):
    assert_same(bytes_to_tensor(name, tuple(shape), data))


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
def test_number_edge_cases_decode_alike():
    cases = [
        ("FP64", b"[1e400, -1e400, 1e-400, -0.0, -0, 0.1, 123456789012345678901234567890]"),
        ("FP32", b"[3.4028235e38, 3.5e38, 1.4e-45, 0.1]"),
        ("FP16", b"[65504, 65520, 1e-8, 0.333]"),
        ("INT64", b"[9223372036854775807, -9223372036854775808]"),
        ("UINT64", b"[18446744073709551615, -0, 0]"),
    ]
    for name, data in cases:
        body = b'{"data": ' + data + b"}"
        n = len(json.loads(data))
        a = _codec_c.decode_json_data(_codec_c.parse_json(body)["data"], name, (n,))
        b = _codec_py.decode_json_data(_codec_py.parse_json(body)["data"], name, (n,))
        assert a.tobytes() == b.tobytes(), name
    for name, data in (
        ("INT64", b"[9223372036854775808]"),
        ("UINT64", b"[18446744073709551616]"),
        ("UINT64", b"[-1]"),
        ("INT8", b"[1.0]"),
        ("FP32", b"[" + b"9" * 400 + b"]"),
    ):
        for impl in (_codec_c, _codec_py):
            with pytest.raises(codec.CodecError, match="element 0"):
                impl.decode_json_data(impl.parse_json(b'{"data": ' + data + b"}")["data"], name, (1,))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "body",
    [
        b'{"x": ' + b"9" * 4301 + b"}",
        b'{"data": [1, -'
        + b"9" * 4301
        + b"]}",  # a tensor's numbers are spans in the compiled twin: refused at parse all the same
        b"[" + b"1" * 5000 + b"]",
    ],
)
def test_an_integer_python_cannot_convert_is_a_codec_error_in_both_twins(impl, body):
    with pytest.raises(codec.CodecError) as e:
        impl.parse_json(body)
    assert str(e.value) == "a number has more than 4300 digits, more than Python turns into an integer"


@pytest.mark.parametrize("impl", IMPLS)
def test_integers_up_to_the_limit_still_parse(impl):
    assert impl.parse_json(b'{"x": -' + b"9" * 4300 + b"}") == {"x": -int("9" * 4300)}


# Number texts on both sides of the compiled parser's exact shortcut (at most 15 significant
# digits, a power of ten within 10^-22 .. 10^22 after them) and of its digit counting.
_NUMBER_TEXTS = [
    "0.12573",
    "-0.132105",
    "1.304",
    "0",
    "-0",
    "0.0",
    "-0.0",
    "0e5",
    "-0.000e-30",
    "123456789012345",
    "1234567890123456",
    "123456789012345.0",
    "12345678901234.5",
    "1.23456789012345",
    "1.234567890123456",
    "0.000000000000000123456789012345",
    "100000000000000000000000",
    "1e22",
    "1e23",
    "1e-22",
    "1e-23",
    "9007199254740993",
    "9007199254740992.0",
    "4.35e-22",
    "4.35e-23",
    "123456789012345e-22",
    "123456789012345e-23",
    "1.5e+7",
    "2E-3",
    "7.2e308",
    "2.5e-324",
    "1e-400",
    "3.4028235e38",
    "3.4028236e38",
    "1.401298464324817e-45",
    "0.1",
    "0.2",
    "0.3",
    "0.30000000000000004",
]


@pytest.mark.skipif(_codec_c is None, reason="compiled codec not built")
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_number_texts_decode_to_the_correctly_rounded_value_in_both(datatype):
    body = b'{"data":[' + ",".join(_NUMBER_TEXTS).encode() + b"]}"
    shape = (len(_NUMBER_TEXTS),)
    compiled = _codec_c.decode_json_data(_codec_c.parse_json(body)["data"], datatype, shape)
    twin = _codec_py.decode_json_data(json.loads(body)["data"], datatype, shape)
    with np.errstate(over="ignore"):
        wanted = np.array([float(t) if t != "-0" else 0.0 for t in _NUMBER_TEXTS]).astype(compiled.dtype)
    view = np.uint64 if datatype == "FP64" else np.uint32
    for text, c, t, w in zip(_NUMBER_TEXTS, compiled.view(view), twin.view(view), wanted.view(view)):
        assert c == t == w, text
