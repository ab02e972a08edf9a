"""A shadow run through a live `lockgate serve`, as an approver would use it: the policy refuses
to approve a version with no shadow sample; `lockgate models shadow mlp 2 --share 1.0` copies
production's traffic to version 2 in a replica of its own while every client still gets version
1's answer; each copy is accounted for (compared, or dropped and counted) and the comparison is
the one the two models give when run directly; the metrics say the same; `lockgate models
evidence` and `approve` show it and the approval then passes; stopping the run stops the copies,
a run with an end stops itself, and `lockgate report` has a section for it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import onnx
import onnxruntime as ort
import requests

from .conftest import free_port, isolated_haproxy_env, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
CONFIG = "shadow: {window_s: 1}\ngovernance: {min_shadow_requests: 30}\n"


def test_a_shadow_run_gives_an_approver_evidence_from_production_traffic(tmp_path):
    from lockgate.server.tools.demo import build_mlp, write_demo_repository

    write_demo_repository(tmp_path / "repo", ["mlp"])
    onnx.save(build_mlp(seed=1), str(tmp_path / "mlp-2.onnx"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "lockgate.yaml").write_text(CONFIG)
    env = {**os.environ, **isolated_haproxy_env(), "LOCKGATE_HOME": str(home)}
    env.pop("LOCKGATE_API_KEY", None)
    env.pop("LOCKGATE_CONFIG", None)

    def cli(*args: str, actor: str = "alice", ok: bool = True) -> str:
        done = subprocess.run(
            [*LOCKGATE, *args], env={**env, "LOCKGATE_ACTOR": actor}, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done.stdout + done.stderr

    def evidence() -> dict:
        return json.loads(cli("models", "evidence", "mlp", "2", "--json"))

    cli("models", "import-repo", str(tmp_path / "repo"))
    cli("models", "register", "--name", "mlp", str(tmp_path / "mlp-2.onnx"))
    refused = cli("models", "approve", "mlp", "2", "--yes", actor="bob", ok=False)
    assert "no shadow evidence" in refused and "needs 30 requests compared in a shadow run" in refused, refused

    x = np.random.default_rng(3).normal(size=(1, 64)).astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x[0].tolist()}]}
    direct = [ort.InferenceSession(build_mlp(seed=s).SerializeToString()).run(None, {"input": x})[0] for s in (0, 1)]
    diff = np.abs(direct[0].astype(np.float64) - direct[1].astype(np.float64))
    same_class = int(direct[0].argmax() == direct[1].argmax())

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [*LOCKGATE, "serve", "--port", str(port), "--grpc-port", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    session = requests.Session()

    def send(n: int) -> None:
        for _ in range(n):
            r = session.post(f"{base}/v2/models/mlp/infer", json=body, timeout=10)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["model_version"] == "1"  # the client gets production's answer only
            assert np.array_equal(np.array(answer["outputs"][0]["data"], dtype=np.float32), direct[0][0])

    try:
        wait_ready(base, proc, log=tmp_path / "server.log")
        assert "mlp version 2 shadows production with 100% of its requests, until stopped" in cli(
            "models", "shadow", "mlp", "2", "--share", "1.0"
        )
        shown: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the replica follows the run; the control replica deploys the shadow
            send(10)
            time.sleep(1.5)
            shown = evidence()
            if shown["compared"] >= 10:
                break
        assert shown["compared"] >= 10, shown

        def settled() -> dict:
            last = evidence()
            while True:
                time.sleep(2.5)  # over a window (1 s) and its flush
                now = evidence()
                if now["compared"] + now["dropped"] == last["compared"] + last["dropped"]:
                    return now
                last = now

        start = settled()
        send(40)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every copy of the run accounted for, once the last window is kept
            shown = evidence()
            if shown["compared"] + shown["dropped"] >= start["compared"] + start["dropped"] + 40:
                break
            time.sleep(0.5)
        assert shown["compared"] + shown["dropped"] == start["compared"] + start["dropped"] + 40, (start, shown)
        assert shown["dropped"] == start["dropped"], (start, shown)  # the shadow is up and the queue has room: none dropped
        assert shown["running"] and shown["errors"] == 0 and shown["baselines"] == [1]
        assert shown["classified"] == shown["compared"] and shown["agreed"] == same_class * shown["compared"]
        (output,) = shown["outputs"].values()
        assert abs(output["max_abs"] - diff.max()) <= 1e-6 * diff.max() and abs(output["mean_abs"] - diff.mean()) <= 1e-6
        assert shown["shadow_ms_mean"] > 0 and shown["baseline_ms_mean"] > 0

        metrics = session.get(f"{base}/metrics", timeout=10).text
        counted = {
            m.group(1): float(m.group(2))
            for m in re.finditer(
                r'^lockgate_shadow_copies_total\{baseline="1",model="mlp",outcome="(\w+)",version="2"\} (\S+)$', metrics, re.M
            )
        }
        assert counted.get("compared") == shown["compared"] and counted.get("dropped", 0.0) == shown["dropped"], counted

        approved = cli("models", "approve", "mlp", "2", "--yes", "--reason", "shadow agrees", actor="bob")
        assert f"requests compared    {shown['compared']}" in approved and "mlp version 2 is approved (by bob)" in approved

        assert "mlp: shadow of version 2 stopped" in cli("models", "shadow", "mlp", "--stop")
        time.sleep(3)  # the replicas follow within a refresh; the shadow's last window is kept as it goes
        before = evidence()
        send(20)
        time.sleep(3)
        after = evidence()
        assert not after["running"] and after["compared"] == before["compared"], (before, after)

        end = datetime.fromtimestamp(time.time() + 4, timezone.utc).isoformat()
        cli("models", "shadow", "mlp", "2", "--share", "0.5", "--until", end)
        deadline = time.monotonic() + 30
        stopped: list = []
        while time.monotonic() < deadline and not stopped:
            time.sleep(1)
            history = cli("audit", "export", "--kind", "shadow_stopped").splitlines()
            stopped = [r for r in map(json.loads, filter(None, history)) if r["actor"] == "lockgate"]
        assert stopped and stopped[0]["detail"]["reason"] == "the run's end was reached", stopped
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    report = cli("report", "--since", "1h", "--model", "mlp", "--html", str(tmp_path / "report.html"))
    assert "mlp version 2 shadowed production (version 1)" in report
    assert "id='shadow-mlp-2'" in (tmp_path / "report.html").read_text()
