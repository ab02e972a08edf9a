"""What every replica's constructor does first (model, pool, shadow and control replicas)."""

from __future__ import annotations

from ..serving import tracing
from ..serving.logs import configure as configure_logs
from ..serving.settings import LockgateSettings, replica_options, tune_replica
from . import metrics

__all__ = ["start_replica"]


def start_replica(settings: LockgateSettings, *, traced: bool = True) -> str:
    """In this order: the process's logs, its garbage collector (the configuration's ``replica``
    section), OpenTelemetry when LOCKGATE_TRACING says so (``traced``: a replica that serves
    clients' requests), and the node's metric files, before any plugin makes a metric. Returns
    the node's metrics folder."""
    configure_logs(settings.log_format, access=settings.access_log)
    tune_replica(replica_options(settings.options))
    if traced:
        tracing.setup()
    directory = settings.metrics_dir
    metrics.enable(directory)
    return directory
