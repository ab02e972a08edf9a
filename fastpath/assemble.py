"""Batch assembly with fused preprocessing: the compiled module, or its numpy twin."""

from __future__ import annotations

import os

if os.environ.get("LOCKGATE_NO_EXTENSIONS", "") not in ("", "0"):
    from ._assemble_py import assemble_into, check_preprocess

    IMPLEMENTATION = "python"
else:
    try:
        from ._assemble import assemble_into, check_preprocess

        IMPLEMENTATION = "cython"
    except ImportError:  # source checkout without a build
        from ._assemble_py import assemble_into, check_preprocess

        IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "assemble_into", "check_preprocess"]
