"""Replica autoscaling on the load lockgate itself counts.

A model replica answers on its own listener (docs/ingress.md), so Serve's count of ongoing
requests per replica, the input of its default autoscaling policy, stays near zero. Instead
each replica reports, through Serve's custom autoscaling metrics (``record_autoscaling_stats``),
the time-average number of requests it held (received and not yet answered: decoding, queued
in the batcher, running, being recorded) since its previous report; ``policy`` turns the sum
over replicas into a replica count with the same rule as Serve's default policy:
``ongoing / target_ongoing_requests``. Serve's wrapper around every policy still applies the
upscale and downscale delays, the scaling factors and min/max replicas.

Each replica counts its load with ``lockgate.server.serving.load.LoadMeter``. This module is
imported by Serve's controller (the policy is shipped by value), so it imports nothing of
lockgate's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ONGOING", "policy"]

# The custom metric's name, as replicas report it and the policy reads it.
ONGOING = "lockgate_ongoing_requests"


def policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve autoscaling policy (``autoscaling_config.policy.policy_function``).

    Desired replicas = requests in the deployment / target per replica, where the requests are
    the sum of the replicas' ``lockgate_ongoing_requests`` (averaged by Serve over
    ``look_back_period_s``), or Serve's own count when that is higher: requests that reach a
    replica through Serve's proxy (the path HAProxy falls back to while a model has no replica)
    are counted there, and both count the same requests, so they are not added."""
    if ctx.current_num_replicas == 0:
        # Scale from zero: Serve's wrapper starts replicas when requests wait; nothing to add.
        return ctx.target_num_replicas, {}
    per_replica = (ctx.aggregated_metrics or {}).get(ONGOING) or {}
    ongoing = max(float(sum(per_replica.values())), float(ctx.total_num_requests or 0.0))
    return ongoing / ctx.config.get_target_ongoing_requests(), {}
