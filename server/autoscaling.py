"""Replica autoscaling on the load lockgate itself counts.

A model replica answers on its own listener (docs/ingress.md), so Serve's count of ongoing
requests per replica, the input of its default autoscaling policy, stays near zero. Instead
each replica reports, through Serve's custom autoscaling metrics (``record_autoscaling_stats``),
the time-average number of requests it held (received and not yet answered: decoding, queued
in the batcher, running, being recorded) since its previous report; ``policy`` turns the sum
over replicas into a replica count with the same rule as Serve's default policy:
``ongoing / target_ongoing_requests``. Serve's wrapper around every policy still applies the
upscale and downscale delays, the scaling factors and min/max replicas.

This module is imported by Serve's controller (the policy is shipped by value), so it imports
nothing of lockgate's.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ONGOING", "LoadMeter", "policy"]

# The custom metric's name, as replicas report it and the policy reads it.
ONGOING = "lockgate_ongoing_requests"


class LoadMeter:
    """The number of requests in a replica and its time-average between two ``report`` calls.

    ``enter``/``leave`` cost one clock read and a few float operations each."""

    __slots__ = ("_area", "_last", "_since", "ongoing")

    def __init__(self) -> None:
        self.ongoing = 0
        now = time.monotonic()
        self._last = now  # when ``ongoing`` last changed
        self._since = now  # start of the current report period
        self._area = 0.0  # integral of ``ongoing`` over the period, up to ``_last``

    def enter(self) -> None:
        now = time.monotonic()
        self._area += self.ongoing * (now - self._last)
        self._last = now
        self.ongoing += 1

    def leave(self) -> None:
        now = time.monotonic()
        self._area += self.ongoing * (now - self._last)
        self._last = now
        self.ongoing -= 1

    def report(self) -> float:
        """Average number of requests held since the previous report; starts a new period."""
        now = time.monotonic()
        area = self._area + self.ongoing * (now - self._last)
        elapsed = now - self._since
        self._area, self._last, self._since = 0.0, now, now
        return area / elapsed if elapsed > 0 else float(self.ongoing)


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
