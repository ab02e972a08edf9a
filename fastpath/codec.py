"""The tensor codec: the compiled module or its pure-Python twin, as ``_select`` chose.

``IMPLEMENTATION`` says which one this process loaded.
"""

from __future__ import annotations

from ._common import DATATYPES, CodecError, Datatype, datatype, element_count
from ._select import CODEC as IMPLEMENTATION
from ._select import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

__all__ = [
    "DATATYPES",
    "IMPLEMENTATION",
    "CodecError",
    "Datatype",
    "datatype",
    "decode_binary",
    "decode_json_data",
    "element_count",
    "encode_binary",
    "encode_json_data",
    "parse_json",
]
