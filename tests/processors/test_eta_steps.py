"""Registration needs eta scans: frames whose eta is read back per frame (jitter) or swept through the map are
not registered (one scan slot per frame made `opmon process` ~40x slower on `opmon bench process`'s end-to-end
file, 3,000 frames of a 40 x 40 map each at its own eta)."""
import numpy as np

from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.eta_scans import EtaScanAccumulator, holds_eta_scans
from opmon.processors.offline import ProcessOptions, new_accumulator
from opmon.streaming.archive.sources import open_source

from tests.processors.raw_frames import write_frames


def test_eta_scans_are_told_from_eta_per_frame():
    grid = np.repeat(18.4 + 0.016 * np.arange(10), 64)                 # 10 eta scans of a 8 x 8 map
    assert holds_eta_scans(grid, 64)
    assert holds_eta_scans(grid + np.random.default_rng(0).normal(0, 1e-7, grid.size), 64)   # below 1e-5 deg
    assert not holds_eta_scans(grid + np.random.default_rng(0).normal(0, 1e-3, grid.size), 64)  # read back per frame
    assert not holds_eta_scans(np.linspace(18.7, 19.3, 640), 64)      # swept


def test_a_map_without_eta_scans_is_accumulated_unregistered(tmp_path):
    n, pixels = 200, 16
    frames = np.zeros((n, 8, 8), dtype=np.uint32)
    index = np.arange(n) % pixels
    swept = write_frames(tmp_path / "swept.h5", frames, index, np.linspace(18.7, 19.3, n), (4, 4))
    stepped = write_frames(tmp_path / "stepped.h5", frames, index, 18.7 + 0.01 * (np.arange(n) // pixels), (4, 4))
    options = ProcessOptions(register="tilt")
    kinds = []
    for raw in (swept, stepped):
        source = open_source(raw)
        try:
            kinds.append(type(new_accumulator(source.maps[0], options, (0, 8, 0, 8))))
        finally:
            source.close()
    assert kinds == [MomentAccumulator, EtaScanAccumulator]
