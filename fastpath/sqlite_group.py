"""Appending a group of rows to SQLite as one transaction (the audit log's writer): the compiled
module or its twin, as ``_select`` chose."""

from __future__ import annotations

from ._select import SQLITE_GROUP as IMPLEMENTATION
from ._select import GroupWriter

__all__ = ["IMPLEMENTATION", "GroupWriter"]
