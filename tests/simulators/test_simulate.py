"""`opmon simulate` writes a raw map that the project's reader accepts, with its truth."""
from __future__ import annotations

import h5py
import numpy as np

from opmon.cli import main
from opmon.streaming.archive.raw import iter_frame_blocks, read_raw_meta
from opmon.simulators.optics import q_sample_area


def test_simulate_writes_a_valid_raw_file_with_truth(tmp_path, capsys):
    out = tmp_path / "raw.h5"
    rc = main(["simulate", "-o", str(out), "--ny", "8", "--nx", "8", "--angles", "10", "--eta-step", "0.06",
               "--roi", "156", "356", "156", "356", "--x-mean", "0.6", "--order", "point-outer",
               "--dtype", "uint16", "--block", "48", "--seed", "3", "-q"])
    assert rc == 0
    with h5py.File(out, "r") as f:
        meta = read_raw_meta(f["entry"])
        assert meta.n_frames == 8 * 8 * 10
        assert meta.frame_shape == (200, 200) and meta.frame_dtype == np.uint16
        assert meta.map_shape == (8, 8)
        assert meta.energy_ev == 10000.0 and meta.distance_m == 1.6
        assert meta.beam_center == (100.0, 100.0)  # direct beam in the cropped frame's pixels
        np.testing.assert_array_equal(meta.map_index, np.repeat(np.arange(64), 10))
        assert np.allclose(np.diff(meta.eta[:10]), 0.06)
        assert meta.detector_mask is not None and meta.detector_mask.sum() > 0
        truth = f["entry/truth"]
        for name in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mask",
                     "mean_q", "lithium"):
            assert name in truth
        assert truth["q"].shape == (8, 8, 3)
        assert abs(np.nanmean(truth["lithium"][()]) - truth.attrs["x_mean"]) < 1e-12
        assert truth["d_spacing"].attrs["units"] == "angstrom"
        # frames carry the particle: a bright map pixel has far more counts than an empty one
        per_point = np.zeros(64)
        good = meta.detector_mask == 0
        for start, block in iter_frame_blocks(f["entry"], 100):
            np.add.at(per_point, meta.map_index[start:start + block.shape[0]], (block * good).sum(axis=(1, 2)))
        inten = truth["intensity"][()].ravel()
        assert per_point[np.argmax(inten)] > 20 * max(per_point[inten == 0].max(initial=1.0), 1.0)
        assert np.corrcoef(per_point, inten)[0, 1] > 0.95
        # the file's own geometry (cropped-frame beam centre, per-frame angles) puts the
        # brightest pixel's centre of mass on its true Q
        m = int(np.argmax(inten))
        rows = np.flatnonzero(meta.map_index == m)
        frames = f["entry/instrument/detector/data"][rows[0]:rows[-1] + 1].astype(np.float64) * good
        q = np.stack([q_sample_area(meta.eta[i], meta.phi[i], meta.nu[i], meta.delta[i], energy_ev=meta.energy_ev,
                                    distance_m=meta.distance_m, pixel_size_m=meta.pixel_size_m[0],
                                    beam_center=meta.beam_center, frame_shape=meta.frame_shape) for i in rows])
        com = np.einsum("fij,fijk->k", frames, q) / frames.sum()
        assert np.linalg.norm(com - truth["q"][()].reshape(-1, 3)[m]) < 1e-3
    assert "written" in capsys.readouterr().out


def test_simulate_refuses_to_overwrite_and_names_the_file(tmp_path, capsys):
    out = tmp_path / "raw.h5"
    out.write_bytes(b"")
    rc = main(["simulate", "-o", str(out), "--ny", "2", "--nx", "2", "--angles", "2", "-q"])
    assert rc == 2
    assert str(out) in capsys.readouterr().err


def test_simulate_eta_outer_order(tmp_path):
    out = tmp_path / "raw.h5"
    assert main(["simulate", "-o", str(out), "--ny", "3", "--nx", "4", "--angles", "5",
                 "--roi", "200", "260", "200", "260", "-q"]) == 0
    with h5py.File(out, "r") as f:
        meta = read_raw_meta(f["entry"])
        np.testing.assert_array_equal(meta.map_index, np.tile(np.arange(12), 5))
        assert np.all(np.diff(meta.eta[::12]) > 0) and np.all(meta.eta[:12] == meta.eta[0])
        assert meta.frame_dtype == np.uint32
        assert meta.x_um is not None and np.allclose(meta.x_um[:4], [0.0, 0.1, 0.2, 0.3])


def test_command_choices_match_the_simulator():
    from opmon.commands import simulate
    from opmon.simulators import crystal, instrument

    assert simulate.MODES == crystal.MODES
    assert simulate.ORDERS == instrument.ORDERS


def test_peak_counts_sets_the_bragg_signal_of_a_low_signal_map(tmp_path, capsys):
    """--peak-counts scales the particle's photons (a low-signal map), not the background; a bad value
    is refused in one line."""
    totals = {}
    for counts in (2e4, 1e3):
        out = tmp_path / f"raw{counts:g}.h5"
        assert main(["simulate", "-o", str(out), "--ny", "3", "--nx", "3", "--angles", "8", "--mode", "uniform",
                     "--roi", "206", "306", "206", "306", "--peak-counts", f"{counts:g}", "--seed", "1", "-q"]) == 0
        with h5py.File(out, "r") as f:
            totals[counts] = float(f["entry/truth/intensity"][()].max())
            assert f["entry/truth"].attrs["peak_counts"] == counts
    assert 15 < totals[2e4] / totals[1e3] < 25
    rc = main(["simulate", "-o", str(tmp_path / "bad.h5"), "--ny", "2", "--nx", "2", "--peak-counts", "-5", "-q"])
    assert rc == 2 and "--peak-counts" in capsys.readouterr().err
