"""Triton's perf_analyzer against a running lockgate: HTTP with JSON tensors, HTTP with binary
tensors and gRPC, on the same model and server, in one run (bench/run.py calls ``measure``).

wrk measures every system of bench/run.py with one load generator; gRPC needs a gRPC client, so the
protocols of lockgate are compared with perf_analyzer on all three, rotated within each level so
that drift of the machine falls on all of them alike. perf_analyzer comes from .venv-clients
(`make clients`; tests/clients/requirements.txt), with Debian's libb64-0d.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PROTOCOLS", "available", "measure"]

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / ".venv-clients"
BINARY = CLIENTS / "bin" / "perf_analyzer"
PROTOCOLS = {
    "http-json": ["-i", "http", "--input-tensor-format=json", "--output-tensor-format=json"],
    "http-binary": ["-i", "http"],
    "grpc": ["-i", "grpc"],
}


def _env() -> dict[str, str] | None:
    libs = sorted(CLIENTS.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not BINARY.exists() or not libs:
        return None
    return {**os.environ, "LD_LIBRARY_PATH": str(libs[0])}


def available() -> str | None:
    """None when perf_analyzer can run here, else why not."""
    env = _env()
    if env is None:
        return f"{BINARY} or its CUDA runtime library is missing (make clients)"
    linked = subprocess.run(["ldd", str(BINARY)], capture_output=True, text=True, env=env, check=False).stdout
    absent = [line.split()[0] for line in linked.splitlines() if "not found" in line]
    return f"perf_analyzer cannot load {', '.join(absent)} (apt-get install -y libb64-0d)" if absent else None


def _once(protocol: str, url: str, model: str, concurrency: int, seconds: float, authorization: str | None) -> dict:
    env = _env()
    assert env is not None
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        window_ms = max(int(seconds * 1000 / 3), 500)
        command = [str(BINARY), *PROTOCOLS[protocol], "-u", url, "-m", model, "--concurrency-range", str(concurrency)]
        # Three windows of seconds/3; a loose stability bound, so a noisy machine still gives its figure.
        command += ["-p", str(window_ms), "-s", "100", "-r", "3", "-f", str(report)]
        if authorization is not None:
            command += ["-H", f"authorization: {authorization}"]  # lower case: gRPC metadata keys must be
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds * 4 + 120, check=False)
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer {protocol} c={concurrency} failed: {done.stdout[-800:]}\n{done.stderr[-400:]}")
        with report.open(newline="") as f:
            (row,) = list(csv.DictReader(f))
    return {
        "rps": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "p90_us": float(row["p90 latency"]),
        "p99_us": float(row["p99 latency"]),
        "mean_us": float(row["p50 latency"]),  # perf_analyzer's CSV has percentiles; the mean column stays p50
        "max_us": "",
        "requests": "",
        "status_errors": 0,  # perf_analyzer stops with an error on a failed request
        "socket_errors": 0,
        "duration_us": window_ms * 3000,
    }


def measure(
    system: str,
    http: str,
    grpc: str,
    model: str,
    levels: list[int],
    reps: int,
    seconds: float,
    authorization: str | None = None,
) -> list[dict]:
    """Rows ``<system>-pa-<protocol>`` for each protocol, concurrency and repetition; ``http`` and
    ``grpc`` are host:port of the server's two listeners."""
    rows = []
    for protocol in PROTOCOLS:  # warm-up: each protocol's path and connections
        _once(protocol, grpc if protocol == "grpc" else http, model, 4, 1.5, authorization)
    for c in levels:
        for rep in range(reps):
            for protocol in PROTOCOLS:
                r = _once(protocol, grpc if protocol == "grpc" else http, model, c, seconds, authorization)
                r.update(system=f"{system}-pa-{protocol}", concurrency=c, rep=rep)
                rows.append(r)
                print(
                    f"   {r['system']} c={c:<3} rep {rep}: {r['rps']:8.0f} infer/s  p50 {r['p50_us'] / 1e3:6.2f} ms"
                    f"  p99 {r['p99_us'] / 1e3:7.2f} ms",
                    flush=True,
                )
    return rows
