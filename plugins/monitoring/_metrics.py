"""The serving metrics: names, labels, buckets; children cached so a request costs a few
dictionary lookups and mmap writes.

Labels are ``model`` and ``version`` (bounded: the versions a replica loaded) and, where it
matters, the status ``code``, the deciding ``plugin`` and the drift ``feature`` (bounded by
the model's inputs).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "ServingMetrics"]

# From half a millisecond (the fast path answers in about 0.3 ms) to ten seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_MV = ["model", "version"]


class ServingMetrics:
    """Every metric the monitoring plugin writes, made on first use in a process."""

    def __init__(self, latency_buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        r = CollectorRegistry()  # values live in the multiprocess files; this registry is never scraped
        self.requests = Counter("lockgate_requests", "Inference requests answered, by HTTP status code.", [*_MV, "code"], registry=r)
        self.latency = Histogram(
            "lockgate_request_duration_seconds", "End-to-end time of an inference request in its replica.", _MV, buckets=latency_buckets, registry=r
        )
        self.queue = Histogram(
            "lockgate_queue_duration_seconds", "Time the oldest request of a batch waited in the queue.", _MV, buckets=latency_buckets, registry=r
        )
        self.compute = Histogram(
            "lockgate_compute_duration_seconds", "Time onnxruntime took for one batch.", _MV, buckets=latency_buckets, registry=r
        )
        self.batch = Histogram("lockgate_batch_size", "Rows in one batch run by the model.", _MV, buckets=BATCH_BUCKETS, registry=r)
        self.depth = Gauge(
            "lockgate_queue_depth", "Requests waiting in the model's queue when the last batch started.", _MV, multiprocess_mode="livesum", registry=r
        )
        self.denials = Counter(
            "lockgate_auth_denials", "Requests refused by a gatekeeper (401, 403); the deciding plugin is in the audit log.", ["model", "code"], registry=r
        )
        self.plugin_errors = Counter("lockgate_plugin_errors", "Plugin hook failures (gatekeepers deny, observers fail open).", ["plugin"], registry=r)
        drift = [*_MV, "feature"]
        self.psi = Gauge("lockgate_drift_psi", "PSI of the last window against the baseline.", drift, multiprocess_mode="livemostrecent", registry=r)
        self.ks = Gauge("lockgate_drift_ks_pvalue", "KS test p-value of the last window (numeric features).", drift, multiprocess_mode="livemostrecent", registry=r)
        self.chi2 = Gauge(
            "lockgate_drift_chi2_pvalue", "Chi-square p-value of the last window (categorical features).", drift, multiprocess_mode="livemostrecent", registry=r
        )
        self.js = Gauge(
            "lockgate_drift_js_divergence", "Jensen-Shannon divergence of the last window (categorical features).", drift, multiprocess_mode="livemostrecent", registry=r
        )
        self.max_psi = Gauge("lockgate_drift_max_psi", "Largest feature PSI of the last window.", _MV, multiprocess_mode="livemostrecent", registry=r)
        self.detected = Gauge(
            "lockgate_drift_detected", "1 while the last window's PSI is above the threshold.", _MV, multiprocess_mode="livemostrecent", registry=r
        )
        self.windows = Counter("lockgate_drift_windows", "Windows compared with the baseline.", _MV, registry=r)
        self.alerts = Counter("lockgate_drift_alerts", "Crossings of the drift threshold (from below to above).", _MV, registry=r)
        self.dropped = Counter("lockgate_drift_dropped_windows", "Windows dropped because the drift worker was busy.", _MV, registry=r)
        self.explanations = Counter("lockgate_explanations", "Explanations answered, by HTTP status code.", [*_MV, "code"], registry=r)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._batch_children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}

    def request(self, model: str, version: str, status: int) -> tuple[Any, Any]:
        key = (model, version, status)
        children = self._request_children.get(key)
        if children is None:
            for code in ("401", "403"):  # zero series from the start, so that rates and alerts see them
                self.denials.labels(model, code)
            children = (self.requests.labels(model, version, str(status)), self.latency.labels(model, version))
            self._request_children[key] = children
        return children

    def batch_children(self, model: str, version: str) -> tuple[Any, Any, Any, Any]:
        key = (model, version)
        children = self._batch_children.get(key)
        if children is None:
            children = (self.queue.labels(model, version), self.compute.labels(model, version), self.batch.labels(model, version), self.depth.labels(model, version))
            self._batch_children[key] = children
        return children
