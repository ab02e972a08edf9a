# Type stub of the compiled batch assembly (_assemble.pyx); its twin is _assemble_py.py.
import numpy as np

__all__ = ["assemble_into", "check_preprocess"]

def check_preprocess(
    out: np.ndarray, src: np.ndarray, scale: np.ndarray | None, shift: np.ndarray | None, hwc_to_chw: bool
) -> int: ...
def assemble_into(
    out: np.ndarray,
    offset: int,
    src: np.ndarray,
    scale: np.ndarray | None = None,
    shift: np.ndarray | None = None,
    hwc_to_chw: bool = False,
) -> None: ...
