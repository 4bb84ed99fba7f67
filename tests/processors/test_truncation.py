"""Per-pixel truncation flags: a peak cut by the ROI is flagged, a whole one is not."""
import h5py
import numpy as np

from opmon.processors.geometry import DetectorGeometry
from opmon.processors.maps import FLAG_EDGE
from opmon.processors.offline import ProcessOptions, process_file
from opmon.processors.truncation import detector_position

from tests.processors.raw_frames import write_frames


def test_a_pixels_q_goes_back_to_the_pixel_it_came_from():
    geometry = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (-100.0, 30.0), (320, 192))
    pixels = np.array([[0, 0], [100, 50], [319, 191], [200, 120]])
    for eta, phi, nu, delta in [(19.0, 0.0, 0.0, 36.0), (18.7, 3.0, 1.5, 35.0)]:
        q = geometry.q_sample(eta, phi, nu, delta)[pixels[:, 0], pixels[:, 1]]
        np.testing.assert_allclose(detector_position(geometry, q, eta + 0.3, phi, nu, delta), pixels, atol=1e-6)


def _flags(raw, out, roi):
    process_file(raw, out, ProcessOptions(roi=roi, background=None))
    with h5py.File(out, "r") as f:
        maps = f["entry/maps"]
        return maps["flags"][()], maps["mask"][()].astype(bool)


def _gaussian_peaks(path, n_side=3, angles=6, sigma=2.0, counts=400.0):
    """Map pixel i's peak: a Gaussian of `sigma` px at row 16 + i % n, column 22 + i // n, rocking over eta."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:40, :48]
    index = np.repeat(np.arange(n_side * n_side), angles)
    eta = np.tile(np.linspace(18.95, 19.05, angles), n_side * n_side)
    rock = np.tile(np.exp(-0.5 * np.linspace(-1.5, 1.5, angles) ** 2), n_side * n_side)
    frames = np.empty((index.size, 40, 48), dtype=np.uint32)
    for f, (i, w) in enumerate(zip(index, rock)):
        r, c = 16 + i % n_side, 22 + i // n_side
        shape = np.exp(-0.5 * ((rows - r) ** 2 + (cols - c) ** 2) / sigma ** 2)
        frames[f] = rng.poisson(counts * w * shape / shape.sum())
    return write_frames(path, frames, index, eta, (n_side, n_side))


def test_peaks_cut_by_the_roi_are_flagged_and_whole_ones_are_not(tmp_path):
    raw = _gaussian_peaks(tmp_path / "raw.h5")             # peak centres: rows 16-18, columns 22-24
    whole, valid = _flags(raw, tmp_path / "whole.h5", (4, 30, 8, 38))
    assert valid.all() and not (whole & FLAG_EDGE).any(), whole
    cut, valid = _flags(raw, tmp_path / "cut.h5", (4, 30, 8, 24))    # ends within a width of every centre
    assert valid.any() and (cut[valid] & FLAG_EDGE).all(), cut
