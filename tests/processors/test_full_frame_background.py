"""A full-frame ROI (the auto ROI's fallback, or `--roi` of the whole frame) keeps the background subtraction on."""
import h5py
import numpy as np

from opmon.processors.offline import ProcessOptions, process_file

from tests.processors.raw_frames import write_frames

RATE = 0.02     # counts per pixel per frame: enough that despeckle-free sums feel it


def _map(path, n_side=4, angles=5):
    """Peaks in one corner of the frame (the background pulls their centre of mass toward the middle)
    at map pixels 0..3 only: the other map points see background alone."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:40, :48]
    index = np.repeat(np.arange(n_side * n_side), angles)
    eta = np.tile(np.linspace(18.95, 19.05, angles), n_side * n_side)
    frames = np.empty((index.size, 40, 48), dtype=np.uint32)
    for f, i in enumerate(index):
        lam = np.full((40, 48), RATE)
        if i < 4:
            lam += 40.0 * np.exp(-0.5 * ((rows - 8 - i) ** 2 + (cols - 10) ** 2) / 2.0 ** 2)
        frames[f] = rng.poisson(lam)
    return write_frames(path, frames, index, eta, (n_side, n_side))


def _maps(raw, out, background):
    process_file(raw, out, ProcessOptions(roi=None, background=background, despeckle=False))
    with h5py.File(out, "r") as f:
        return f["entry/maps/d_spacing"][()], float(f["entry/maps"].attrs["background_rate"])


def test_the_full_frame_measures_the_background_from_map_points_off_the_particle(tmp_path):
    raw = _map(tmp_path / "raw.h5")
    d_auto, rate = _maps(raw, tmp_path / "auto.h5", "auto")
    d_true, _ = _maps(raw, tmp_path / "true.h5", RATE)
    d_none, _ = _maps(raw, tmp_path / "none.h5", None)
    assert abs(rate - RATE) < 0.1 * RATE, rate
    peaks = np.isfinite(d_true)
    assert peaks.sum() >= 4
    err_auto = np.nanmax(np.abs(d_auto - d_true)[peaks])
    err_none = np.nanmax(np.abs(d_none - d_true)[peaks])
    assert err_auto < 0.2 * err_none, (err_auto, err_none)
