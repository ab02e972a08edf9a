"""The one place that picks which implementation of the kernels a process loads.

Each kernel module is compiled (``_codec.pyx``, ``_assemble.pyx``, ``_canonical.pyx``) and has a
pure-Python twin of the same names (``_codec_py.py``, ``_assemble_py.py``, ``_canonical_py.py``). The compiled one loads, unless
``LOCKGATE_NO_EXTENSIONS`` is set (not '' or '0') or it was not built (a source checkout); then
the twin does. ``codec``, ``assemble`` and ``canonical`` re-export what is chosen here; type checkers see the
compiled modules' ``.pyi`` stubs. Tests compare both twins and assert which one CI loaded.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "ASSEMBLE",
    "CANONICAL",
    "CODEC",
    "assemble_into",
    "canonical_json",
    "check_preprocess",
    "decode_binary",
    "decode_json_data",
    "encode_binary",
    "encode_json_data",
    "parse_json",
    "twins_requested",
]


def twins_requested() -> bool:
    """True when LOCKGATE_NO_EXTENSIONS asks for the pure-Python twins."""
    return os.environ.get("LOCKGATE_NO_EXTENSIONS", "") not in ("", "0")


def _load(compiled: str, twin: str) -> tuple[ModuleType, str]:
    if not twins_requested():
        try:
            return importlib.import_module(f"{__package__}.{compiled}"), "cython"
        except ImportError:  # source checkout without a build
            pass
    return importlib.import_module(f"{__package__}.{twin}"), "python"


if TYPE_CHECKING:
    from ._assemble import assemble_into, check_preprocess
    from ._canonical import canonical_json
    from ._codec import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

    CODEC: str  # "cython" or "python": which codec loaded
    ASSEMBLE: str  # the same for batch assembly
    CANONICAL: str  # and for canonical JSON
else:
    _codec, CODEC = _load("_codec", "_codec_py")
    _assemble, ASSEMBLE = _load("_assemble", "_assemble_py")
    decode_binary = _codec.decode_binary
    decode_json_data = _codec.decode_json_data
    encode_binary = _codec.encode_binary
    encode_json_data = _codec.encode_json_data
    parse_json = _codec.parse_json
    assemble_into = _assemble.assemble_into
    check_preprocess = _assemble.check_preprocess
    _canonical, CANONICAL = _load("_canonical", "_canonical_py")
    canonical_json = _canonical.canonical_json
