"""The one place that picks which implementation of the kernels a process loads.

Each kernel module is compiled (``_codec.pyx``, ``_assemble.pyx``, ``_canonical.pyx``,
``_sqlite_group.pyx``) and has a pure-Python twin of the same names (``_codec_py.py``,
``_assemble_py.py``, ``_canonical_py.py``, ``_sqlite_group_py.py``). The compiled one loads, unless
``LOCKGATE_NO_EXTENSIONS`` is set (not '' or '0') or it was not built (a source checkout, or a
machine without SQLite's library to link); then the twin does. The compiled group writer loads
only when it calls the very SQLite library the ``sqlite3`` module does: two copies of SQLite in one
process do not see each other's locks on a file. ``codec``, ``assemble``, ``canonical`` and
``sqlite_group`` re-export what is chosen here; type checkers see the compiled modules' ``.pyi``
stubs. Tests compare both twins and assert which one CI loaded.
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
    "SQLITE_GROUP",
    "GroupWriter",
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


def _load_sqlite_group() -> tuple[ModuleType, str]:
    module, chosen = _load("_sqlite_group", "_sqlite_group_py")
    twin = importlib.import_module(f"{__package__}._sqlite_group_py")
    if chosen == "cython" and module.library_address() != twin.library_address():
        return twin, "python"  # another copy of SQLite than the sqlite3 module's: never both in one process
    return module, chosen


if TYPE_CHECKING:
    from ._assemble import assemble_into, check_preprocess
    from ._canonical import canonical_json
    from ._codec import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json
    from ._sqlite_group import GroupWriter

    CODEC: str  # "cython" or "python": which codec loaded
    ASSEMBLE: str  # the same for batch assembly
    CANONICAL: str  # and for canonical JSON
    SQLITE_GROUP: str  # and for the SQLite group writer
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
    _sqlite_group, SQLITE_GROUP = _load_sqlite_group()
    GroupWriter = _sqlite_group.GroupWriter
