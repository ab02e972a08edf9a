"""Prometheus metrics across processes: every replica writes, one scrape reads them all.

Each lockgate process on a node (model replicas, the control replica) keeps its metric values
in memory-mapped files of prometheus-client's multiprocess mode, in one folder per node
(``LOCKGATE_HOME/metrics`` unless the server configuration's ``metrics.dir`` says otherwise;
``LockgateSettings.metrics_dir``). A scrape merges the files
of every process, live or gone: counters and histograms keep what a replica that Ray restarted
had counted, so totals never go back; gauges of processes that are gone are dropped first.
``/metrics`` on the ingress (the control application) and ``lockgate metrics`` (one exporter
per node of a cluster) both answer with ``collect``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CONTENT_TYPE", "collect", "enable", "replica_started", "reset", "shadow_observer", "shadow_unreported"]

log = logging.getLogger("lockgate.server")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LIVE_FILE = re.compile(r"^gauge_(?:live\w*)_(\d+)\.db$")
_replicas: Any = None
_shadow: Any = None
_unreported: Any = None


def enable(directory: str) -> bool:
    """Switch this process to multiprocess metric values in ``directory``. Call before any
    metric is made (replica constructors do, before building their plugin manager). False
    when the process already made metrics of its own kind (a test process): they stay local."""
    from prometheus_client import values

    Path(directory).mkdir(parents=True, exist_ok=True)
    current = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if getattr(values.ValueClass, "_multiprocess", False):
        if current != directory:
            log.warning("metrics already go to %s, not %s", current, directory)
        return current == directory
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    return True


def reset(directory: str) -> None:
    """Start a server with empty metrics and statistics: remove the files a previous run left."""
    for path in glob.glob(os.path.join(directory, "*.db")) + glob.glob(os.path.join(directory, "statistics", "*.json")):
        os.remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(directory: str) -> bytes:
    """The text exposition of every process's metrics in ``directory``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.path.isdir(directory):
        return b""
    for name in os.listdir(directory):
        match = _LIVE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def replica_started(model: str) -> None:
    """Count this process as a live replica of ``model`` (``lockgate_replicas``)."""
    global _replicas
    from prometheus_client import CollectorRegistry, Gauge

    if _replicas is None:
        _replicas = Gauge(
            "lockgate_replicas",
            "Live replicas of each model.",
            ["model"],
            multiprocess_mode="livesum",
            registry=CollectorRegistry(),
        )
    _replicas.labels(model).set(1)


def shadow_observer(model: str, version: int) -> Any:
    """What a shadow replica counts of each copy it compared (lockgate.server.serving.shadow):
    ``lockgate_shadow_copies_total`` by outcome (compared, error, dropped),
    ``lockgate_shadow_rows_total`` by class agreement, ``lockgate_shadow_model_seconds`` of each
    side (queue and compute), all labelled with the model, the shadow version and the production
    version it was compared with."""
    global _shadow
    from prometheus_client import CollectorRegistry, Counter, Histogram

    if _shadow is None:
        registry = CollectorRegistry()
        labels = ["model", "version", "baseline"]
        _shadow = (
            Counter(
                "lockgate_shadow_copies",
                "Copies of production's requests a shadow got, by outcome.",
                [*labels, "outcome"],
                registry=registry,
            ),
            Counter(
                "lockgate_shadow_rows",
                "Rows a shadow compared, by predicted-class agreement.",
                [*labels, "agreement"],
                registry=registry,
            ),
            Histogram(
                "lockgate_shadow_model_seconds",
                "Model time (queue and compute) of the copies a shadow compared, per side.",
                [*labels, "side"],
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                registry=registry,
            ),
        )
    copies, rows, seconds = _shadow
    shadow = str(version)

    def observe(tally: Any) -> None:
        baseline = str(tally.baseline)
        for outcome, n in (("compared", tally.compared), ("error", tally.errors), ("dropped", tally.dropped)):
            if n:
                copies.labels(model, shadow, baseline, outcome).inc(n)
        if tally.classified:
            rows.labels(model, shadow, baseline, "agreed").inc(tally.agreed)
            rows.labels(model, shadow, baseline, "disagreed").inc(tally.classified - tally.agreed)
        shadow_side, production_side = (
            seconds.labels(model, shadow, baseline, "shadow"),
            seconds.labels(model, shadow, baseline, "production"),
        )
        for s, b in zip(tally.shadow_s, tally.baseline_s):
            shadow_side.observe(s)
            production_side.observe(b)

    return observe


def shadow_unreported(model: str) -> Callable[[int, int], None]:
    """What a production replica of ``model`` counts of the copies it lets go without telling the
    shadow (its run ended, or the replica stopped, with copies queued or dropped since its last
    call): ``lockgate_shadow_unreported_copies_total`` by model and shadow version. The shadow's
    own ``lockgate_shadow_copies_total`` cannot count them: it never hears of them."""
    global _unreported
    from prometheus_client import CollectorRegistry, Counter

    if _unreported is None:
        _unreported = Counter(
            "lockgate_shadow_unreported_copies",
            "Copies of production's requests a production replica let go without telling the shadow "
            "(the run ended or the replica stopped with them queued or dropped since its last call).",
            ["model", "version"],
            registry=CollectorRegistry(),
        )
    counter = _unreported

    def count(version: int, copies: int) -> None:
        counter.labels(model, str(version)).inc(copies)

    return count
