"""What governance and monitoring cost on the request path: lockgate with and without API keys,
the audit log, metrics and drift, in one run on one machine, with wrk (closed loop, MLP, JSON bodies).

    python bench/governance.py            # make bench-governance (3 x 10 s per level)
    python bench/governance.py --quick    # 1 x 5 s per level

Variants, each a `lockgate serve` of its own (monitoring blocked unless named):
  core           governance, audit and monitoring plugins blocked: the serving path alone
  open           governance without keys (open mode: the gate runs, nobody is checked), no audit log
  keys           API keys checked (governance), no audit log
  keys+async     API keys, audit log in async mode (bounded buffer, nothing waits)
  keys+sync      API keys, audit log in sync mode (the default: a response waits for its record)
  metrics        the monitoring plugin's Prometheus metrics (no drift baseline): nothing else
  metrics+drift  metrics, and drift against a reference sample (10 % of batches sampled, the default)
  default        everything as shipped: keys, sync audit log, metrics and drift
  core+trace1%   core with OpenTelemetry on (LOCKGATE_TRACING=otlp), 1% of traces sampled, spans
                 exported over OTLP/HTTP to a receiver in this process
  default+shadow20%  as shipped, and a shadow run of a second MLP version taking 20% of the
                 traffic (its replica shares this machine's cores with production's)

The core runs first and again last (a name may come more than once in --variants): this
machine's speed drifts by tens of percent within half an hour, so each ratio is taken against
the core's runs at both ends together, and the two ends are printed apart to show the drift.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import MODEL, PY, free_port, machine, stop, wait_ready, wrk  # noqa: E402

VARIANTS = {
    "core": ({"LOCKGATE_PLUGINS_BLOCK": "governance,audit,monitoring"}, None),
    "open": ({"LOCKGATE_PLUGINS_BLOCK": "audit,monitoring"}, "open"),
    "keys": ({"LOCKGATE_PLUGINS_BLOCK": "audit,monitoring"}, None),
    "keys+async": ({"LOCKGATE_PLUGINS_BLOCK": "monitoring"}, "async"),
    "keys+sync": ({"LOCKGATE_PLUGINS_BLOCK": "monitoring"}, "sync"),
    "metrics": ({"LOCKGATE_PLUGINS_BLOCK": "governance,audit"}, "open"),
    "metrics+drift": ({"LOCKGATE_PLUGINS_BLOCK": "governance,audit"}, "drift"),
    "default": ({}, "drift+sync"),
    "core+trace1%": (
        {
            "LOCKGATE_PLUGINS_BLOCK": "governance,audit,monitoring",
            "LOCKGATE_TRACING": "otlp",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        },
        None,
    ),
    "default+shadow20%": ({}, "drift+sync"),
}


def span_sink() -> str:
    """An OTLP/HTTP endpoint in this process that takes every export (and counts its bytes)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        received = 0

        def do_POST(self) -> None:
            Sink.received += len(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces"


def prepare(work: Path, cli: list[str], env: dict[str, str], mode: str | None, shadowed: bool, keyed: bool) -> str | None:
    """A variant's registry: the demo MLP, its reference sample for drift, a second version
    shadowed with 20% of the traffic; an admin API key (returned) for the keyed variants."""
    subprocess.run([*cli, "models", "import-repo", str(work / "repo")], env=env, check=True, capture_output=True)
    if mode is not None and mode.startswith("drift"):
        reference = work / "reference.npy"
        np.save(reference, np.random.default_rng(1).standard_normal((2000, 64)).astype(np.float32))
        subprocess.run([*cli, "models", "reference", MODEL, "1", str(reference)], env=env, check=True, capture_output=True)
    if shadowed:
        import onnx

        from lockgate.server.tools.demo import build_mlp

        onnx.save(build_mlp(seed=1), str(work / "mlp-2.onnx"))
        for args in (
            ["models", "register", "--name", MODEL, str(work / "mlp-2.onnx")],
            ["models", "shadow", MODEL, "2", "--share", "0.2"],
        ):
            subprocess.run([*cli, *args], env=env, check=True, capture_output=True)
    if not keyed:
        return None
    return subprocess.run(
        [*cli, "keys", "create", "--principal", "bench", "--role", "admin"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def shadow_evidence(cli: list[str], env: dict[str, str], key: str | None) -> str:
    """The shadow run's evidence so far, in one line."""
    done = subprocess.run(
        [*cli, "models", "evidence", MODEL, "2", "--json"],
        env={**env, **({"LOCKGATE_API_KEY": key} if key else {})},
        capture_output=True,
        text=True,
    )
    shown = json.loads(done.stdout) if done.returncode == 0 else {"compared": 0, "dropped": 0, "errors": 0}
    return f"{shown['compared']} compared, {shown['dropped']} dropped, {shown['errors']} errors"


def core_turns(results: dict[tuple[str, int], list[dict]], reps: int) -> list[float]:
    """The core's c=64 median req/s at each of its turns, in order (its runs are kept in order,
    ``reps`` a turn)."""
    runs = [r["rps"] for r in results.get(("core", 64), [])]
    return [float(np.median(runs[i : i + reps])) for i in range(0, len(runs), reps)]


def report(names: list[str], results: dict[tuple[str, int], list[dict]], turns: list[float]) -> dict:
    """Print each variant's medians and its ratios to the core (all the core's runs); the ratios."""

    def median(name: str, c: int, field: str) -> float:
        return float(np.median([r[field] for r in results[(name, c)]]))

    print()
    if len(turns) > 1:
        shown = ", ".join(f"turn {t + 1}: {v:.0f}" for t, v in enumerate(turns))
        print(f"core c=64 req/s at each of its turns ({shown}); ratios below use all of its runs")
    print(f"{'variant':<14} {'c=1 p50 ms':>10} {'c=1 p99 ms':>10} {'c=64 req/s':>11} {'c=64 p99 ms':>11}")
    for name in names:
        if (name, 1) in results and (name, 64) in results:
            print(
                f"{name:<14} {median(name, 1, 'p50_us') / 1e3:>10.3f} {median(name, 1, 'p99_us') / 1e3:>10.3f} "
                f"{median(name, 64, 'rps'):>11.0f} {median(name, 64, 'p99_us') / 1e3:>11.2f}"
            )
    summary = {}
    for name in names:
        if name == "core" or (name, 64) not in results or ("core", 64) not in results:
            continue
        summary[name] = {
            "c1_p50_added_us": median(name, 1, "p50_us") - median("core", 1, "p50_us"),
            "c64_throughput_vs_core": median(name, 64, "rps") / median("core", 64, "rps"),
        }
        print(
            f"{name}: c=1 p50 {summary[name]['c1_p50_added_us']:+.0f} us vs core; c=64 throughput {summary[name]['c64_throughput_vs_core']:.2f}x core"
        )
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--variants",
        default=",".join([*VARIANTS, "core"]),
        help="comma-separated, in order, a name again to measure it again: " + ", ".join(VARIANTS),
    )
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args()
    order = a.variants.split(",")
    unknown = [name for name in order if name not in VARIANTS]
    if unknown:
        p.error(f"unknown variants: {', '.join(unknown)}")
    reps, seconds = (1, 5.0) if a.quick else (3, 10.0)
    levels = [1, 64]
    a.out.mkdir(parents=True, exist_ok=True)
    from lockgate.server.hosting.serve_compat import haproxy_pids
    from lockgate.server.tools.demo import write_demo_repository

    work = Path(tempfile.mkdtemp(prefix="lockgate-bench-gov-"))
    write_demo_repository(work / "repo", [MODEL])
    row = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [round(float(v), 6) for v in row]}]}
    )
    body_path = work / "body.json"
    body_path.write_text(body)
    info = machine()
    print(f"machine: {info['cores']} cores, Python {info['python']}, Ray {info['ray']}, load {info['loadavg']}")
    results: dict[tuple[str, int], list[dict]] = {}
    for turn, name in enumerate(order):
        extra, mode = VARIANTS[name]
        home = work / f"home-{name.replace('+', '-')}-{turn}"
        home.mkdir()
        audited = mode is not None and mode.split("+")[-1] in ("sync", "async")
        if audited:
            (home / "lockgate.yaml").write_text(f"audit:\n  mode: {mode.split('+')[-1]}\n")
        env = {**os.environ, "LOCKGATE_HOME": str(home), **extra}
        if "LOCKGATE_TRACING" in extra:
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = span_sink()
        cli = [PY, "-m", "lockgate.server.cli"]
        shadowed = name.endswith("shadow20%")
        key = prepare(
            work, cli, env, mode, shadowed, keyed=name not in ("core", "open", "metrics", "metrics+drift", "core+trace1%")
        )
        authorization = None if key is None else f"Bearer {key}"
        port = free_port()
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        print(f"== {name}: starting" + (" (again)" if name in order[:turn] else ""), flush=True)
        before = set(haproxy_pids())
        log = open(work / f"{name}-{turn}.log", "w")
        proc = subprocess.Popen(
            [*cli, "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        try:
            wait_ready(url, body.encode(), proc, headers={"Authorization": authorization} if authorization else None)
            wrk(url, body_path, 8, 3, authorization=authorization)  # warm-up
            for _ in range(40 if shadowed else 0):  # measured once the shadow compares
                if not shadow_evidence(cli, env, key).startswith("0 compared"):
                    break
                wrk(url, body_path, 8, 2, authorization=authorization)
            for c in levels:
                for rep in range(reps):
                    r = wrk(url, body_path, c, seconds, authorization=authorization)
                    results.setdefault((name, c), []).append(r)
                    print(
                        f"   {name} c={c:<3} rep {rep}: {r['rps']:8.0f} req/s  p50 {r['p50_us'] / 1e3:6.3f} ms  p99 {r['p99_us'] / 1e3:7.2f} ms"
                        f"  errors {r['status_errors'] + r['socket_errors']}",
                        flush=True,
                    )
        finally:
            stop(proc, before)
            log.close()
        if shadowed:
            print(f"   shadow: {shadow_evidence(cli, env, key)}", flush=True)
        if audited:
            audit = subprocess.run(
                [*cli, "audit", "verify"], env={**env, "LOCKGATE_API_KEY": key}, capture_output=True, text=True
            )
            print(f"   audit: {audit.stdout.strip().splitlines()[0] if audit.stdout else audit.stderr.strip()}", flush=True)

    turns = core_turns(results, reps)
    summary = report(list(dict.fromkeys(order)), results, turns)
    info["loadavg_after"] = os.getloadavg()
    info["core_c64_by_turn"] = turns
    print(f"load average before {info['loadavg']}, after {info['loadavg_after']}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = a.out / f"governance-{'quick' if a.quick else 'full'}-{stamp}.json"
    path.write_text(
        json.dumps({"machine": info, "summary": summary, "runs": {f"{k[0]}@{k[1]}": v for k, v in results.items()}}, indent=2)
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
