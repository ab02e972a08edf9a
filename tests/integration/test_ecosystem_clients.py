"""The tools around the Open Inference Protocol, unchanged, against a live lockgate: Triton's
perf_analyzer (HTTP with binary and JSON tensors, and gRPC; several concurrencies) and KServe's
Python SDK.

Both live in .venv-clients (`make clients`, tests/clients/requirements.txt): kserve 0.21 and
the tritonclient 2.41.1 wheel that carries perf_analyzer pin what the server's environment does
not. perf_analyzer also needs Debian's libb64-0d (.ci/run installs it). Without them these tests
skip, saying what is missing; CI sets LOCKGATE_REQUIRE_CLIENTS=1, which makes that a failure.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / ".venv-clients"
PERF_ANALYZER = CLIENTS / "bin" / "perf_analyzer"


def _missing(what: str) -> None:
    message = f"{what}: run `make clients` (and apt-get install libb64-0d)"
    if os.environ.get("LOCKGATE_REQUIRE_CLIENTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _cuda_runtime_lib() -> Path:
    found = sorted(CLIENTS.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not found:
        _missing("libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel) is not in .venv-clients")
    return found[0]


@pytest.fixture(scope="module")
def perf_analyzer() -> tuple[Path, dict[str, str]]:
    if not PERF_ANALYZER.exists():
        _missing(f"{PERF_ANALYZER} is missing")
    env = {**os.environ, "LD_LIBRARY_PATH": str(_cuda_runtime_lib())}
    linked = subprocess.run(["ldd", str(PERF_ANALYZER)], capture_output=True, text=True, env=env, check=False).stdout
    absent = [line.split()[0] for line in linked.splitlines() if "not found" in line]
    if absent:
        _missing(f"perf_analyzer cannot load {', '.join(absent)}")
    return PERF_ANALYZER, env


def _profile(perf_analyzer, server: str, tmp_path: Path, *args: str) -> tuple[list[dict[str, str]], str]:
    """Run perf_analyzer with ``args`` against ``server``: its CSV report (a row per concurrency), and its output."""
    binary, env = perf_analyzer
    report = tmp_path / "report.csv"
    # A loose stability bound: on a shared 2-core machine the windows vary, and this checks that the
    # tool works against lockgate, not how steady the machine is (bench/ measures speed).
    where = ["-p", "800", "-s", "200", "-r", "10", "-f", str(report)]
    if "-i" not in args:
        where += ["-u", server.removeprefix("http://"), "-i", "http"]
    done = subprocess.run([str(binary), *where, *args], capture_output=True, text=True, env=env, timeout=240, check=False)
    said = f"perf_analyzer {' '.join(args)} ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, said
    assert "Server:" in done.stdout, said  # it read lockgate's statistics for the server-side figures
    with report.open(newline="") as f:
        return list(csv.DictReader(f)), said


def _inferences(server: str, model: str) -> int:
    stats = requests.get(f"{server}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    return sum(s["inference_count"] for s in stats)


@pytest.mark.parametrize("tensors", ["binary", "json"])
def test_perf_analyzer_measures_lockgate_over_http(perf_analyzer, server, tmp_path, tensors):
    before = _inferences(server, "mlp")
    formats = [f"--input-tensor-format={tensors}", f"--output-tensor-format={tensors}"]
    rows, said = _profile(perf_analyzer, server, tmp_path, "-m", "mlp", "--concurrency-range", "1:4:3", *formats)
    assert [row["Concurrency"] for row in rows] == ["1", "4"], said
    for row in rows:
        assert float(row["Inferences/Second"]) > 0, row
        assert int(row["p50 latency"]) > 0, row
    assert _inferences(server, "mlp") > before  # the requests it timed were served, and counted


def test_perf_analyzer_with_a_batch_size_and_a_preprocessed_image_model(perf_analyzer, server, tmp_path):
    """-b 4 on the cnn: perf_analyzer reads the uint8 HWC input from /config and sends batches of 4."""
    before = _inferences(server, "cnn")
    rows, said = _profile(perf_analyzer, server, tmp_path, "-m", "cnn", "-b", "4", "--concurrency-range", "2")
    assert len(rows) == 1 and float(rows[0]["Inferences/Second"]) > 0, said
    grown = _inferences(server, "cnn") - before
    assert grown > 0 and grown % 4 == 0, grown


def test_perf_analyzer_measures_lockgate_over_grpc(perf_analyzer, server, settings, tmp_path):
    before = _inferences(server, "mlp")
    grpc = ["-i", "grpc", "-u", settings.grpc_address]
    rows, said = _profile(perf_analyzer, server, tmp_path, *grpc, "-m", "mlp", "--concurrency-range", "1:4:3")
    assert [row["Concurrency"] for row in rows] == ["1", "4"], said
    assert all(float(row["Inferences/Second"]) > 0 for row in rows), said
    rows, said = _profile(perf_analyzer, server, tmp_path, *grpc, "-m", "cnn", "-b", "2", "--concurrency-range", "2")
    assert len(rows) == 1 and float(rows[0]["Inferences/Second"]) > 0, said
    assert _inferences(server, "mlp") > before


def _kserve(server: str, grpc: str, key: str | None = None) -> dict:
    python = CLIENTS / "bin" / "python"
    if not python.exists():
        _missing(f"{python} is missing")
    probe = subprocess.run([str(python), "-c", "import kserve"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        _missing(f"kserve is not installed in .venv-clients ({probe.stderr.strip()[-200:]})")
    args = [str(python), str(ROOT / "tests" / "clients" / "kserve_client.py"), server, grpc, *([key] if key else [])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kserve_sdk_over_http_and_grpc(server, settings, demo_repo):
    found = _kserve(server, settings.grpc_address)
    assert found["server_live"] is True and found["server_ready"] is True and found["model_ready"] is True
    assert found["server_metadata"]["name"] == "lockgate"
    assert found["model_metadata"]["name"] == "mlp"
    assert found["model_metadata"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    x = np.array(found["input"], np.float32).reshape(2, 64)
    expected = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx")).run(None, {"input": x})[0]
    for kind in ("json", "binary"):
        out = found[kind]
        assert out["id"] == f"kserve-{kind == 'binary'}" and out["name"] == "logits" and out["shape"] == [2, 10]
        np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(2, 10), expected)
    assert found["error"]["status"] == 400 and "unknown input 'petals'" in found["error"]["message"]
    over_grpc = found["grpc"]  # KServe's InferenceGRPCClient
    assert over_grpc["server_ready"] is True and over_grpc["model_ready"] is True
    assert over_grpc["id"] == "kserve-grpc" and over_grpc["model_version"] == "1" and over_grpc["shape"] == [2, 10]
    np.testing.assert_array_equal(np.array(over_grpc["data"], np.float32).reshape(2, 10), expected)
