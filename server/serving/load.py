"""The number of requests a replica holds, time-averaged: the load autoscaling acts on
(``lockgate.server.hosting.autoscaling``)."""

from __future__ import annotations

import time

__all__ = ["LoadMeter"]


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
