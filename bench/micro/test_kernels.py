"""Each kernel against its twin, grouped so the table compares them side by side."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lockgate.fastpath import _assemble, _assemble_py, _canonical, _canonical_py, _codec, _codec_py

IMPLS = [pytest.param((_codec, _assemble), id="cython"), pytest.param((_codec_py, _assemble_py), id="python")]
ROWS, WIDTH = 32, 512
rng = np.random.default_rng(0)
FLOATS = [[round(float(v), 6) for v in row] for row in rng.standard_normal((ROWS, WIDTH))]
BODIES = [
    json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": row}]}).encode() for row in FLOATS
]
SCALE = np.full(1, 0.5, np.float32)
SHIFT = np.full(1, -1.0, np.float32)
PIXELS = [rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for _ in range(ROWS)]
ISCALE = np.array([0.017, 0.0175, 0.0174], np.float32)
ISHIFT = np.array([-2.1, -2.0, -1.8], np.float32)
OUT = rng.standard_normal((ROWS, 10)).astype(np.float32)


@pytest.mark.benchmark(group="decode: JSON body -> FP32 tensor, 512 values")
@pytest.mark.parametrize("impls", IMPLS)
def test_decode(benchmark, impls):
    codec, _ = impls
    body = BODIES[0]
    benchmark(lambda: codec.decode_json_data(codec.parse_json(body)["inputs"][0]["data"], "FP32", (1, WIDTH)))


@pytest.mark.benchmark(group="fused: decode + normalise + assemble, 32 rows of 512 FP32")
@pytest.mark.parametrize("impls", IMPLS)
def test_fused_decode_normalise_assemble(benchmark, impls):
    codec, assemble = impls
    out = np.empty((ROWS, WIDTH), np.float32)

    batch = out.reshape(ROWS, 1, WIDTH)  # one channel of 512 values per row

    def run():
        for i, body in enumerate(BODIES):
            x = codec.decode_json_data(codec.parse_json(body)["inputs"][0]["data"], "FP32", (1, WIDTH))
            assemble.assemble_into(batch, i, x.reshape(1, 1, WIDTH), SCALE, SHIFT, False)

    benchmark(run)


@pytest.mark.benchmark(group="assemble: 32 uint8 HWC 32x32x3 images -> normalised FP32 NCHW batch")
@pytest.mark.parametrize("impls", IMPLS)
def test_assemble_images(benchmark, impls):
    _, assemble = impls
    out = np.empty((ROWS, 3, 32, 32), np.float32)

    def run():
        for i, img in enumerate(PIXELS):
            assemble.assemble_into(out, i, img, ISCALE, ISHIFT, True)

    benchmark(run)


@pytest.mark.benchmark(group="encode: 32x10 FP32 -> JSON")
@pytest.mark.parametrize("impls", IMPLS)
def test_encode(benchmark, impls):
    codec, _ = impls
    benchmark(lambda: codec.encode_json_data(OUT))


# An inference request's audit record as the writer hashes it (its seq, then the entry).
RECORD = {
    "seq": 123456,
    "at": 1796599628.108415,
    "kind": "infer",
    "actor": "bench",
    "model": "mlp",
    "version": 1,
    "request_id": "019a4b2c3d4e7f00a1b2c3d4e5f60718",
    "detail": {
        "status": 200,
        "latency_ms": 0.123,
        "rows": 1,
        "sha256": "a" * 64,
        "input_sha256": "fc6af57b0f8277c0019a1a45980d9688809c085750aec11aac8476c881f700ad",
        "input_size": 739,
        "output_sha256": "fc6f1246b130d39ffddc1e0bd1cb6374224208a223a56efeaa8b7eae480cdc1d",
        "output_size": 152,
    },
}


@pytest.mark.benchmark(group="canonical JSON: one inference request's audit record")
@pytest.mark.parametrize("impl", [pytest.param(_canonical, id="cython"), pytest.param(_canonical_py, id="python")])
def test_canonical(benchmark, impl):
    benchmark(impl.canonical_json, RECORD)
