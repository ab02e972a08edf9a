"""Canonical JSON (the text the audit chain hashes): the compiled module or its twin, as
``_select`` chose."""

from __future__ import annotations

from ._select import CANONICAL as IMPLEMENTATION
from ._select import canonical_json

__all__ = ["IMPLEMENTATION", "canonical_json"]
