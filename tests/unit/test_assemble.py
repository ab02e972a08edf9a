"""Batch assembly with fused preprocessing: compiled and numpy twin agree bit for bit; buffers are reused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockgate.fastpath import _assemble_py
from lockgate.server.serving.batching import Assembler
from lockgate.server.serving.model import Preprocess

try:
    from lockgate.fastpath import _assemble as _assemble_c
except ImportError:  # pragma: no cover
    _assemble_c = None

pytestmark = pytest.mark.skipif(_assemble_c is None, reason="compiled assembly not built")


@st.composite
def cases(draw):
    hwc = draw(st.booleans())
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 4))
    dims = tuple(draw(st.lists(st.integers(1, 5), min_size=2 if hwc else 0, max_size=2)))
    dtype = draw(st.sampled_from([np.uint8, np.float32, np.int16, np.float64]))
    shape = (n, *dims, c) if hwc else (n, c, *dims)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.uint8:
        src = rng.integers(0, 256, shape, dtype=np.uint8)
    elif dtype == np.int16:
        src = rng.integers(-1000, 1000, shape).astype(np.int16)
    else:
        src = (rng.standard_normal(shape) * 100).astype(dtype)
        if src.size and draw(st.booleans()):
            src.reshape(-1)[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.0]))
    if draw(st.booleans()) and src.ndim > 1 and src.shape[-1] > 1:  # non-contiguous source
        src = np.repeat(src, 2, axis=-1)[..., ::2]
    scale = draw(st.none() | st.just(rng.standard_normal(c).astype(np.float32)))
    shift = draw(st.none() | st.just(rng.standard_normal(c).astype(np.float32)))
    offset = draw(st.integers(0, 2))
    return src, scale, shift, hwc, offset


@settings(max_examples=300, deadline=None)
@given(cases())
def test_compiled_and_twin_agree_bit_for_bit(case):
    src, scale, shift, hwc, offset = case
    inner = (src.shape[-1], *src.shape[1:-1]) if hwc else src.shape[1:]
    outs = []
    for impl in (_assemble_py, _assemble_c):
        out = np.full((offset + src.shape[0] + 1, *inner), 7.0, np.float32)
        impl.assemble_into(out, offset, src, scale, shift, hwc)
        outs.append(out)
    assert outs[0].tobytes() == outs[1].tobytes()
    assert (outs[0][:offset] == 7).all() and (outs[0][offset + src.shape[0] :] == 7).all()


@pytest.mark.parametrize("impl", [_assemble_py, _assemble_c])
def test_shape_errors_name_the_problem(impl):
    out = np.empty((4, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="do not fit a batch buffer of rows"):
        impl.assemble_into(out, 0, np.zeros((1, 2, 2, 4), np.uint8), None, None, True)
    with pytest.raises(ValueError, match="scale has 2 values for 3 channels"):
        impl.assemble_into(out, 0, np.zeros((1, 2, 2, 3), np.uint8), np.ones(2, np.float32), None, True)
    with pytest.raises(ValueError, match=r"rows 3..5 do not fit a batch buffer of 4"):
        impl.assemble_into(out, 3, np.zeros((2, 2, 2, 3), np.uint8), None, None, True)


def test_assembler_reuses_its_buffers_and_passes_a_lone_request_through():
    pre = Preprocess("FP32", np.full(3, 0.5, np.float32), np.zeros(3, np.float32), True)
    a = Assembler(["image", "meta"], {"image": pre}, max_rows=8, batching=True)
    rng = np.random.default_rng(0)
    for rows in ([1, 2, 3], [4], [2, 2, 2, 2]):
        reqs = [{"image": rng.integers(0, 256, (r, 4, 4, 3), dtype=np.uint8), "meta": np.full((r, 2), r, np.int64)} for r in rows]
        feeds = a.assemble(reqs)
        assert feeds["image"].shape == (sum(rows), 3, 4, 4) and feeds["image"].dtype == np.float32
        want = np.concatenate([r["image"] for r in reqs]).astype(np.float32).transpose(0, 3, 1, 2) * 0.5
        np.testing.assert_array_equal(feeds["image"], want)
        np.testing.assert_array_equal(feeds["meta"], np.concatenate([r["meta"] for r in reqs]))
        if len(reqs) == 1:
            assert feeds["meta"] is reqs[0]["meta"]  # no preprocessing, one request: no copy
    assert a.allocations == 2  # one buffer per input, allocated once


def test_assembler_without_a_batch_dimension():
    pre = Preprocess("FP32", np.full(2, 2.0, np.float32), None, False)
    a = Assembler(["x"], {"x": pre}, max_rows=0, batching=False)
    feeds = a.assemble([{"x": np.arange(6, dtype=np.uint8).reshape(2, 3)}])
    np.testing.assert_array_equal(feeds["x"], np.arange(6).reshape(2, 3) * 2.0)
