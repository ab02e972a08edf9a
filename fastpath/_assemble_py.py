"""Batch assembly with fused preprocessing, numpy twin of ``_assemble.pyx``.

``assemble_into(out, offset, src, scale, shift, hwc_to_chw)`` writes one request's rows
into a preallocated batch buffer: ``out[offset:offset+n] = cast(src) * scale + shift``,
per channel, transposing HWC to CHW when asked. Same names and results as the compiled
module (float32 arithmetic: a cast, one multiply, one add).
"""

from __future__ import annotations

import numpy as np

__all__ = ["assemble_into", "check_preprocess"]


def check_preprocess(
    out: np.ndarray, src: np.ndarray, scale: np.ndarray | None, shift: np.ndarray | None, hwc_to_chw: bool
) -> int:
    """Validate shapes; return the channel count (1 when no per-channel arrays)."""
    if src.ndim != out.ndim:
        raise ValueError(f"source has rank {src.ndim}, batch buffer rank {out.ndim}")
    inner = src.shape[1:] if not hwc_to_chw else (src.shape[-1], *src.shape[1:-1])
    if tuple(inner) != tuple(out.shape[1:]):
        raise ValueError(f"source rows of shape {list(inner)} do not fit a batch buffer of rows {list(out.shape[1:])}")
    channels = out.shape[1] if out.ndim > 1 else 1
    for name, arr in (("scale", scale), ("shift", shift)):
        if arr is not None and arr.shape != (channels,):
            raise ValueError(f"{name} has {arr.shape[0]} values for {channels} channels")
    return channels


def assemble_into(
    out: np.ndarray,
    offset: int,
    src: np.ndarray,
    scale: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    hwc_to_chw: bool = False,
) -> None:
    check_preprocess(out, src, scale, shift, hwc_to_chw)
    n = src.shape[0]
    if offset < 0 or offset + n > out.shape[0]:
        raise ValueError(f"rows {offset}..{offset + n} do not fit a batch buffer of {out.shape[0]}")
    x = src.transpose(0, src.ndim - 1, *range(1, src.ndim - 1)) if hwc_to_chw else src
    dest = out[offset : offset + n]
    if scale is None and shift is None:
        np.copyto(dest, x, casting="unsafe")
        return
    channels = out.shape[1] if out.ndim > 1 else 1
    bshape = (1, -1) + (1,) * (out.ndim - 2)
    # Always x * scale + shift (ones and zeros when not given), as the compiled loop computes it.
    sc = (np.ones(channels, np.float32) if scale is None else scale.astype(np.float32)).reshape(bshape)
    sh = (np.zeros(channels, np.float32) if shift is None else shift.astype(np.float32)).reshape(bshape)
    np.copyto(dest, x.astype(np.float32) * sc + sh, casting="unsafe")
