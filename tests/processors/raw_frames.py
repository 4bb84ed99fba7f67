"""Write given frames into a FORMATS.md raw map (the tests' own peaks, through the public layout writer)."""
import h5py
import numpy as np

from opmon.streaming.archive.raw import RawMapWriter


def write_frames(path, frames, index, eta, map_shape):
    """`frames` (k, 40, 48) uint32 of map pixels `index` at `eta`, detector at delta 35°, into `path`."""
    with h5py.File(path, "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=frames.shape[1:], dtype=np.uint32, energy_ev=10000.0,
                         distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(200.0, 24.0), map_shape=map_shape)
        w.append(frames, index, eta, 0.0, 0.0, 35.0)
    return path
