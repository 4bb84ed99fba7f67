"""Small raw SXDM files written through the public layout writer."""
import h5py
import numpy as np
import pytest

from opmon.streaming.archive.raw import RawMapWriter

SHAPE = (40, 48)


def write_raw(path, n_side=3, angles=6, seed=0, intensity=50.0, **overrides):
    """A map of n_side² pixels whose peak moves with the pixel, background 1e-3."""
    rng = np.random.default_rng(seed)
    n = n_side * n_side * angles
    index = np.repeat(np.arange(n_side * n_side), angles)
    eta = np.tile(np.linspace(18.9, 19.1, angles), n_side * n_side)
    frames = (rng.random((n,) + SHAPE) < 1e-3).astype(np.uint32)
    for f in range(n):
        r, c = 15 + index[f] % n_side, 20 + index[f] // n_side
        frames[f, r - 2:r + 3, c - 2:c + 3] += rng.poisson(intensity, (5, 5)).astype(np.uint32)
    with h5py.File(path, "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=SHAPE, dtype=np.uint32, energy_ev=10000.0, distance_m=1.6,
                         pixel_size_m=(55e-6, 55e-6), beam_center=(200.0, 24.0), map_shape=(n_side, n_side))
        w.append(frames, index, eta, 0.0, 0.0, 35.0)
        for path_, value in overrides.items():
            del f[path_]
            f[path_] = value
    return path


@pytest.fixture
def make_raw():
    return write_raw


@pytest.fixture
def raw_file(tmp_path):
    return write_raw(tmp_path / "raw.h5")
