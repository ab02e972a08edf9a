"""Batch assembly with fused preprocessing: the compiled module or its numpy twin, as ``_select`` chose."""

from __future__ import annotations

from ._select import ASSEMBLE as IMPLEMENTATION
from ._select import assemble_into, check_preprocess

__all__ = ["IMPLEMENTATION", "assemble_into", "check_preprocess"]
