"""lockgate.fastpath: the latency-critical kernels, each compiled with a pure-Python twin.

``IMPLEMENTATION`` is ``"cython"`` when the compiled modules are loaded and
``"python"`` when the twins are (``LOCKGATE_NO_EXTENSIONS=1``, or no build).
"""

from .codec import (
    DATATYPES,
    IMPLEMENTATION,
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
