"""lockgate.fastpath: the latency-critical kernels, each compiled with a pure-Python twin.

``IMPLEMENTATION`` is ``"cython"`` when every compiled module is loaded and ``"python"``
when the twins are (``LOCKGATE_NO_EXTENSIONS=1``, or no build).
"""

from . import assemble as _assemble_choice
from .assemble import assemble_into, check_preprocess
from .canonical import IMPLEMENTATION as _CANONICAL_IMPLEMENTATION
from .canonical import canonical_json
from .codec import (
    DATATYPES,
    CodecError,
    Datatype,
    datatype,
    decode_binary,
    decode_json_data,
    element_count,
    encode_binary,
    encode_json_data,
    parse_json,
)
from .codec import IMPLEMENTATION as _CODEC_IMPLEMENTATION
from .sqlite_group import IMPLEMENTATION as _SQLITE_GROUP_IMPLEMENTATION
from .sqlite_group import GroupWriter

IMPLEMENTATION = (
    "cython"
    if _CODEC_IMPLEMENTATION
    == _assemble_choice.IMPLEMENTATION
    == _CANONICAL_IMPLEMENTATION
    == _SQLITE_GROUP_IMPLEMENTATION
    == "cython"
    else "python"
)

__all__ = [
    "DATATYPES",
    "IMPLEMENTATION",
    "CodecError",
    "Datatype",
    "GroupWriter",
    "assemble_into",
    "canonical_json",
    "check_preprocess",
    "datatype",
    "decode_binary",
    "decode_json_data",
    "element_count",
    "encode_binary",
    "encode_json_data",
    "parse_json",
]
