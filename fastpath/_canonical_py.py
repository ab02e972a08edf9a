"""Canonical JSON, the pure-Python twin of ``_canonical.pyx``: sorted keys, no spaces, UTF-8
kept, NaN refused. One encoder for every call (``json.dumps`` with these options builds a new
one each time)."""

from __future__ import annotations

import json

__all__ = ["MAX_DEPTH", "canonical_json"]

MAX_DEPTH = 64  # the compiled module's limit; this twin has only the interpreter's

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(obj: object) -> str:
    """``obj`` as canonical JSON (ValueError for NaN, an infinity or a circular reference;
    TypeError for what JSON cannot hold)."""
    return _ENCODER.encode(obj)
