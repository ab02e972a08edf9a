"""The built-in monitoring plugin (entry point ``monitoring``): Prometheus metrics and drift.

Metrics are written by every process into the node's multiprocess folder and read by one
scrape (``/metrics``); drift compares sampled windows of inputs and predictions with the
reference baseline stored with each version (``lockgate models reference``).
"""

from ._drift import FeatureDrift, build_baseline, columns, compare, output_columns, psi
from ._metrics import LATENCY_BUCKETS, ServingMetrics
from ._plugin import LOCKGATE_PLUGIN_API, DriftOptions, MonitoringOptions, MonitoringPlugin, Slo, plugin

__all__ = [
    "LATENCY_BUCKETS",
    "LOCKGATE_PLUGIN_API",
    "DriftOptions",
    "FeatureDrift",
    "MonitoringOptions",
    "MonitoringPlugin",
    "ServingMetrics",
    "Slo",
    "build_baseline",
    "columns",
    "compare",
    "output_columns",
    "plugin",
    "psi",
]
