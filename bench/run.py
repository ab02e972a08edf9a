"""Side-by-side load runs: lockgate and its peers, one machine, one run, wrk as the load generator.

Workloads:
  W1  the demo MLP (64 -> 256 -> 256 -> 10 fp32), OIP JSON bodies: overhead-bound. Every system
      serves it on the same route with the same body, one system at a time.
  W2  a small CNN (3x32x32 -> 10), uint8 HWC images sent as Triton binary tensors and normalised
      in lockgate's fast path: compute-bound. Compared with raw onnxruntime in-process at the
      same batch size (the limit).
Results: a table on stdout, a CSV, a JSON and a PNG plot under bench/results/ (or --out).
Only ratios between systems measured in the same run mean anything.

    python bench/run.py --quick           # about 4 minutes: concurrency 1, 32, 64, one repetition
    python bench/run.py                   # full: concurrency 1, 8, 32, 64, three repetitions each
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import perf_analyzer

HERE = Path(__file__).resolve().parent
PY = sys.executable
MODEL = "mlp"


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the range the OS draws outgoing connections' ports from and outside
    Ray's own (``runtime.port_or_free`` keeps it), with the ports a lockgate server derives from it
    (HAProxy's stats and metrics: ``haproxy_side_ports``) as free. A port from that range (bind to
    port 0) can be taken by one of the many connections Ray opens while a server starts, between
    this check and HAProxy's bind: a run failed so ("cannot bind socket" for the stats port)."""
    from lockgate.server.hosting.runtime import outgoing_ports, port_or_free  # the server's own tests
    from lockgate.server.hosting.serve_compat import haproxy_side_ports  # the ports it derives

    def derived(port: int) -> list[int]:  # not those the environment sets: the server checks those
        return [p for _, p, given in haproxy_side_ports(port).values() if not given]

    top = outgoing_ports().start - max(derived(0), default=0) - 1
    for _ in range(500):
        port = random.randrange(20000, top)
        wanted = [port, *derived(port)]
        if not _handed_out.intersection(wanted) and all(port_or_free("0.0.0.0", p) == p for p in wanted):
            _handed_out.update(wanted)
            return port
    raise RuntimeError(f"no free port with its side ports between 20000 and {top}")


@dataclass
class System:
    name: str
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    shipped: bool = False  # lockgate's default configuration: its own home, an API key, drift references
    grpc: str | None = None  # its gRPC port: perf_analyzer measures HTTP (JSON, binary) and gRPC on it


PEERS_PY = HERE.parent / ".venv-peers" / "bin" / "python"  # the OIP peers' own environment: make bench-peers


def peer_servers(model_path: Path, port_of) -> list[System]:
    """LitServe, Triton (through PyTriton) and KServe's model server, from the peers' virtual
    environment; none when it is not made (said so: ``make bench-peers`` makes it)."""
    if not PEERS_PY.exists():
        print(f"(LitServe, Triton and KServe are skipped: {PEERS_PY} is missing; make bench-peers installs them)", flush=True)
        return []
    peer = HERE / "peers"
    libdir = subprocess.run(
        [str(PEERS_PY), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return [
        System(
            "litserve",
            "LitServe 0.2 (batching: max 32, 2 ms)",
            [str(PEERS_PY), str(peer / "litserve_peer.py"), "--model", str(model_path), "--port", port_of("litserve")],
        ),
        System(
            "pytriton",
            "Triton Inference Server via PyTriton 0.7 (dynamic batching, max 32)",
            [str(PEERS_PY), str(peer / "pytriton_peer.py"), "--model", str(model_path), "--port", port_of("pytriton")],
            {"LD_LIBRARY_PATH": libdir},  # the Python backend stub must load this interpreter's libpython
        ),
        System(
            "kserve",
            "KServe 0.21 Python model server (v2 protocol)",
            [str(PEERS_PY), str(peer / "kserve_peer.py"), "--model", str(model_path), "--port", port_of("kserve")],
        ),
    ]


def systems(repo: Path, model_path: Path, port_of, baseline: str | None = None) -> list[System]:
    lockgate = [PY, "-m", "lockgate.server.cli", "serve", "--model-repository", str(repo)]
    peer = HERE / "peers"
    # The serving path as the peers have it: no API keys, no audit log, no metrics
    # (bench/governance.py measures what those add).
    blocked = {"LOCKGATE_PLUGINS_BLOCK": "governance,audit,monitoring"}
    # Another lockgate (an earlier commit installed in its own venv), measured the same way in the same run.
    base = (
        [
            System(
                "lockgate-base",
                f"lockgate of {baseline}",
                [
                    baseline,
                    "-m",
                    "lockgate.server.cli",
                    "serve",
                    "--model-repository",
                    str(repo),
                    "--port",
                    port_of("lockgate-base"),
                ],
                blocked,
            )
        ]
        if baseline
        else []
    )
    return [
        System(
            "lockgate-shipped",
            "lockgate as shipped (API keys, sync audit of every inference, metrics, drift)",
            [
                *[PY, "-m", "lockgate.server.cli", "serve", "--port", port_of("lockgate-shipped")],
                *["--grpc-port", port_of("lockgate-shipped-grpc")],
            ],
            shipped=True,
            grpc=port_of("lockgate-shipped-grpc"),
        ),
        System(
            "lockgate",
            "lockgate, plugins blocked (Serve + HAProxy, direct ingress)",
            [*lockgate, "--port", port_of("lockgate"), "--grpc-port", port_of("lockgate-grpc")],
            blocked,
        ),
        *base,
        *peer_servers(model_path, port_of),
        System(
            "naive",
            "naive: uvicorn + starlette + onnxruntime",
            [PY, str(peer / "naive.py"), "--model", str(model_path), "--port", port_of("naive")],
        ),
        System(
            "serve-stock",
            "Ray Serve stock (@serve.batch, default proxy)",
            [PY, str(peer / "serve_batch.py"), "--model", str(model_path), "--port", port_of("serve-stock")],
        ),
        System(
            "serve-tuned",
            "Ray Serve tuned (@serve.batch, HAProxy)",
            [PY, str(peer / "serve_batch.py"), "--tuned", "--model", str(model_path), "--port", port_of("serve-tuned")],
        ),
        System(
            "http-floor", "limit: minimal asyncio HTTP responder", [PY, str(peer / "floor.py"), "--port", port_of("http-floor")]
        ),
    ]


def wrk(
    url: str, body: Path, connections: int, seconds: float, header_length: int | None = None, authorization: str | None = None
) -> dict:
    threads = 1 if connections < 4 else 2
    env = {**os.environ, "BENCH_BODY": str(body)}
    if authorization is not None:
        env["BENCH_AUTHORIZATION"] = authorization
    if header_length is not None:
        env["BENCH_HEADER_LENGTH"] = str(header_length)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(HERE / "wrk_report.lua"), url],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
    )
    line = [text for text in out.stdout.splitlines() if text.startswith("{")]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(line[-1])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def wait_ready(url: str, body: bytes, proc: subprocess.Popen, timeout: float = 180, headers: dict | None = None) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen, haproxy_before: set[int]) -> None:
    """Stop a system and any Serve HAProxy it left behind (Serve's reloads can outlive the run)."""
    from lockgate.server.hosting.serve_compat import haproxy_pids, stop_haproxy

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    left = sorted(set(haproxy_pids()) - haproxy_before)
    if left:
        stop_haproxy(left)
        print(f"   stopped HAProxy left behind by {proc.args[1] if len(proc.args) > 1 else proc.args[0]}: pid {left}", flush=True)


def raw_onnxruntime(model_path: Path, batch: int, seconds: float = 3.0, providers: list | None = None) -> dict:
    """Limit: onnxruntime in-process, rows per second at ``batch``: on one CPU thread, or on
    ``providers`` (a GPU's, with their options; the input copied from the host every call)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if providers is None:
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    spec = s.get_inputs()[0]
    shape = [batch, *[d if isinstance(d, int) else 1 for d in spec.shape[1:]]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(50):
        s.run(None, {spec.name: x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s.run(None, {spec.name: x})
        n += 1
    per = (time.perf_counter() - t0) / n
    return {
        "model": model_path.parent.parent.name,
        "batch": batch,
        "us_per_batch": per * 1e6,
        "rows_per_s": batch / per,
        "served_by": s.get_providers()[0],
    }


def machine() -> dict:
    import onnxruntime
    import ray

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "loadavg": os.getloadavg(),
    }


def summarize(rows: list[dict]) -> dict:
    """Median and spread per (system, concurrency)."""
    out: dict = {}
    for key in sorted({(r["system"], r["concurrency"]) for r in rows}, key=lambda k: (k[0], k[1])):
        rs = [r for r in rows if (r["system"], r["concurrency"]) == key]
        rps = [r["rps"] for r in rs]
        out[key] = {
            "rps": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50_us"] for r in rs) / 1e3,
            "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1e3,
            "mean_ms": statistics.median(r["mean_us"] for r in rs) / 1e3,
            "errors": sum(r["status_errors"] + r["socket_errors"] for r in rs),
        }
    return out


def plot(summary: dict, order: list[str], levels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in order:
        xs = [c for c in levels if (name, c) in summary]
        if not xs:
            continue
        a.plot(xs, [summary[(name, c)]["rps"] for c in xs], marker="o", label=name)
        b.plot(xs, [summary[(name, c)]["p99_ms"] for c in xs], marker="o", label=name)
    a.set(xlabel="concurrent connections", ylabel="requests/s", title="Throughput", xscale="log", yscale="log", xticks=levels)
    b.set(
        xlabel="concurrent connections", ylabel="p99 latency (ms)", title="p99 latency", xscale="log", yscale="log", xticks=levels
    )
    for ax in (a, b):
        ax.set_xticklabels([str(c) for c in levels])
        ax.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure(
    system: str,
    url: str,
    body_path: Path,
    levels: list[int],
    reps: int,
    seconds: float,
    header_length: int | None = None,
    authorization: str | None = None,
) -> list[dict]:
    rows = []
    wrk(url, body_path, 8, 3, header_length, authorization)  # warm-up: models loaded, first batches run
    for c in levels:
        for rep in range(reps):
            r = wrk(url, body_path, c, seconds, header_length, authorization)
            r.update(system=system, concurrency=c, rep=rep)
            rows.append(r)
            print(
                f"   {system} c={c:<3} rep {rep}: {r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms  p99 {r['p99_us'] / 1e3:7.2f} ms"
                f"  errors {r['status_errors'] + r['socket_errors']}",
                flush=True,
            )
    return rows


def image_request(size: int) -> tuple[bytes, int]:
    """A binary OIP request of one random uint8 HWC image (``size`` x ``size``) for the demo CNN,
    asking for binary logits: the body and its JSON header's length."""
    pixels = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + pixels.tobytes(), len(header)


def wait_health(base: str, proc: subprocess.Popen, log_name: str, timeout: float = 180) -> float:
    """Until ``base``/v2/health/ready answers 200; the seconds it took. RuntimeError naming the
    log when the server exits or stays unready."""
    import requests

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if requests.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log_name}")
        time.sleep(0.1)
    raise RuntimeError(f"not ready in {timeout:.0f} s; see {log_name}")


def workloads(work: Path) -> tuple[Path, Path, Path, bytes, Path, int]:
    """The demo repository and the request bodies: W1 (MLP, JSON) and W2 (CNN, binary uint8 image)."""
    from lockgate.server.tools.demo import IMAGE_SIZE, write_demo_repository

    repo = work / "repo"
    model_path, cnn_path = write_demo_repository(repo, [MODEL, "cnn"])
    row = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [round(float(v), 6) for v in row]}]}
    )
    body_path = work / "body.json"
    body_path.write_text(body)
    w2_body, w2_header = image_request(IMAGE_SIZE)
    w2_path = work / "w2.bin"
    w2_path.write_bytes(w2_body)
    return repo, model_path, cnn_path, body.encode(), body_path, w2_header


def shipped_home(work: Path, repo: Path, env: dict) -> tuple[dict, str]:
    """A home as a user sets lockgate up: the demo models imported, a drift reference for each
    (in the model's input layout: the CNN's is the normalised NCHW tensor its preprocessing
    makes), an admin's API key. The environment to serve it with, and the Authorization header."""
    from lockgate.server.tools.demo import IMAGE_SIZE

    home = work / "home-shipped"
    home.mkdir()
    env = {**env, "LOCKGATE_HOME": str(home)}
    cli = [PY, "-m", "lockgate.server.cli"]
    subprocess.run([*cli, "models", "import-repo", str(repo)], env=env, check=True, capture_output=True)
    rng = np.random.default_rng(1)
    references = {
        MODEL: rng.standard_normal((2000, 64)).astype(np.float32),
        "cnn": rng.standard_normal((200, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32),
    }
    for model, sample in references.items():
        path = work / f"reference-{model}.npy"
        np.save(path, sample)
        subprocess.run([*cli, "models", "reference", model, "1", str(path)], env=env, check=True, capture_output=True)
    key = subprocess.run(
        [*cli, "keys", "create", "--principal", "bench", "--role", "admin"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    return env, f"Bearer {key}"


def commit_latency(folder: Path, count: int = 300) -> dict:
    """What one durable commit costs on this disk: p50 of fsync and fdatasync after appending a
    record-sized line (300 bytes) to a file in ``folder``, and of a one-row SQLite commit with
    synchronous=FULL in WAL mode, as the audit log's default store makes it."""
    import sqlite3

    path = folder / "commit-probe"
    found: dict = {}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
            times = []
            for _ in range(count):
                os.write(fd, b"x" * 299 + b"\n")
                t0 = time.perf_counter()
                sync(fd)
                times.append(time.perf_counter() - t0)
            found[f"{name}_ms"] = statistics.median(times) * 1e3
    finally:
        os.close(fd)
        path.unlink()
    db = sqlite3.connect(folder / "commit-probe.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x TEXT)")
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", ("x" * 300,))
        db.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    db.close()
    found["sqlite_commit_ms"] = statistics.median(times) * 1e3
    return found


def run_system(
    system: System,
    port: str,
    work: Path,
    env: dict,
    body: bytes,
    body_path: Path,
    w2_header: int,
    levels: list[int],
    reps: int,
    seconds: float,
) -> list[dict]:
    """Start one system, measure it, stop it; its rows (none when it failed, said so)."""
    from lockgate.server.hosting.serve_compat import haproxy_pids

    base = f"http://127.0.0.1:{port}/v2/models"
    print(f"== {system.name}: starting", flush=True)
    rows: list[dict] = []
    authorization = None
    if system.shipped:
        env, authorization = shipped_home(work, work / "repo", env)
    with open(work / f"{system.name}.log", "w") as log:
        before = set(haproxy_pids())
        proc = subprocess.Popen(
            system.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**env, **system.env}
        )
        try:
            t0 = time.monotonic()
            wait_ready(f"{base}/{MODEL}/infer", body, proc, headers={"Authorization": authorization} if authorization else None)
            print(f"   ready in {time.monotonic() - t0:.1f} s", flush=True)
            rows += measure(system.name, f"{base}/{MODEL}/infer", body_path, levels, reps, seconds, None, authorization)
            if system.name.startswith("lockgate"):
                rows += measure(
                    f"{system.name}-W2", f"{base}/cnn/infer", work / "w2.bin", levels, reps, seconds, w2_header, authorization
                )
            if system.grpc is not None:
                missing = perf_analyzer.available()
                if missing is None:
                    top = [1, max(levels)]
                    grpc = f"127.0.0.1:{system.grpc}"
                    rows += perf_analyzer.measure(
                        system.name, f"127.0.0.1:{port}", grpc, MODEL, top, reps, seconds, authorization
                    )
                else:
                    print(f"   no protocol rows (perf_analyzer): {missing}", flush=True)
        except Exception as e:  # noqa: BLE001 - one system failing must not lose the others' figures
            print(f"   {system.name} failed: {e}; log: {work / (system.name + '.log')}", flush=True)
        finally:
            stop(proc, before)
    if system.shipped and authorization is not None:
        # The audit log kept every answer: its chain and checkpoints verify after the run.
        verify = subprocess.run(
            [PY, "-m", "lockgate.server.cli", "audit", "verify"],
            env={**env, "LOCKGATE_API_KEY": authorization.split()[1]},
            capture_output=True,
            text=True,
        )
        said = (verify.stdout or verify.stderr).strip().splitlines()
        print(f"   audit verify (exit {verify.returncode}): {said[0] if said else ''}", flush=True)
    return rows


def ratios_of(summary: dict, order: list[str], levels: list[int], raw: list[dict]) -> dict[str, float]:
    """Each lockgate row against every other system of the run: throughput at the top
    concurrency, p50 at c=1; W2 against raw onnxruntime at batch 4."""
    ratios = {}
    top = max(levels)
    ours = [name for name in ("lockgate-shipped", "lockgate") if (name, top) in summary]
    for mine in ours:
        for peer in order:
            if (
                peer == mine
                or peer.endswith("-W2")
                or "-pa-" in peer  # perf_analyzer's rows: another load generator, compared among themselves
                or (peer, top) not in summary
                or (mine, peer) == ("lockgate", "lockgate-shipped")
            ):
                continue
            ratios[f"W1 throughput c={top} {mine}/{peer}"] = summary[(mine, top)]["rps"] / summary[(peer, top)]["rps"]
            if (mine, 1) in summary and (peer, 1) in summary:
                ratios[f"W1 p50 c=1 {mine}/{peer}"] = summary[(mine, 1)]["p50_ms"] / summary[(peer, 1)]["p50_ms"]
    raw_cnn = next(r for r in raw if r["model"] == "cnn" and r["batch"] == 4)
    for mine in ours:
        if (f"{mine}-W2", top) in summary:
            w2 = summary[(f"{mine}-W2", top)]["rps"]
            ratios[f"W2 throughput c={top} {mine}/raw onnxruntime batch 4"] = w2 / raw_cnn["rows_per_s"]
            if ("lockgate-base-W2", top) in summary:
                ratios[f"W2 throughput c={top} {mine}/lockgate-base"] = w2 / summary[("lockgate-base-W2", top)]["rps"]
    return ratios


def targets(summary: dict, levels: list[int], ratios: dict[str, float], commit: dict | None) -> list[str]:
    """The performance targets of the governed path, each stated as met or not with its figure."""
    top = max(levels)
    lines = []

    def at_least(key: str, bound: float, what: str) -> None:
        if key in ratios:
            got = ratios[key]
            lines.append(f"{what}: {got:.2f}x (target >= {bound}x) {'met' if got >= bound else 'NOT met'}")

    def at_most(key: str, bound: float, what: str) -> None:
        if key in ratios:
            got = ratios[key]
            lines.append(f"{what}: {got:.2f}x (target <= {bound}x) {'met' if got <= bound else 'NOT met'}")

    at_least(f"W1 throughput c={top} lockgate-shipped/naive", 1.3, f"as shipped, W1 c={top}, against naive")
    at_least(f"W1 throughput c={top} lockgate-shipped/pytriton", 2.0, f"as shipped, W1 c={top}, against Triton (PyTriton)")
    at_least(f"W1 throughput c={top} lockgate-shipped/lockgate", 0.85, f"as shipped, W1 c={top}, against plugins blocked")
    if commit and ("lockgate-shipped", 1) in summary and ("lockgate", 1) in summary:
        bound = summary[("lockgate", 1)]["p50_ms"] + commit["fsync_ms"] + 0.05
        got = summary[("lockgate-shipped", 1)]["p50_ms"]
        lines.append(
            f"as shipped, W1 c=1 p50: {got:.3f} ms (target <= blocked {summary[('lockgate', 1)]['p50_ms']:.3f} + fsync "
            f"{commit['fsync_ms']:.3f} + 0.050 = {bound:.3f} ms) {'met' if got <= bound else 'NOT met'}"
        )
    grpc, json_ = ("lockgate-shipped-pa-grpc", top), ("lockgate-shipped-pa-http-json", top)
    if grpc in summary and json_ in summary:
        got = summary[grpc]["rps"] / summary[json_]["rps"]
        lines.append(
            f"as shipped, W1 c={top}, gRPC against HTTP JSON (perf_analyzer): {got:.2f}x (target >= 1.0x) "
            f"{'met' if got >= 1.0 else 'NOT met'}"
        )
    at_least(f"W1 throughput c={top} lockgate/naive", 1.5, f"plugins blocked, W1 c={top}, against naive")
    at_most("W1 p50 c=1 lockgate/naive", 1.5, "plugins blocked, W1 c=1 p50, against naive")
    at_least(
        f"W2 throughput c={top} lockgate-shipped/raw onnxruntime batch 4", 0.9, f"as shipped, W2 c={top}, against raw onnxruntime"
    )
    at_least(
        f"W2 throughput c={top} lockgate/raw onnxruntime batch 4", 0.9, f"plugins blocked, W2 c={top}, against raw onnxruntime"
    )
    return lines


def report(summary: dict, order: list[str], levels: list[int], raw: list[dict], ratios: dict[str, float]) -> None:
    print()
    print(f"{'system':<20} {'conc':>4} {'req/s':>9} {'(min-max)':>15} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name in order:
        for c in levels:
            s = summary.get((name, c))
            if s:
                print(
                    f"{name:<20} {c:>4} {s['rps']:>9.0f} {s['rps_min']:>7.0f}-{s['rps_max']:<7.0f} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.2f} {s['errors']:>6}"
                )
    for r in raw:
        print(
            f"raw onnxruntime {r['model']}, 1 thread, batch {r['batch']}: {r['us_per_batch']:.1f} us/batch, {r['rows_per_s']:.0f} rows/s"
        )
    if ratios:
        print()
        for k, v in ratios.items():
            print(f"{k}: {v:.2f}x")


def write_results(
    out: Path,
    mode: str,
    rows: list[dict],
    info: dict,
    raw: list[dict],
    ratios: dict,
    summary: dict,
    order: list[str],
    levels: list[int],
) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    csv_path = out / f"bench-{mode}-{stamp}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=[
                "system",
                "concurrency",
                "rep",
                "rps",
                "p50_us",
                "p90_us",
                "p99_us",
                "mean_us",
                "max_us",
                "requests",
                "status_errors",
                "socket_errors",
                "duration_us",
            ],
        )
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})
    (out / f"bench-{mode}-{stamp}.json").write_text(
        json.dumps(
            {
                "machine": info,
                "raw_onnxruntime": raw,
                "ratios": ratios,
                "summary": {f"{k[0]}@{k[1]}": v for k, v in summary.items()},
            },
            indent=2,
        )
    )
    png = out / f"bench-{mode}-{stamp}.png"
    plot(summary, order, levels, png)
    print(f"wrote {csv_path}, {png}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="concurrency 1, 32 and 64, one repetition, 5 s each")
    p.add_argument(
        "--systems",
        default="",
        help="comma-separated subset of: lockgate-shipped, lockgate, lockgate-base, litserve, pytriton, kserve, naive, "
        "serve-stock, serve-tuned, http-floor",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="the Python of another lockgate install (an earlier commit's venv): measured as lockgate-base",
    )
    p.add_argument("--seconds", type=float, default=None, help="duration of one measurement")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for the CSV, JSON and PNG")
    a = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    levels = [1, 32, 64] if a.quick else [1, 8, 32, 64]
    reps = 1 if a.quick else 3
    seconds = a.seconds or (5.0 if a.quick else 10.0)
    a.out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    repo, model_path, cnn_path, body, body_path, w2_header = workloads(work)
    ports: dict[str, str] = {}
    chosen = systems(repo, model_path, lambda n: ports.setdefault(n, str(free_port())), a.baseline)
    if a.systems:
        wanted = a.systems.split(",")
        chosen = [s for s in chosen if s.name in wanted]

    info = machine()
    print(
        f"machine: {info['cores']} cores, Python {info['python']}, Ray {info['ray']}, onnxruntime {info['onnxruntime']}, load {info['loadavg']}"
    )
    env = {**os.environ, "LOCKGATE_HOME": str(work / "home")}
    rows: list[dict] = []
    for system in chosen:
        rows += run_system(system, ports[system.name], work, env, body, body_path, w2_header, levels, reps, seconds)

    commit = commit_latency(work)
    raw = [raw_onnxruntime(path, b) for path, sizes in ((model_path, (1, 32)), (cnn_path, (1, 4))) for b in sizes]
    info["loadavg_after"] = os.getloadavg()
    summary = summarize(rows)
    order = [s.name for s in chosen] + [f"{s.name}-W2" for s in chosen if s.name.startswith("lockgate")]
    order += [f"{s.name}-pa-{p}" for s in chosen if s.grpc is not None for p in perf_analyzer.PROTOCOLS]
    ratios = ratios_of(summary, order, levels, raw)
    report(summary, order, levels, raw, ratios)
    print(
        f"one durable commit on this disk (p50 of {300} after a 300-byte append): fsync {commit['fsync_ms']:.3f} ms, "
        f"fdatasync {commit['fdatasync_ms']:.3f} ms; a one-row SQLite commit (WAL, synchronous=FULL) {commit['sqlite_commit_ms']:.3f} ms"
    )
    goals = targets(summary, levels, ratios, commit)
    if goals:
        print()
        print("targets:")
        for line in goals:
            print(f"  {line}")
    info["commit"] = commit
    info["targets"] = goals
    print(f"load average before {info['loadavg']}, after {info['loadavg_after']}")
    write_results(a.out, "quick" if a.quick else "full", rows, info, raw, ratios, summary, order, levels)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
