"""Drift: a shifted input alerts within one window; an unchanged one stays under the stated
false-positive rate; categorical inputs and predicted classes are compared too. Metrics count."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lockgate.plugins import AuditEvent, InferenceEvent, PluginManager, Settings, hookimpl
from lockgate.plugins.monitoring import MonitoringPlugin, build_baseline, compare, psi

FEATURES = 8
WINDOW = 1000


class Recorder:
    """A plugin keeping the control records it is given."""

    LOCKGATE_PLUGIN_API = "1.2"

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    @hookimpl
    def lockgate_audit_event(self, event: AuditEvent) -> None:
        self.events.append(event)


def classifier(rows: np.ndarray) -> np.ndarray:
    """Scores of three classes: which third of the first feature's range the row falls in."""
    return np.stack([-rows[:, 0], -np.abs(rows[:, 0]), rows[:, 0]], axis=1) * 10


@pytest.fixture
def monitored():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((5000, FEATURES)).astype(np.float32)
    baseline = build_baseline({"x": reference}, {"scores": classifier(reference)})
    manager = PluginManager()
    plugin, recorder = MonitoringPlugin(), Recorder()
    plugin.LOCKGATE_PLUGIN_API = "1.2"
    manager.register(plugin, "monitoring")
    manager.register(recorder, "recorder")
    options = {"monitoring": {"drift": {"sample_rate": 1.0, "window_rows": WINDOW}}}
    manager.configure(Settings("sqlite://", "/nonexistent", options=options))
    plugin.set_baseline("m", 1, baseline)
    return manager, plugin, recorder


def feed(manager, rows: np.ndarray, batch: int = 32) -> None:
    for i in range(0, len(rows), batch):
        x = rows[i : i + batch]
        manager.observe(
            "lockgate_observe_batch",
            model="m",
            version=1,
            rows=len(x),
            requests=len(x),
            queue_s=0.0,
            compute_s=0.0001,
            queued=0,
            inputs={"x": x},
            outputs={"scores": classifier(x)},
        )


def wait_windows(plugin, n, timeout=30.0):
    end = time.monotonic() + timeout
    while plugin.windows_compared < n and time.monotonic() < end:
        time.sleep(0.01)
    assert plugin.windows_compared >= n


def test_a_mean_shift_alerts_within_one_window(monitored):
    manager, plugin, recorder = monitored
    rng = np.random.default_rng(1)
    feed(manager, rng.standard_normal((WINDOW, FEATURES)).astype(np.float32))  # N(0,1): quiet
    wait_windows(plugin, 1)
    assert not [e for e in recorder.events if e.kind == "drift_detected"]
    feed(manager, (rng.standard_normal((WINDOW, FEATURES)) + 1.0).astype(np.float32))  # N(1,1)
    wait_windows(plugin, 2)
    detected = [e for e in recorder.events if e.kind == "drift_detected"]
    assert len(detected) == 1
    d = detected[0]
    assert d.model == "m" and d.version == 1 and d.detail["max_psi"] > 0.2 and d.detail["threshold"] == 0.2
    assert d.detail["window_rows"] == WINDOW and any(f.startswith("x[") for f in d.detail["features"])
    m = plugin.metrics
    assert m.detected.labels("m", "1")._value.get() == 1.0
    assert m.max_psi.labels("m", "1")._value.get() > 0.2
    assert m.alerts.labels("m", "1")._value.get() == 1.0
    assert m.ks.labels("m", "1", "x[0]")._value.get() < 1e-6  # the KS test sees it too
    # back to N(0,1): cleared, and recorded once
    feed(manager, rng.standard_normal((WINDOW, FEATURES)).astype(np.float32))
    wait_windows(plugin, 3)
    assert [e.kind for e in recorder.events if e.kind.startswith("drift")] == ["drift_detected", "drift_cleared"]
    assert m.detected.labels("m", "1")._value.get() == 0.0


def test_the_same_distribution_stays_under_the_false_positive_rate(monitored):
    """Stated rate: at most 1% of windows of 1000 rows alert when nothing changed (PSI 0.2,
    10 bins, 8 features plus the predicted class). Measured here over 300 windows."""
    manager, plugin, recorder = monitored
    baseline = plugin._baselines[("m", 1)][0]
    rng = np.random.default_rng(2)
    worst, alerts = 0.0, 0
    for _ in range(300):
        x = rng.standard_normal((WINDOW, FEATURES))
        window = {f"x[{i}]": x[:, i] for i in range(FEATURES)} | {"scores:class": np.argmax(classifier(x), axis=1)}
        top = max(r.psi for r in compare(baseline, window))
        worst = max(worst, top)
        alerts += top > 0.2
    assert alerts <= 3, f"{alerts} of 300 windows alerted (largest PSI {worst:.3f})"


def test_categorical_inputs_and_predicted_classes_use_chi_square_and_js():
    rng = np.random.default_rng(3)
    codes = rng.choice(4, size=5000, p=[0.4, 0.3, 0.2, 0.1])
    baseline = build_baseline({"kind": codes.astype(np.int64)})
    assert baseline["features"]["kind"]["kind"] == "categorical"
    same = {r.feature: r for r in compare(baseline, {"kind": rng.choice(4, size=1000, p=[0.4, 0.3, 0.2, 0.1])})}["kind"]
    moved = {r.feature: r for r in compare(baseline, {"kind": rng.choice(5, size=1000, p=[0.1, 0.2, 0.2, 0.4, 0.1])})}["kind"]
    assert same.pvalue > 0.001 and same.js < 0.01 and same.psi < 0.05
    assert moved.pvalue < 1e-9 and moved.js > 0.05 and moved.psi > 0.2


def test_psi_of_identical_distributions_is_zero_and_grows_with_the_shift():
    e = np.full(10, 0.1)
    assert psi(e, e) == 0.0
    assert 0 < psi(e, np.array([0.15, 0.05] * 5)) < psi(e, np.array([0.19, 0.01] * 5))


def test_requests_are_counted_by_status_and_denials_by_plugin(monitored):
    manager, plugin, _ = monitored
    for status in (200, 200, 400, 403):
        event = InferenceEvent("r", "m", 1, "p", status, 0.002, 1, decided_by="governance" if status == 403 else None)
        manager.observe("lockgate_observe_inference", event=event)
    m = plugin.metrics
    plugin.flush()
    assert m.requests.labels("m", "1", "200")._value.get() == 2
    assert m.requests.labels("m", "1", "400")._value.get() == 1
    assert m.denials.labels("m", "403")._value.get() == 1 and m.denials.labels("m", "401")._value.get() == 0
    assert m.latency.labels("m", "1")._sum.get() == pytest.approx(0.008)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_our_ks_test_agrees_with_scipys(shift):
    from scipy import stats

    from lockgate.plugins.monitoring._drift import ks_2samp

    rng = np.random.default_rng(4)
    window, reference = rng.normal(shift, 1, 1000), np.sort(rng.normal(0, 1, 2000))
    ours = ks_2samp(window, reference)
    theirs = stats.ks_2samp(window, reference, method="asymp")
    assert ours[0] == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours[1] == pytest.approx(theirs.pvalue, rel=0.1, abs=1e-3)


def test_our_chi_square_and_js_agree_with_scipys():
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    rng = np.random.default_rng(5)
    baseline = build_baseline({"kind": rng.choice(4, size=5000, p=[0.4, 0.3, 0.2, 0.1])})
    window = rng.choice(4, size=800, p=[0.3, 0.3, 0.3, 0.1])
    ours = compare(baseline, {"kind": window})[0]
    observed = np.bincount(window, minlength=4).astype(float)
    expected = np.array([baseline["features"]["kind"]["frequencies"][str(i)] for i in range(4)])
    theirs = stats.chisquare(observed, expected / expected.sum() * observed.sum())
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-6) and ours.pvalue == pytest.approx(theirs.pvalue, rel=1e-6)
    assert ours.js == pytest.approx(jensenshannon(expected, observed / observed.sum(), base=2) ** 2, rel=1e-6)


def test_tallies_written_at_a_flush_equal_observing_each_value():
    """The hot path tallies per bucket; a flush must leave the histogram exactly as
    Histogram.observe of every value would (bucket edges included)."""
    from prometheus_client import CollectorRegistry, Histogram

    from lockgate.plugins.monitoring import LATENCY_BUCKETS, ServingMetrics

    rng = np.random.default_rng(6)
    values = np.concatenate([rng.exponential(0.01, 2000), np.array(LATENCY_BUCKETS), [0.0, 99.0]])
    reference = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    m = ServingMetrics()
    for v in values:
        reference.observe(float(v))
        m.add_request("m", "1", 200, float(v))
        m.add_batch("m", "1", float(v), 0.001, 3, 7)
    m.flush()

    def buckets(h):
        return [
            (s.labels.get("le"), s.value)
            for metric in h.collect()
            for s in metric.samples
            if s.name.endswith(("_bucket", "_count", "_sum"))
        ]

    expected = buckets(reference)
    assert buckets(m.latency.labels("m", "1")) == expected
    assert buckets(m.queue.labels("m", "1")) == expected
    assert m.requests.labels("m", "1", "200")._value.get() == len(values)
    assert m.depth.labels("m", "1")._value.get() == 7
    assert m.batch.labels("m", "1")._sum.get() == 3 * len(values)
