"""A canary through a live `lockgate serve`: `lockgate models alias set mlp production 1=70 2=30`
splits the default alias between two versions; each caller gets the same version while the
weights hold, every answer names its version and its audit record says the same, moving the
weights reaches the replica within seconds and is in the alias history and the audit log, and
`lockgate report` gives the SLO figures per version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import onnx
import requests

from .conftest import free_port, isolated_haproxy_env, wait_ready

LOCKGATE = [sys.executable, "-m", "lockgate.server.cli"]
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
CLIENTS = [f"client-{i}" for i in range(60)]


def test_a_weighted_alias_is_a_sticky_canary_audited_and_reported(tmp_path):
    from lockgate.server.tools.demo import build_mlp, write_demo_repository

    write_demo_repository(tmp_path / "repo", ["mlp"])
    onnx.save(build_mlp(seed=1), str(tmp_path / "mlp-2.onnx"))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, **isolated_haproxy_env(), "LOCKGATE_HOME": str(home)}
    env.pop("LOCKGATE_API_KEY", None)

    def cli(*args: str, actor: str = "alice") -> str:
        done = subprocess.run(
            [*LOCKGATE, *args], env={**env, "LOCKGATE_ACTOR": actor}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    cli("models", "import-repo", str(tmp_path / "repo"))
    cli("models", "register", "--name", "mlp", str(tmp_path / "mlp-2.onnx"))
    cli("models", "approve", "mlp", "2", actor="bob")  # production is protected: approved versions only
    assert "mlp@production -> version 1 70%, version 2 30% (was 1)" in cli(
        "models", "alias", "set", "mlp", "production", "1=70", "2=30"
    )
    assert "production=1:70%+2:30%" in cli("models", "list")
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

    def round_() -> dict[str, tuple[int, str]]:
        out = {}
        for client in CLIENTS:
            r = session.post(f"{base}/v2/models/mlp/infer", json=BODY, headers={"lockgate-client": client}, timeout=10)
            assert r.status_code == 200, r.text
            out[client] = (int(r.json()["model_version"]), r.headers["lockgate-request-id"])
        return out

    try:
        wait_ready(base, proc, log=tmp_path / "server.log")
        first, second = round_(), round_()
        assert {c: v for c, (v, _) in first.items()} == {c: v for c, (v, _) in second.items()}  # sticky
        shares = Counter(v for v, _ in first.values())
        assert set(shares) == {1, 2}, shares
        cli("models", "alias", "set", "mlp", "production", "1=10", "2=90")  # the weights move
        deadline, moved = time.monotonic() + 15, Counter()
        while time.monotonic() < deadline:
            moved = Counter(v for v, _ in round_().values())
            if moved[2] > shares[2]:
                break
            time.sleep(0.5)
        assert moved[2] > shares[2], (shares, moved)
        stayed = round_()  # every caller on version 2 before is still on it: the canary grew, nobody flipped back
        assert all(stayed[c][0] == 2 for c, (v, _) in first.items() if v == 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)

    records = [json.loads(line) for line in cli("audit", "export", "--format", "jsonl").splitlines() if line.strip()]
    versions = {r["request_id"]: r["version"] for r in records if r["kind"] == "infer"}
    for version, request_id in list(first.values()) + list(stayed.values()):
        assert versions[request_id] == version  # the record says the version the answer named
    splits = [r["detail"]["weights"] for r in records if r["kind"] == "alias_split"]
    assert splits == [{"1": 70, "2": 30}, {"1": 10, "2": 90}]
    history = cli("models", "history", "mlp", "--alias", "production")
    assert "production   -> 1:70%+2:30% (was 1)" in history and "production   -> 1:10%+2:90% (was 1)" in history, history
    report = cli("report", "--since", "1h", "--model", "mlp", "--html", str(tmp_path / "report.html"))
    lines = [line for line in report.splitlines() if line.strip().startswith("version ")]
    assert [line.split()[1] for line in lines] == ["1", "2"], report
