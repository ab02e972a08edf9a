"""Observability on a real Serve deployment: one scrape counts every request of two replicas
exactly; drift of live traffic is detected and audited; explanations link to what they
explain; the example dashboard and alert rules query only metrics lockgate exposes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
import yaml
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from lockgate.server.tools.demo import build_mlp
from lockgate.server.tools.reference import set_reference

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = "pair"


def scrape(server: str) -> dict[str, list]:
    """Samples of one scrape by name: [(labels, value)]."""
    r = requests.get(f"{server}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def body(rows: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.reshape(-1).tolist()}]}


@pytest.fixture(scope="module")
def pair(server, registry, governance, manager, tmp_path_factory):
    """The demo MLP as model 'pair': two replicas of 0.1 CPU, a CSV reference sample of N(0,1) rows."""
    folder = tmp_path_factory.mktemp("pair")
    onnx.save(build_mlp(seed=0), str(folder / "model.onnx"))
    registry.register(
        folder / "model.onnx", MODEL, created_by="tester", config={"max_batch_size": 32, "replicas": 2, "num_cpus": 0.1}
    )
    governance.decide("approve", MODEL, 1, actor="reviewer")
    registry.set_alias(MODEL, "production", 1, actor="tester")
    sample = np.random.default_rng(0).standard_normal((3000, 64))
    np.savetxt(folder / "reference.csv", sample, delimiter=",", header=",".join(f"f{i}" for i in range(64)), comments="")
    baseline = set_reference(manager, MODEL, 1, folder / "reference.csv", actor="tester")
    assert baseline["rows"] == 3000 and [f for f in baseline["features"] if f.endswith(":class")]
    assert requests.post(f"{server}/v2/repository/models/{MODEL}/load", timeout=300).status_code == 200
    return MODEL


def test_one_scrape_counts_every_request_of_both_replicas_exactly(server, pair, settings):
    n = 600
    rows = np.random.default_rng(1).standard_normal((n, 1, 64)).astype(np.float32)

    def call(i: int) -> int:  # a new connection per request, so HAProxy spreads them
        return requests.post(f"{server}/v2/models/{pair}/infer", json=body(rows[i]), timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(n)))
    assert codes == [200] * n
    end = time.monotonic() + 10  # each replica counts a request just after its answer left
    while total(scrape(server), "lockgate_requests_total", model=pair) < n and time.monotonic() < end:
        time.sleep(0.1)
    samples = scrape(server)
    assert total(samples, "lockgate_requests_total", model=pair) == n
    assert total(samples, "lockgate_requests_total", model=pair, code="200", version="1") == n
    assert total(samples, "lockgate_request_duration_seconds_count", model=pair) == n
    assert total(samples, "lockgate_batch_size_sum", model=pair) == n  # one row per request
    assert total(samples, "lockgate_replicas", model=pair) == 2
    # ... and the requests really were spread over the two replica processes
    per_process = {}
    for path in Path(settings.metrics_dir).glob("counter_*.db"):
        counted = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            metric, _, labels, *_ = json.loads(key)
            if metric == "lockgate_requests" and labels.get("model") == pair:
                counted += value
        if counted:
            per_process[path.stem] = counted
    assert len(per_process) == 2 and sum(per_process.values()) == n, per_process


@pytest.fixture(scope="module")
def drifted(server, pair, manager):
    """Traffic shifted to N(1,1) until a window of some replica alerts; the scrape after it."""
    rng = np.random.default_rng(2)
    end = time.monotonic() + 120
    samples: dict = {}
    while time.monotonic() < end:
        for _ in range(50):
            rows = (rng.standard_normal((32, 64)) + 1.0).astype(np.float32)
            assert requests.post(f"{server}/v2/models/{pair}/infer", json=body(rows), timeout=30).status_code == 200
        samples = scrape(server)
        if total(samples, "lockgate_drift_detected", model=pair) >= 1:
            return samples
    pytest.fail(
        f"no drift detected in 120 s; drift windows compared: {total(samples, 'lockgate_drift_windows_total', model=pair)}"
    )


def test_shifted_traffic_is_detected_as_drift_and_audited(pair, drifted, manager):
    assert total(drifted, "lockgate_drift_max_psi", model=pair) > 0.2
    assert total(drifted, "lockgate_drift_alerts_total", model=pair) >= 1
    psi = {lab["feature"]: v for lab, v in drifted["lockgate_drift_psi"] if lab["model"] == pair}
    assert len([f for f in psi if f.startswith("input[")]) == 64 and [f for f in psi if f.endswith(":class")]
    assert any(lab["model"] == pair for lab, _ in drifted["lockgate_drift_ks_pvalue"])
    assert any(lab["model"] == pair and lab["feature"].endswith(":class") for lab, _ in drifted["lockgate_drift_chi2_pvalue"])
    audit = manager.plugin("audit").audit_log
    end = time.monotonic() + 10
    while not (found := list(audit.records(kind="drift_detected", model=pair))) and time.monotonic() < end:
        time.sleep(0.2)
    assert found, "no drift_detected record in the audit log"
    assert found[0]["detail"]["max_psi"] > 0.2 and found[0]["version"] == 1


@pytest.fixture(scope="module")
def explained(server, pair):
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    inferred = requests.post(f"{server}/v2/models/{pair}/infer", json=body(x), timeout=30)
    request_id = inferred.headers["lockgate-request-id"]
    doc = body(x) | {"parameters": {"explains": request_id}}
    r = requests.post(f"{server}/v2/models/{pair}/explain", json=doc, timeout=60)
    assert r.status_code == 200, r.text
    return inferred, request_id, r


def test_an_explanation_adds_up_and_its_audit_record_links_to_the_request(pair, explained, manager, settings):
    inferred, request_id, r = explained
    doc = r.json()
    assert doc["explains"] == request_id and doc["method"] == "kernel_shap" and doc["evaluations"] <= doc["max_evaluations"]
    assert abs(sum(doc["attributions"]) + doc["base_value"] - doc["value"]) <= 1e-6 * max(1.0, abs(doc["value"]))
    scores = inferred.json()["outputs"][0]["data"]
    assert doc["value"] == pytest.approx(scores[doc["target"]], rel=1e-5, abs=1e-6)
    audit = manager.plugin("audit").audit_log
    own = r.headers["lockgate-request-id"]
    record = next(iter(audit.records(request_id=own)))
    assert record["kind"] == "explain" and record["detail"]["explains"] == request_id and record["detail"]["status"] == 200
    assert next(iter(audit.records(request_id=request_id)))["kind"] == "infer"
    env = {**os.environ, "LOCKGATE_HOME": settings.home}
    trace = subprocess.run(
        [sys.executable, "-m", "lockgate.server.cli", "audit", "trace", request_id], env=env, capture_output=True, text=True
    )
    assert trace.returncode == 0 and f"explained by {own}" in trace.stdout, trace.stderr
    back = subprocess.run(
        [sys.executable, "-m", "lockgate.server.cli", "audit", "trace", own], env=env, capture_output=True, text=True
    )
    assert f"explanation {own}" in back.stdout and f"explains request {request_id}" in back.stdout


def queried(text: str) -> set[str]:
    return set(re.findall(r"\b(lockgate_[a-z0-9_]+)\b", text))


def test_dashboard_and_alert_rules_query_only_metrics_that_exist(server, pair, drifted, explained):
    exposed = set(scrape(server))
    dashboard = json.loads((EXAMPLES / "grafana" / "lockgate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"])
    rules = yaml.safe_load((EXAMPLES / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert alerts and all({"alert", "expr", "labels", "annotations"} <= set(rule) for rule in alerts)
    assert {"LockgateLatencySLO", "LockgateErrorRate", "LockgateDrift"} <= {rule["alert"] for rule in alerts}
    used = queried("\n".join(exprs)) | queried("\n".join(rule["expr"] for rule in alerts))
    assert len(used) >= 15
    missing = sorted(used - exposed)
    assert not missing, f"queried but not exposed: {missing}"


def test_metrics_wants_get(server):
    r = requests.post(f"{server}/metrics", timeout=10)
    assert r.status_code == 405 and "use GET" in r.json()["error"]
