"""The tensor codec: the compiled module, or its pure-Python twin (``_select`` picks).

``IMPLEMENTATION`` says which one this process loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._common import DATATYPES, CodecError, Datatype, datatype, element_count

if TYPE_CHECKING:  # both twins have these names and signatures (_codec.pyi is the compiled one's)
    from ._codec import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

    IMPLEMENTATION: str
else:
    from ._select import load

    _module, IMPLEMENTATION = load("_codec", "_codec_py")
    decode_binary = _module.decode_binary
    decode_json_data = _module.decode_json_data
    encode_binary = _module.encode_binary
    encode_json_data = _module.encode_json_data
    parse_json = _module.parse_json

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
