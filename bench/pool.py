"""What a pooled model's request costs against a model with replicas of its own: the same MLP
served twice by one `lockgate serve`, once as `mlp` (its own replica) and once as `mlp_pooled`
(pool `shared`: through the control replica and Serve's model multiplexing), W1's JSON body,
wrk at 1 and 16 connections, alternating, medians of --reps. Plugins blocked, as bench/run.py's
`lockgate` row, so the figures are the hosting's.

    python bench/pool.py [--seconds 5] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from run import free_port, stop, wait_health, workloads, wrk

PY = sys.executable


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    from lockgate.server.hosting.serve_compat import haproxy_pids

    work = Path(tempfile.mkdtemp(prefix="lockgate-pool-"))
    repo, _, _, _, body_path, _ = workloads(work)
    shutil.rmtree(repo / "cnn")
    shutil.copytree(repo / "mlp", repo / "mlp_pooled")
    config = yaml.safe_load((repo / "mlp_pooled" / "config.yaml").read_text()) or {}
    config["pool"] = "shared"
    (repo / "mlp_pooled" / "config.yaml").write_text(yaml.safe_dump(config))
    home = work / "home"
    home.mkdir()
    (home / "lockgate.yaml").write_text(yaml.safe_dump({"pools": {"shared": {"replicas": 1, "num_cpus": 0.25}}}))
    port = free_port()
    env = {**os.environ, "LOCKGATE_HOME": str(home), "LOCKGATE_PLUGINS_BLOCK": "governance,audit,monitoring"}
    env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    before = set(haproxy_pids())
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(
        [PY, "-m", "lockgate.server.cli", "serve", "--model-repository", str(repo), "--port", str(port), "--grpc-port", "0"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        wait_health(f"http://127.0.0.1:{port}", proc, log.name)
        for model in ("mlp", "mlp_pooled"):  # warm both (the pooled one loads here)
            wrk(f"http://127.0.0.1:{port}/v2/models/{model}/infer", body_path, 1, 2)
        for _ in range(a.reps):
            for c in (1, 16):
                for model in ("mlp", "mlp_pooled"):
                    r = wrk(f"http://127.0.0.1:{port}/v2/models/{model}/infer", body_path, c, a.seconds)
                    results.setdefault((model, c), []).append(r)
                    print(f"{model:11} c={c:<3} {r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1e3:6.3f} ms", flush=True)
    finally:
        stop(proc, before)
        log.close()
    print()
    print(f"{'':11} {'c=1 p50 ms':>11} {'c=16 req/s':>11}")
    summary = {}
    for model in ("mlp", "mlp_pooled"):
        p50 = statistics.median(r["p50_us"] for r in results[(model, 1)]) / 1e3
        rps = statistics.median(r["rps"] for r in results[(model, 16)])
        summary[model] = (p50, rps)
        print(f"{model:11} {p50:11.3f} {rps:11.0f}")
    (own_p50, own_rps), (pool_p50, pool_rps) = summary["mlp"], summary["mlp_pooled"]
    print(f"pooled: +{pool_p50 - own_p50:.3f} ms at c=1, {pool_rps / own_rps:.2f}x the throughput at c=16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
