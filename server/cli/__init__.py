"""The ``lockgate`` command line: one module per command group; plugins add theirs through
``lockgate_register_commands``."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
