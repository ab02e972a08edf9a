"""Batch assembly with fused preprocessing: the compiled module, or its numpy twin (``_select`` picks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # both twins have these names and signatures (_assemble.pyi is the compiled one's)
    from ._assemble import assemble_into, check_preprocess

    IMPLEMENTATION: str
else:
    from ._select import load

    _module, IMPLEMENTATION = load("_assemble", "_assemble_py")
    assemble_into = _module.assemble_into
    check_preprocess = _module.check_preprocess

__all__ = ["IMPLEMENTATION", "assemble_into", "check_preprocess"]
