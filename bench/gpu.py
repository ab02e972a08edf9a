"""lockgate on an NVIDIA GPU against onnxruntime on the same provider, and first-request latency
with and without warmup. One prepared script for a GPU machine; it refuses to run without one.

For each execution provider (CUDA, and TensorRT where this onnxruntime build has it) and each
model (the demo CNN at 96x96, and the same network at 224x224, about 5.4x the work), it
- measures raw onnxruntime on that provider, in-process, at batch sizes 1 and 8 (inputs copied
  to the device per call, as a server must);
- serves the model with `lockgate serve` (plugins blocked, as bench/run.py's `lockgate` row; the
  provider chosen with `execution.providers`, `missing: require`; max batch 8), with and without
  a warmup sample, times the first request, then loads it with wrk at 64 connections of binary
  uint8 images and reports rows per second;
- prints the ratio lockgate / raw onnxruntime at batch 8 (target at least 0.9x) and writes
  everything to bench/results/gpu-<time>.json.

    python bench/gpu.py [--seconds 10] [--install]

--install: where onnxruntime has no CUDA provider, replace it with onnxruntime-gpu first (pip).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml
from run import free_port, image_request, raw_onnxruntime, stop, wait_health, wrk

HERE = Path(__file__).resolve().parent
PY = sys.executable
BATCH = 8
SIZES = {"cnn": 96, "cnn224": 224}


def providers(install: bool) -> list[str]:
    """The GPU providers onnxruntime offers here (after installing onnxruntime-gpu if asked)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have and install:
        print("onnxruntime has no CUDA provider: installing onnxruntime-gpu", flush=True)
        subprocess.run([PY, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], check=True)
        subprocess.run([PY, "-m", "pip", "install", "-q", "onnxruntime-gpu>=1.20"], check=True)
        out = subprocess.run(
            [PY, "-c", "import onnxruntime as o; print(','.join(o.get_available_providers()))"],
            capture_output=True,
            text=True,
            check=True,
        )
        have = out.stdout.strip().split(",")
    return [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in have]


def provider_options(provider: str, cache: Path) -> list:
    if provider == "TensorrtExecutionProvider":
        return [
            (
                provider,
                {"trt_fp16_enable": False, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)},
            ),
            "CUDAExecutionProvider",
        ]
    return [provider]


def raw(model_path: Path, provider: str, batch: int, seconds: float, cache: Path) -> dict:
    """onnxruntime on ``provider``: rows per second at ``batch``, the input copied from host each call."""
    return raw_onnxruntime(model_path, batch, seconds, providers=provider_options(provider, cache))


def write_model(repo: Path, name: str, provider: str, warm: bool) -> Path:
    import onnx

    from lockgate.server.tools.demo import IMAGE_SCALE, IMAGE_SHIFT, build_cnn

    folder = repo / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(build_cnn(size=SIZES[name]), str(path))
    kind = "TensorRT" if provider == "TensorrtExecutionProvider" else "CUDA"
    config: dict = {
        "max_batch_size": BATCH,
        "dynamic_batching": {"preferred_batch_sizes": [BATCH], "max_queue_delay_us": 2000},
        "preprocess": {"image": {"datatype": "UINT8", "layout": "HWC", "scale": IMAGE_SCALE, "shift": IMAGE_SHIFT}},
        "execution": {"providers": [{"name": n} for n in dict.fromkeys([kind, "CUDA", "CPU"])], "missing": "require"},
        "num_gpus": 1,
    }
    if warm:
        config["model_warmup"] = [
            {"name": "batch", "batch_size": b, "count": 2, "inputs": {"image": {"random_data": True}}} for b in (1, BATCH)
        ]
    (repo / name / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def image_body(name: str, work: Path) -> tuple[Path, int]:
    body, header_length = image_request(SIZES[name])
    path = work / f"{name}.bin"
    path.write_bytes(body)
    return path, header_length


def serve(name: str, provider: str, warm: bool, work: Path, seconds: float) -> dict:
    """One `lockgate serve`: first request, then wrk at 64 connections."""
    from lockgate.server.hosting.serve_compat import haproxy_pids

    tag = f"{name}-{provider[:4]}-{'warm' if warm else 'cold'}"
    repo = work / f"repo-{tag}"
    write_model(repo, name, provider, warm)
    body_path, header_length = image_body(name, work)
    env = {
        **os.environ,
        "LOCKGATE_HOME": str(work / f"home-{tag}"),
        "LOCKGATE_PLUGINS_BLOCK": "governance,audit,monitoring",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    port = free_port()
    command = [PY, "-m", "lockgate.server.cli", "serve", "--model-repository", str(repo), "--port", str(port), "--grpc-port", "0"]
    before = set(haproxy_pids())
    log = open(work / f"serve-{tag}.log", "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v2/models/{name}"
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}
    try:
        # a TensorRT engine build without warmup happens later; with it, here
        ready_s = wait_health(f"http://127.0.0.1:{port}", proc, log.name, timeout=600)
        meta = requests.get(url, timeout=10).json()
        body = body_path.read_bytes()
        t0 = time.perf_counter()
        first = requests.post(f"{url}/infer", data=body, headers=headers, timeout=600)
        first_ms = (time.perf_counter() - t0) * 1e3
        assert first.status_code == 200, first.text
        steady = []
        for _ in range(30):
            t0 = time.perf_counter()
            requests.post(f"{url}/infer", data=body, headers=headers, timeout=60)
            steady.append((time.perf_counter() - t0) * 1e3)
        load = wrk(f"{url}/infer", body_path, 64, seconds, header_length=header_length)
        return {
            "model": name,
            "provider": provider,
            "warmup": warm,
            "served_by": meta.get("parameters", {}).get("execution_provider"),
            "ready_s": ready_s,
            "first_ms": first_ms,
            "steady_ms": statistics.median(steady),
            "rows_per_s_c64": load["rps"],
            "p50_ms_c64": load["p50_us"] / 1e3,
        }
    finally:
        stop(proc, before)
        log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="each wrk run and each raw onnxruntime run")
    p.add_argument("--install", action="store_true", help="install onnxruntime-gpu if onnxruntime has no CUDA provider")
    a = p.parse_args()
    if shutil.which("nvidia-smi") is None:
        print("no NVIDIA GPU here (nvidia-smi not found): nothing measured", file=sys.stderr)
        return 2
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True)
    found = providers(a.install)
    if not found:
        print("onnxruntime offers no GPU provider here (run with --install, or pip install lockgate[gpu])", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is needed for the load runs (apt-get install -y wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lockgate-gpu-"))
    print(f"GPU: {gpu.stdout.strip()}; providers: {', '.join(found)}; work folder {work}", flush=True)
    results: dict = {"gpu": gpu.stdout.strip(), "host": platform.node(), "raw": [], "lockgate": []}
    for provider in found:
        for name in SIZES:
            model_path = write_model(work / "raw", name, provider, False)
            for batch in (1, BATCH):
                r = raw(model_path, provider, batch, min(a.seconds, 5.0), work / "trt-cache")
                r.update(model=name, provider=provider)
                results["raw"].append(r)
                print(f"raw {provider[:4]} {name:6} batch {batch}: {r['rows_per_s']:9.1f} rows/s ({r['served_by']})", flush=True)
            for warm in (False, True):
                try:
                    r = serve(name, provider, warm, work, a.seconds)
                except Exception as e:  # noqa: BLE001 - keep the other figures
                    print(f"lockgate {provider[:4]} {name} warmup={warm} failed: {e}", flush=True)
                    continue
                results["lockgate"].append(r)
                print(
                    f"lockgate {provider[:4]} {name:6} warmup {'on ' if warm else 'off'}: ready {r['ready_s']:.1f} s, "
                    f"first {r['first_ms']:.1f} ms, then {r['steady_ms']:.2f} ms, c=64 {r['rows_per_s_c64']:.1f} rows/s "
                    f"({r['served_by']})",
                    flush=True,
                )
    print()
    print(f"{'provider':10} {'model':7} {'lockgate rows/s':>16} {'raw b8 rows/s':>14} {'ratio':>6}  (target >= 0.9x)")
    for r in results["lockgate"]:
        if not r["warmup"]:
            continue
        base = next(
            x for x in results["raw"] if x["model"] == r["model"] and x["provider"] == r["provider"] and x["batch"] == BATCH
        )
        ratio = r["rows_per_s_c64"] / base["rows_per_s"]
        r["ratio_to_raw_b8"] = ratio
        print(f"{r['provider'][:10]:10} {r['model']:7} {r['rows_per_s_c64']:16.1f} {base['rows_per_s']:14.1f} {ratio:6.2f}x")
    out = HERE / "results" / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
