"""Start numba without scipy's BLAS: a third of a second less before the first cached kernel runs.

When numba first loads a compiled (even disk-cached) function it imports its array-math
registry, which checks whether numba's `np.dot`/`@`/`np.linalg` can work by importing
`scipy.linalg.cython_blas`, and with it all of `scipy.linalg` (~0.3 s warm, more on a loaded
machine): about as long as `opmon process` spends decoding a 17,000-frame map. opmon's
kernels never use numba's BLAS-backed functions (processors/kernels.py writes its 3x3
products by hand), so a command that only runs opmon's kernels can let numba record "no
BLAS" instead. scipy stays importable for everything else afterwards.
"""
from __future__ import annotations

import sys

BLAS_MODULE = "scipy.linalg.cython_blas"


def import_numba_without_blas() -> None:
    """Import numba's array-math registry with scipy's BLAS hidden; a no-op once it is imported."""
    if "numba.np.arraymath" in sys.modules:
        return
    hidden = BLAS_MODULE not in sys.modules
    if hidden:
        sys.modules[BLAS_MODULE] = None  # type: ignore[assignment]  # makes `import` raise ImportError
    try:
        import numba.np.arraymath  # noqa: F401  (numba's registry, loaded now with "no BLAS")
    finally:
        if hidden:
            del sys.modules[BLAS_MODULE]
