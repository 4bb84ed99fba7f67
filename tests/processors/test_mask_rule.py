"""The mask rule is robust to outliers (issue 13 item 1): a bright level, not the single maximum."""
import h5py
import numpy as np

from opmon.processors.offline import process_file
from tests.processors.conftest import simulate_effect as simulate


def test_one_flashing_map_point_does_not_mask_the_particle(tmp_path, monkeypatch):
    """Issue 13: the mask's 20 % was of the single brightest map pixel, so one outlier masked the map."""
    import hdf5plugin  # noqa: F401  (the simulator's frames are compressed)

    from opmon.processors import maps as maps_module

    raw = simulate(tmp_path, "flash", "none")
    with h5py.File(raw, "r+") as f:
        data, index = f["entry/instrument/detector/data"], f["entry/scan/map_index"][()]
        frames = np.flatnonzero(index == int(np.argmax(f["entry/truth/intensity"][()])))
        block = data[frames]                           # that map point's frames (not contiguous: eta-outer)
        r, c = np.unravel_index(np.argmax(block.sum(axis=0)), block.shape[1:])
        block[:, r - 2:r + 3, c - 2:c + 3] += 400      # a flash on the peak at one map point: ~10x its Σ I
        for i, frame in zip(frames, block):
            data[i] = frame
        true_mask = f["entry/truth/mask"][()] > 0

    def agreement(name):
        mask = process_file(raw, tmp_path / f"{name}.h5")["entry"].mask > 0
        return (mask & true_mask).sum() / (mask | true_mask).sum()

    robust = agreement("robust")
    monkeypatch.setattr(maps_module, "MASK_RANK", 1)   # the old rule: 20 % of the single maximum
    assert robust > 0.9 and agreement("maximum") < 0.5
