"""The serving metrics: names, labels, buckets.

A request or a batch does not write the metric files itself: it adds to plain in-process
tallies (a bisect and a few integer additions, well under a microsecond), and the monitoring
worker moves the tallies into the Prometheus children every ``flush_s`` (and at exit). Writing
each observation through prometheus-client costs 1 us per counter and 2.5 us per histogram
(a lock and an mmap write each): 20 us per request at concurrency 1, measured in
bench/governance.py as 0.83x of the core's throughput at concurrency 64.

Labels are ``model`` and ``version`` (bounded: the versions a replica loaded) and, where it
matters, the status ``code``, the deciding ``plugin`` and the drift ``feature`` (bounded by
the model's inputs).
"""

from __future__ import annotations

import threading
from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "ServingMetrics", "Tally"]

# From half a millisecond (the fast path answers in about 0.3 ms) to ten seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_MV = ["model", "version"]


class ServingMetrics:
    """Every metric the monitoring plugin writes, made on first use in a process."""

    def __init__(self, latency_buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        r = CollectorRegistry()  # values live in the multiprocess files; this registry is never scraped
        self.requests = Counter(
            "lockgate_requests", "Inference requests answered, by HTTP status code.", [*_MV, "code"], registry=r
        )
        self.latency = Histogram(
            "lockgate_request_duration_seconds",
            "End-to-end time of an inference request in its replica.",
            _MV,
            buckets=latency_buckets,
            registry=r,
        )
        self.queue = Histogram(
            "lockgate_queue_duration_seconds",
            "Time the oldest request of a batch waited in the queue.",
            _MV,
            buckets=latency_buckets,
            registry=r,
        )
        self.compute = Histogram(
            "lockgate_compute_duration_seconds", "Time onnxruntime took for one batch.", _MV, buckets=latency_buckets, registry=r
        )
        self.batch = Histogram(
            "lockgate_batch_size", "Rows in one batch run by the model.", _MV, buckets=BATCH_BUCKETS, registry=r
        )
        self.depth = Gauge(
            "lockgate_queue_depth",
            "Requests waiting in the model's queue when the last batch started.",
            _MV,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.denials = Counter(
            "lockgate_auth_denials",
            "Requests refused by a gatekeeper (401, 403); the deciding plugin is in the audit log.",
            ["model", "code"],
            registry=r,
        )
        self.plugin_errors = Counter(
            "lockgate_plugin_errors", "Plugin hook failures (gatekeepers deny, observers fail open).", ["plugin"], registry=r
        )
        drift = [*_MV, "feature"]
        self.psi = Gauge(
            "lockgate_drift_psi",
            "PSI of the last window against the baseline.",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.ks = Gauge(
            "lockgate_drift_ks_pvalue",
            "KS test p-value of the last window (numeric features).",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.chi2 = Gauge(
            "lockgate_drift_chi2_pvalue",
            "Chi-square p-value of the last window (categorical features).",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.js = Gauge(
            "lockgate_drift_js_divergence",
            "Jensen-Shannon divergence of the last window (categorical features).",
            drift,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.max_psi = Gauge(
            "lockgate_drift_max_psi",
            "Largest feature PSI of the last window.",
            _MV,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.detected = Gauge(
            "lockgate_drift_detected",
            "1 while the last window's PSI is above the threshold.",
            _MV,
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.windows = Counter("lockgate_drift_windows", "Windows compared with the baseline.", _MV, registry=r)
        self.alerts = Counter("lockgate_drift_alerts", "Crossings of the drift threshold (from below to above).", _MV, registry=r)
        self.dropped = Counter(
            "lockgate_drift_dropped_windows", "Windows dropped because the drift worker was busy.", _MV, registry=r
        )
        self.explanations = Counter(
            "lockgate_explanations", "Explanations answered, by HTTP status code.", [*_MV, "code"], registry=r
        )
        self._latency_bounds = tuple(latency_buckets)
        self._lock = threading.Lock()  # the flushing thread swaps the tallies out under it
        self._requests: dict[tuple[str, str, int], list] = {}  # -> [count, latency Tally]
        self._batches: dict[tuple[str, str], list] = {}  # -> [queue Tally, compute Tally, size Tally, depth]

    # -- the hot path: tallies only -------------------------------------------------------------

    def add_request(self, model: str, version: str, status: int, latency_s: float) -> None:
        entry = self._requests.get((model, version, status))
        if entry is None:
            with self._lock:
                entry = self._requests.setdefault((model, version, status), [0, Tally(self._latency_bounds)])
        entry[0] += 1
        entry[1].add(latency_s)

    def add_batch(self, model: str, version: str, queue_s: float, compute_s: float, rows: int, queued: int) -> None:
        entry = self._batches.get((model, version))
        if entry is None:
            bounds = self._latency_bounds
            with self._lock:
                entry = self._batches.setdefault((model, version), [Tally(bounds), Tally(bounds), Tally(BATCH_BUCKETS), queued])
        entry[0].add(queue_s)
        entry[1].add(compute_s)
        entry[2].add(rows)
        entry[3] = queued

    def flush(self) -> None:
        """Move the tallies into the metric files (the worker thread, every ``flush_s``, and at exit)."""
        with self._lock:
            requests, self._requests = self._requests, {}
            batches, self._batches = self._batches, {}
        for (model, version, status), (count, latency) in requests.items():
            for code in ("401", "403"):  # zero series from the start, so that rates and alerts see them
                self.denials.labels(model, code)
            self.requests.labels(model, version, str(status)).inc(count)
            latency.apply(self.latency.labels(model, version))
        for (model, version), (waited, computed, size, depth) in batches.items():
            waited.apply(self.queue.labels(model, version))
            computed.apply(self.compute.labels(model, version))
            size.apply(self.batch.labels(model, version))
            self.depth.labels(model, version).set(depth)


class Tally:
    """Observations of one histogram child, counted per bucket in plain Python."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: Histogram.observe's bucket
        self.total += value

    def apply(self, child: Histogram) -> None:
        """Add the tallies to ``child``: its sum and per-bucket values (prometheus-client keeps
        them as ``_sum`` and ``_buckets``, non-cumulative, one per upper bound, +Inf last;
        tests/unit/test_monitoring.py checks the result against Histogram.observe)."""
        child._sum.inc(self.total)
        for value, n in zip(child._buckets, self.counts):
            if n:
                value.inc(n)
