# cython: language_level=3
"""Batch assembly with fused preprocessing, compiled.

One pass per request: read the source element (uint8 or float32), cast to float32, apply
the channel's scale and shift, and store it at its place in the batch buffer, HWC to CHW
when asked; no temporary arrays. Other source or buffer dtypes take the numpy twin's
path, which gives the same results.
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint8_t

from ._assemble_py import assemble_into as _twin_assemble_into
from ._assemble_py import check_preprocess

cnp.import_array()

__all__ = ["assemble_into", "check_preprocess"]


ctypedef fused src_t:
    uint8_t
    float


cdef void _chw(const src_t* src, float* dst, Py_ssize_t n, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
               const float* scale, const float* shift) noexcept nogil:
    cdef Py_ssize_t i, y, x, k, plane = h * w
    cdef const src_t* row
    cdef float* out
    for i in range(n):
        out = dst + i * c * plane
        for y in range(h):
            for x in range(w):
                row = src + ((i * h + y) * w + x) * c
                for k in range(c):
                    out[k * plane + y * w + x] = (<float>row[k]) * scale[k] + shift[k]


cdef void _same(const src_t* src, float* dst, Py_ssize_t rows, Py_ssize_t c, Py_ssize_t inner,
                const float* scale, const float* shift) noexcept nogil:
    # layout kept: element j of a row belongs to channel (j // inner)
    cdef Py_ssize_t r, k, j
    for r in range(rows):
        for k in range(c):
            for j in range(inner):
                dst[(r * c + k) * inner + j] = (<float>src[(r * c + k) * inner + j]) * scale[k] + shift[k]


def assemble_into(object out, Py_ssize_t offset, object src, object scale=None, object shift=None, bint hwc_to_chw=False):
    """Write ``cast(src) * scale + shift`` (per channel; HWC to CHW when asked) into
    ``out[offset:offset + len(src)]``."""
    cdef cnp.ndarray o = out
    cdef cnp.ndarray s = src
    cdef Py_ssize_t channels = check_preprocess(out, src, scale, shift, hwc_to_chw)
    cdef Py_ssize_t n = s.shape[0]
    if offset < 0 or offset + n > o.shape[0]:
        raise ValueError(f"rows {offset}..{offset + n} do not fit a batch buffer of {o.shape[0]}")
    if (scale is None and shift is None) or o.dtype != np.float32 or s.dtype not in (np.uint8, np.float32) \
            or not o.flags.c_contiguous or s.ndim < 2 or (hwc_to_chw and s.ndim != 4):
        _twin_assemble_into(out, offset, src, scale, shift, hwc_to_chw)
        return
    s = np.ascontiguousarray(s)
    cdef cnp.ndarray sc = np.ascontiguousarray(np.ones(channels, np.float32) if scale is None else scale, dtype=np.float32)
    cdef cnp.ndarray sh = np.ascontiguousarray(np.zeros(channels, np.float32) if shift is None else shift, dtype=np.float32)
    cdef const float* psc = <const float*>cnp.PyArray_DATA(sc)
    cdef const float* psh = <const float*>cnp.PyArray_DATA(sh)
    cdef float* dst = (<float*>cnp.PyArray_DATA(o)) + offset * (o.size // o.shape[0] if o.shape[0] else 0)
    cdef Py_ssize_t h = 0, w = 0, inner = 0
    cdef bint is_u8 = s.dtype == np.uint8
    cdef const void* psrc = cnp.PyArray_DATA(s)
    if hwc_to_chw:
        h, w = s.shape[1], s.shape[2]
        with nogil:
            if is_u8:
                _chw(<const uint8_t*>psrc, dst, n, h, w, channels, psc, psh)
            else:
                _chw(<const float*>psrc, dst, n, h, w, channels, psc, psh)
    else:
        inner = (s.size // n // channels) if n and channels else 0
        with nogil:
            if is_u8:
                _same(<const uint8_t*>psrc, dst, n, channels, inner, psc, psh)
            else:
                _same(<const float*>psrc, dst, n, channels, inner, psc, psh)
