"""The one place that picks which implementation of each kernel module a process loads.

The compiled module, unless ``LOCKGATE_NO_EXTENSIONS`` is set (not '' or '0') or it was not
built (a source checkout); then its pure-Python twin of the same names. ``codec`` and
``assemble`` ask here; tests compare both twins and assert which one CI loaded.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load", "twins_requested"]


def twins_requested() -> bool:
    """True when LOCKGATE_NO_EXTENSIONS asks for the pure-Python twins."""
    return os.environ.get("LOCKGATE_NO_EXTENSIONS", "") not in ("", "0")


def load(compiled: str, twin: str) -> tuple[ModuleType, str]:
    """The module to use, ``compiled`` or ``twin`` (names inside lockgate.fastpath), and
    ``"cython"`` or ``"python"`` for which one it is."""
    if not twins_requested():
        try:
            return importlib.import_module(f"{__package__}.{compiled}"), "cython"
        except ImportError:  # source checkout without a build
            pass
    return importlib.import_module(f"{__package__}.{twin}"), "python"
