"""Offline work that no replica imports: repository import, reference samples, the SLO report,
the demo models."""

from __future__ import annotations

__all__: list[str] = []
