"""Triton's model warmup: sample requests run on a version before it serves.

A replica loads each version, then runs the model config's ``model_warmup`` samples through the
same batch assembly (preprocessing included) and the same onnxruntime session that requests will
use, before its constructor returns, so Serve, ``/v2/health/ready`` and ``/v2/models/<m>/ready``
say ready only after it. The first run of a session allocates its memory arena and, with graph
optimisations or an accelerator's engine, builds what later runs reuse: that cost falls here, not
on the first client.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from lockgate.fastpath import DATATYPES

from ..errors import ModelLoadError
from .config import WarmupSample
from .model import ModelVersion, TensorSpec

__all__ = ["run_warmup", "warmup_inputs"]

log = logging.getLogger("lockgate.server")


def _row_shape(spec: TensorSpec, batching: bool, dims: list[int] | None) -> tuple[int, ...]:
    declared = spec.shape[1:] if batching else spec.shape
    if dims is None:
        if any(d < 0 for d in declared):
            raise ValueError(f"input '{spec.name}' has dynamic dimensions {list(declared)}: give its dims")
        return tuple(declared)
    if len(dims) != len(declared) or any(d >= 0 and d != g for d, g in zip(declared, dims)):
        raise ValueError(f"dims {dims} of input '{spec.name}' do not fit its shape {list(declared)}")
    return tuple(dims)


def _values(datatype: str, shape: tuple[int, ...], zero: bool, rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":  # onnxruntime's string tensors take str
        out = np.empty(shape, dtype=object)
        out.reshape(-1)[:] = ["" if zero else f"w{rng.integers(1 << 30)}" for _ in range(out.size)]
        return out
    dtype = DATATYPES[datatype].dtype
    if zero:
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def warmup_inputs(
    model: ModelVersion, sample: WarmupSample, max_batch_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The inputs of ``sample`` for ``model`` served with ``max_batch_size``, as a decoded request
    would hold them; ValueError naming what does not fit."""
    batching = max_batch_size > 0
    names = {s.name for s in model.inputs}
    unknown = sorted(set(sample.inputs) - names)
    if unknown:
        raise ValueError(f"names input(s) {', '.join(unknown)}; the model's inputs are {', '.join(sorted(names))}")
    if not batching and sample.batch_size != 1:
        raise ValueError(f"batch_size {sample.batch_size} on a model without batching (max_batch_size 0)")
    if batching and sample.batch_size > max_batch_size:
        raise ValueError(f"batch_size {sample.batch_size} is over the model's max_batch_size of {max_batch_size}")
    inputs = {}
    for spec in model.inputs:
        given = sample.inputs.get(spec.name)
        if given is None:
            raise ValueError(f"gives no data for input '{spec.name}'")
        row = _row_shape(spec, batching, given.dims)
        shape = (sample.batch_size, *row) if batching else row
        inputs[spec.name] = _values(spec.datatype, shape, given.zero_data, rng)
    return inputs


def run_warmup(model: ModelVersion, assembler: Any, max_batch_size: int, samples: list[WarmupSample]) -> None:
    """Run every sample ``count`` times through ``assembler`` and the session; a failure is a
    ModelLoadError naming the model, the version and the sample."""
    rng = np.random.default_rng(0)
    for sample in samples:
        try:
            inputs = warmup_inputs(model, sample, max_batch_size, rng)
            times = []
            for _ in range(sample.count):
                t0 = time.perf_counter()
                model.run(assembler.assemble([inputs]))
                times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - a sample that does not fit, or a model that fails on it
            raise ModelLoadError(model.name, model.version, f"warmup sample '{sample.name}' failed: {e}") from None
        log.info(
            "model %s version %s warmup '%s': %d run(s) of batch %d, first %.1f ms, last %.1f ms",
            model.name,
            model.version,
            sample.name,
            sample.count,
            sample.batch_size,
            times[0] * 1e3,
            times[-1] * 1e3,
        )
