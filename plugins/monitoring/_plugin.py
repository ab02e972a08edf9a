"""The monitoring plugin: serving metrics and drift, as observers off the hot path.

Per request (after the response left): a counter and a histogram. Per batch: queue, compute
and batch-size histograms, the queue depth; and, for a sampled share of batches of a version
that has a reference baseline, a copy of its rows into the current drift window. A full
window goes to one worker thread per process, which compares it with the baseline, sets the
drift gauges, and records a crossing of the threshold in the log and the audit log.
"""

from __future__ import annotations

import atexit
import logging
import queue
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import hookimpl
from .._options import parse_section
from .._types import Decision, InferenceEvent, ServiceLevel, Settings
from ..errors import ConfigError
from ._drift import build_baseline, columns, compare, output_columns, prepare
from ._metrics import LATENCY_BUCKETS, ServingMetrics

__all__ = ["LOCKGATE_PLUGIN_API", "DriftOptions", "MonitoringOptions", "MonitoringPlugin", "Slo", "plugin"]

LOCKGATE_PLUGIN_API = "1.4"

log = logging.getLogger("lockgate.monitoring")


class DriftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Compare sampled inputs and predictions with each version's reference baseline.")
    sample_rate: float = Field(0.1, ge=0, le=1, description="Share of batches whose rows go into the drift window.")
    window_rows: int = Field(1000, ge=10, description="Rows in one window; each full window is compared with the baseline.")
    psi_threshold: float = Field(0.2, gt=0, description="A window whose largest feature PSI is above this is drift.")
    bins: int = Field(10, ge=2, le=100, description="Quantile bins per numeric feature in baselines built from now on.")
    recheck_s: float = Field(
        30.0, gt=0, description="How often a replica looks again for the baseline of a version that had none."
    )


class Slo(BaseModel):
    """A model's service-level objectives, used by ``lockgate report`` and the example alert rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_percentile: float = Field(99.0, gt=0, lt=100, description="The latency objective's percentile.")
    latency_ms: float = Field(50.0, gt=0, description="That percentile of answered requests stays at or under this.")
    error_rate: float = Field(0.01, ge=0, le=1, description="Share of requests answered 5xx at most (the error budget).")
    availability: float = Field(0.999, gt=0, le=1, description="Share of requests not answered 5xx (503 included) at least.")


class MonitoringOptions(BaseModel):
    """The ``monitoring`` section of the server configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: bool = Field(True, description="Write Prometheus metrics.")
    flush_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often a process moves its request and batch tallies into the metric files: a scrape is this late at most.",
    )
    latency_buckets: tuple[float, ...] = Field(
        LATENCY_BUCKETS, min_length=1, description="Histogram buckets of the duration metrics, in seconds."
    )
    drift: DriftOptions = Field(default_factory=DriftOptions)
    slo: Slo = Field(default_factory=Slo, description="Objectives of every model without its own.")
    slos: dict[str, Slo] = Field(default_factory=dict, description="Objectives by model name.")

    def slo_for(self, model: str) -> Slo:
        return self.slos.get(model, self.slo)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "metrics_dir" in data:
            raise ValueError(
                "metrics_dir moved to the server's own section: write 'metrics: {dir: ...}' at the top level instead"
            )
        return data


class _Window:
    __slots__ = ("inputs", "outputs", "rows")

    def __init__(self) -> None:
        self.inputs: dict[str, list[np.ndarray]] = {}
        self.outputs: dict[str, list[np.ndarray]] = {}
        self.rows = 0


class MonitoringPlugin:
    LOCKGATE_PLUGIN_API = LOCKGATE_PLUGIN_API

    def __init__(self) -> None:
        self.options = MonitoringOptions()
        self.manager: Any = None
        self.error: str | None = None
        self._metrics: ServingMetrics | None = None
        self._baselines: dict[tuple[str, int], tuple[Mapping[str, Any] | None, float]] = {}
        self._windows: dict[tuple[str, int], _Window] = {}
        self._alerting: dict[tuple[str, int], bool] = {}
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._errors_seen: dict[str, int] = {}
        self.windows_compared = 0

    @hookimpl
    def lockgate_configure(self, settings: Settings, manager: Any) -> None:
        self.manager = manager
        self.error = None
        try:
            self.options = parse_section(settings.options, "monitoring", MonitoringOptions)
        except ConfigError as e:
            self.error = str(e)
            log.error("%s; metrics and drift are off until fixed", self.error)
            self.options = MonitoringOptions(metrics=False, drift=DriftOptions(enabled=False))

    @property
    def metrics(self) -> ServingMetrics:
        if self._metrics is None:
            self._metrics = ServingMetrics(tuple(self.options.latency_buckets))
            for status in getattr(self.manager, "statuses", []):  # a zero series per loaded plugin
                if status.state == "loaded":
                    self._metrics.plugin_errors.labels(status.name)
            self._start_worker()  # it flushes the tallies and counts plugin errors
        return self._metrics

    # -- hooks -------------------------------------------------------------------------------

    @hookimpl
    def lockgate_check_startup(self, host: str, insecure: bool) -> Decision | None:
        if self.error is not None:
            return Decision.deny(f"refusing to start: {self.error}")
        return None

    @hookimpl
    def lockgate_service_level(self, model: str) -> ServiceLevel:
        slo = self.options.slo_for(model)
        return ServiceLevel(slo.latency_percentile, slo.latency_ms, slo.error_rate, slo.availability)

    @hookimpl
    def lockgate_build_baseline(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
        return build_baseline(inputs, outputs, bins=self.options.drift.bins)

    @hookimpl
    def lockgate_observe_inference(self, event: InferenceEvent) -> None:
        if not self.options.metrics:
            return
        m = self.metrics
        if event.action != "infer":
            m.explanations.labels(event.model, "" if event.version is None else str(event.version), str(event.status)).inc()
            return
        m.add_request(event.model, "" if event.version is None else str(event.version), event.status, event.latency_s)
        if event.status in (401, 403):
            m.denials.labels(event.model, str(event.status)).inc()

    @hookimpl
    def lockgate_observe_batch(
        self,
        model: str,
        version: int,
        rows: int,
        requests: int,
        queue_s: float,
        compute_s: float,
        queued: int,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        if self.options.metrics:
            self.metrics.add_batch(model, str(version), queue_s, compute_s, rows, queued)
        drift = self.options.drift
        if not drift.enabled or not inputs or random.random() >= drift.sample_rate:
            return
        key = (model, version)
        known = self._baselines.get(key)
        if known is None or (known[0] is None and time.monotonic() > known[1]):
            self._baselines[key] = (None, time.monotonic() + drift.recheck_s)
            self._submit(("baseline", key))
            return
        if known[0] is None:
            return
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        # The batch buffers are reused by the next batch: keep copies of this batch's rows.
        for name, array in inputs.items():
            window.inputs.setdefault(name, []).append(np.array(array[:rows]))
        for name, array in outputs.items():
            window.outputs.setdefault(name, []).append(np.array(array[:rows]))
        window.rows += rows
        if window.rows >= drift.window_rows:
            del self._windows[key]
            if not self._submit(("window", (key, window))) and self.options.metrics:
                self.metrics.dropped.labels(model, str(version)).inc()

    # -- the worker thread -------------------------------------------------------------------

    def _start_worker(self) -> None:
        if self._stopping.is_set():
            return
        if self._worker is None or not self._worker.is_alive():
            if self._worker is None:
                atexit.register(self.close)
            self._worker = threading.Thread(target=self._run, name="lockgate-monitoring", daemon=True)
            self._worker.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker thread (at exit: a numpy call in a daemon thread must not outlive the
        interpreter), then write what the tallies still hold."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout)
        if self._metrics is not None:
            self._metrics.flush()

    def _submit(self, item: tuple[str, Any]) -> bool:
        self._start_worker()
        try:
            self._work.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _run(self) -> None:
        flushed = time.monotonic()
        while not self._stopping.is_set():
            try:
                kind, payload = self._work.get(timeout=self.options.flush_s)
            except queue.Empty:
                kind, payload = "", None
            try:
                if kind == "baseline":
                    self._load_baseline(*payload)
                elif kind == "window":
                    self.evaluate(*payload)
                if time.monotonic() - flushed >= self.options.flush_s:
                    flushed = time.monotonic()
                    self.flush()
            except LookupError as e:  # no registry here, or the version is gone
                log.warning("monitoring worker: %s failed: %s", kind or "flush", e)
            except Exception:
                log.exception("monitoring worker: %s failed", kind or "flush")

    def flush(self) -> None:
        """Write the tallies and the plugin error counts into the metric files now."""
        if self._metrics is not None:
            self._metrics.flush()
        self._count_plugin_errors()

    def _count_plugin_errors(self) -> None:
        if not self.options.metrics or self.manager is None:
            return
        for name, count in list(getattr(self.manager, "errors", {}).items()):
            seen = self._errors_seen.get(name, 0)
            if count > seen:
                self.metrics.plugin_errors.labels(name).inc(count - seen)
                self._errors_seen[name] = count

    def _load_baseline(self, model: str, version: int) -> None:
        registry = self.manager.registry()
        reference = registry.reference(model, version) if hasattr(registry, "reference") else None
        baseline = reference.baseline if reference is not None and reference.baseline.get("features") else None
        if baseline is not None:
            import scipy.special  # noqa: F401 - now, not in the middle of the first window (an import holds the GIL)
        self._baselines[(model, version)] = (
            None if baseline is None else prepare(baseline),
            time.monotonic() + self.options.drift.recheck_s,
        )
        if baseline is not None:
            log.info("drift baseline of %s version %s: %d features", model, version, len(baseline["features"]))

    def set_baseline(self, model: str, version: int, baseline: Mapping[str, Any]) -> None:
        """Use ``baseline`` for ``model``/``version`` in this process (tests, embedding)."""
        self._baselines[(model, version)] = (prepare(baseline), float("inf"))

    def evaluate(self, key: tuple[str, int], window: _Window) -> list[Any]:
        """Compare one full window with its baseline; set gauges; record threshold crossings."""
        model, version = key
        baseline = self._baselines.get(key, (None, 0.0))[0]
        if baseline is None:
            return []
        values = columns({k: np.concatenate(v) for k, v in window.inputs.items()})
        values.update(output_columns({k: np.concatenate(v) for k, v in window.outputs.items()}))
        results = compare(baseline, values)
        if not results:
            return results
        self.windows_compared += 1
        worst = max(results, key=lambda r: r.psi)
        threshold = self.options.drift.psi_threshold
        over = worst.psi > threshold
        if self.options.metrics:
            m, v = self.metrics, str(version)
            for r in results:
                m.psi.labels(model, v, r.feature).set(r.psi)
                (m.ks if r.kind == "numeric" else m.chi2).labels(model, v, r.feature).set(r.pvalue)
                if r.js is not None:
                    m.js.labels(model, v, r.feature).set(r.js)
            m.max_psi.labels(model, v).set(worst.psi)
            m.detected.labels(model, v).set(1.0 if over else 0.0)
            m.windows.labels(model, v).inc()
            if over and not self._alerting.get(key, False):
                m.alerts.labels(model, v).inc()
        was = self._alerting.get(key, False)
        self._alerting[key] = over
        if over != was:
            top = sorted(results, key=lambda r: r.psi, reverse=True)[:5]
            detail = {
                "max_psi": round(worst.psi, 4),
                "threshold": threshold,
                "window_rows": window.rows,
                "features": {r.feature: round(r.psi, 4) for r in top},
            }
            if over:
                log.warning("drift: %s version %s, PSI %.3f > %.3f (%s)", model, version, worst.psi, threshold, worst.feature)
            else:
                log.info("drift cleared: %s version %s, PSI %.3f", model, version, worst.psi)
            self.manager.audit(
                "drift_detected" if over else "drift_cleared", "lockgate", model=model, version=version, detail=detail
            )
        return results


plugin = MonitoringPlugin()
