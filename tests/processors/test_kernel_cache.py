"""The kernels are compiled once per installation, not once per process: numba writes them to its
on-disk cache (`cache=True`) and a second process loads them from there. The cache directory is
numba's choice: NUMBA_CACHE_DIR when set (used here, so the test starts from an empty cache),
else a `__pycache__` beside the source, else, when the installation is read-only, the user's
cache directory (~/.cache/numba)."""
import json
import os
import subprocess
import sys

KERNELS = ("kernels.accumulate_block", "kernels.frame_moments", "kernels_rows.accumulate_block_rows")

PROBE = f"""
import json
import numpy as np
from opmon.processors import kernels, kernels_rows
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
geometry = DetectorGeometry(10000.0, 1.0, (5.5e-5, 5.5e-5), (0.0, 0.0), (16, 16))
for exact in (False, True):   # the fast kernel (the default) and the exact one
    MomentAccumulator(geometry, (1, 1), roi=(4, 12, 4, 12), exact_kernel=exact).process_block(
        np.ones((2, 16, 16), np.uint16), [0, 0], 19.0, 0.0, 0.0, 30.0)
modules = {{"kernels": kernels, "kernels_rows": kernels_rows}}
stats = {{name: getattr(modules[name.split(".")[0]], name.split(".")[1]).stats for name in {KERNELS!r}}}
print(json.dumps({{name: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for name, s in stats.items()}}))
"""


def hits_and_misses(cache_dir) -> dict[str, list[int]]:
    """Run the probe in a fresh process; per kernel, how many signatures came from the cache and how many were compiled."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_second_process_loads_the_kernels_from_the_disk_cache_instead_of_compiling(tmp_path):
    first = hits_and_misses(tmp_path)
    assert all(misses > 0 for _, misses in first.values()), first          # an empty cache: compiled
    written = {p.name.split("-")[0] for p in tmp_path.rglob("*.nbi")}
    assert set(KERNELS) <= written, written    # and written to disk
    second = hits_and_misses(tmp_path)
    assert all(hits > 0 and misses == 0 for hits, misses in second.values()), second
