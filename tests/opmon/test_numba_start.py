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


WARM = """
import numpy as np
from opmon.streaming.archive.frames import decode_bslz4
decode_bslz4(np.zeros(3, np.uint8), np.zeros(8, np.uint8), 4)  # in numba's disk cache after this, whatever the order of tests
"""

LIGHT = """
import sys
from opmon.numba_start import load_cached_kernels_without_refresh
assert load_cached_kernels_without_refresh()
import numpy as np
from opmon.streaming.archive.frames import decode_bslz4
assert decode_bslz4(np.zeros(3, np.uint8), np.zeros(8, np.uint8), 4) == -10  # a cached kernel that allocates (NRT)
print(sum(decode_bslz4.stats.cache_hits.values()), "numba.typed.typeddict" in sys.modules, "numba.np.arraymath" in sys.modules)
sys.path.insert(0, sys.argv[1])
from fresh_kernel import twice   # cache=True, but a new file: a cache miss, compiled
print(twice(21), "numba.typed.typeddict" in sys.modules, "scipy.linalg" in sys.modules)  # registries refreshed, no BLAS
"""

FRESH_KERNEL = """
import numba


@numba.njit(cache=True)
def twice(x):
    return 2 * x
"""


def test_cached_kernels_load_without_numba_compiler_registries_and_a_new_kernel_still_compiles(tmp_path):
    (tmp_path / "fresh_kernel.py").write_text(FRESH_KERNEL)
    for script in (WARM, LIGHT):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    # the cached kernel came from the disk cache without numba's typed containers' registry (one of
    # those its full refresh imports) nor its array math; compiling `twice` then refreshed as numba
    # always does, with scipy's BLAS still hidden
    assert out.stdout.split() == ["1", "False", "False", "42", "True", "False"]


START_UP = """
import sys
from opmon.commands.process import start_up_imports
start_up_imports()
print(" ".join(sorted(m for m in ("scipy.special", "scipy.ndimage", "scipy.optimize", "skimage") if m in sys.modules)))
"""


def test_opmon_process_start_up_imports_no_scipy_module_a_plain_map_does_not_use():
    """`opmon process` with `--powder-spots off --register off` and no peak fit needs no scipy.special (0.09 s),
    ndimage (~0.1 s with scipy's array-API shim), optimize or skimage: each is imported where it is used."""
    out = subprocess.run([sys.executable, "-c", START_UP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


SPOTLESS_MAP = """
import sys
from pathlib import Path
from opmon.commands.process import start_up_imports
start_up_imports()
from opmon.processors.offline import ProcessOptions, process_file
before = set(sys.modules)
process_file(Path(sys.argv[1]) / "raw.h5", Path(sys.argv[1]) / "maps.h5", ProcessOptions(), force=True)
print(" ".join(sorted(m for m in ("scipy.ndimage", "scipy.special", "skimage", "numba.np.arraymath")
                      if m in sys.modules and m not in before)))
"""


def test_the_default_robust_steps_on_a_map_without_spots_or_drift_import_no_scipy_ndimage(tmp_path):
    """With the defaults (`--powder-spots auto --register tilt`) a map whose search finds no candidate spot and
    whose registration is declined (the bench map's kind) needs no scipy.ndimage: its import (~0.15 s with
    scipy's array-API layer) was a fifth of `opmon bench process`'s whole command. Nor does a kernel loaded from
    numba's cache import numba's array math (a numpy reduction inside a kernel did: ~0.25 s per run). The first
    run fills numba's cache (a miss compiles, and may import anything); the second is the one checked."""
    from opmon.benchmarks.bench_process import SIM_ROI
    from opmon.commands.simulate import simulate
    simulate(tmp_path / "raw.h5", ny=6, nx=7, angles=9, roi=SIM_ROI, progress=False)
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SPOTLESS_MAP, str(tmp_path)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []
