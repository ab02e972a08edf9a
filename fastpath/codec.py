"""The tensor codec: the compiled module, or its pure-Python twin.

``LOCKGATE_NO_EXTENSIONS=1`` selects the twin; so does a build without the
extension. ``IMPLEMENTATION`` says which one this process loaded.
"""

from __future__ import annotations

import os

from ._common import DATATYPES, CodecError, Datatype, datatype, element_count

if os.environ.get("LOCKGATE_NO_EXTENSIONS", "") not in ("", "0"):
    from ._codec_py import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

    IMPLEMENTATION = "python"
else:
    try:
        from ._codec import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

        IMPLEMENTATION = "cython"
    except ImportError:  # source checkout without a build
        from ._codec_py import decode_binary, decode_json_data, encode_binary, encode_json_data, parse_json

        IMPLEMENTATION = "python"

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
