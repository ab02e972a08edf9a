# Type stub of the compiled canonical JSON (_canonical.pyx); its twin is _canonical_py.py.

__all__ = ["MAX_DEPTH", "canonical_json"]

MAX_DEPTH: int

def canonical_json(obj: object) -> str: ...
