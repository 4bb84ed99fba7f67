"""`opmon process` starts numba without importing scipy.linalg, and scipy stays usable after."""
from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
from opmon.numba_start import import_numba_without_blas
import_numba_without_blas()
import numpy as np
from opmon.streaming.archive.frames import decode_bslz4
assert decode_bslz4(np.zeros(3, np.uint8), np.zeros(8, np.uint8), 4) == -10  # a kernel from numba's cache runs
print("scipy.linalg" in sys.modules)
import scipy.linalg.cython_blas  # hidden only while numba started
print("ok")
"""


def test_numba_starts_without_scipy_blas_and_scipy_stays_importable():
    pytest.importorskip("scipy.linalg")  # numba looks for scipy's BLAS only when scipy is there
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "ok"]
