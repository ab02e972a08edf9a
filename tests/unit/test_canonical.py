"""The compiled canonical JSON gives its twin's text, or its twin's error, for every value."""

from __future__ import annotations

import enum
import json
import os
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lockgate.fastpath as fastpath
from lockgate.fastpath import _canonical_py

try:
    from lockgate.fastpath import _canonical as _canonical_c
except ImportError:  # pragma: no cover - the compiled module is required in CI (test below)
    _canonical_c = None

needs_compiled = pytest.mark.skipif(_canonical_c is None, reason="the compiled canonical JSON is not built")


def outcome(impl, value):
    try:
        return "ok", impl.canonical_json(value)
    except Exception as e:  # noqa: BLE001 - compared
        return "err", (type(e), str(e))


def same(value):
    assert _canonical_c is not None
    compiled, twin = outcome(_canonical_c, value), outcome(_canonical_py, value)
    assert compiled == twin, value
    return compiled


class Level(enum.IntEnum):
    HIGH = 2


class Name(str):
    pass


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x30))  # the escaped ones, densely
    | st.sampled_from([Level.HIGH, Name("subclass"), "\ud800", "a\udfffb", 1.5j, b"bytes"])
)
keys = st.text() | st.text(alphabet='ab"\\\n\x00é') | st.sampled_from([1, 2.5, None, True, Name("k")])
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(keys, inner, max_size=5)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4).map(OrderedDict)
    ),
    max_leaves=30,
)


@needs_compiled
@settings(max_examples=800, deadline=None)
@given(values)
def test_the_same_text_or_the_same_error_as_the_twin(value):
    kind, text = same(value)
    if kind == "ok" and "\ud800" not in text and "\udfff" not in text:
        json.loads(text)  # and it reads back


@needs_compiled
def test_the_values_an_audit_record_holds():
    record = {
        "seq": 12,
        "at": 1796599628.108415,
        "kind": "infer",
        "actor": "bench",
        "model": "mlp",
        "version": 1,
        "request_id": "019a4b2c3d4e7f00a1b2c3d4e5f60718",
        "detail": {"status": 200, "latency_ms": 0.123, "rows": 1, "error": 'a"b\\c\n\x01\x1f\x7f é ✓ 😀', "explains": None},
    }
    kind, text = same(record)
    assert kind == "ok" and text.startswith(
        '{"actor":"bench","at":1796599628.108415,"detail":{"error":"a\\"b\\\\c\\n\\u0001\\u001f\x7f é'
    )
    for number in (0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30, -0.0, 1e16, 5e-324, 1e300, 0.1):
        assert same([number, {"n": number}]) == ("ok", json.dumps([number, {"n": number}], separators=(",", ":")))


@needs_compiled
def test_what_it_hands_to_the_twin_gives_the_twins_error():
    circular: list = []
    circular.append(circular)
    deep: list = []
    for _ in range(_canonical_c.MAX_DEPTH + 10):
        deep = [deep]
    assert same(circular)[1] == (ValueError, "Circular reference detected")
    assert same(deep)[0] == "ok"
    assert same(float("nan"))[1][0] is ValueError
    assert same({"a": object()})[1][0] is TypeError
    assert same(10**5000)[1][0] is ValueError  # the interpreter's limit on digits
    assert same({1: "a", "b": 2})[1][0] is TypeError  # sorting int and str keys


@pytest.mark.skipif(
    os.environ.get("LOCKGATE_REQUIRE_COMPILED") != "1",
    reason="LOCKGATE_REQUIRE_COMPILED is not 1 (CI sets it): the twins may be what loaded",
)
def test_compiled_canonical_json_is_loaded_when_required():
    assert _canonical_c is not None and _canonical_c.__file__.endswith(".so")
    assert fastpath.canonical_json is _canonical_c.canonical_json
    from lockgate.plugins.audit import _chain

    assert _chain.canonical_json is _canonical_c.canonical_json
