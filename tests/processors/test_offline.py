"""`opmon process` end to end on real HDF5 files, including every kind of bad input."""
import h5py
import numpy as np
import pytest

from opmon.cli import main
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_file


def test_process_writes_nxdata_maps(raw_file, tmp_path, capsys):
    out = tmp_path / "maps.h5"
    assert main(["process", str(raw_file), "-o", str(out), "-q", "--png"]) == 0
    with h5py.File(out, "r") as f:
        maps = f["entry/maps"]
        assert maps.attrs["NX_class"] == "NXdata" and maps.attrs["signal"] == "d_spacing"
        assert maps["d_spacing"].attrs["units"] == "angstrom"
        for name in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask"):
            assert maps[name].shape == (3, 3)
        assert maps["q"].shape == (3, 3, 3) and maps["mean_q"].shape == (3,)
        result = read_map_result(f["entry"])
    assert result.mask.all()
    assert (tmp_path / "maps.png").stat().st_size > 10_000
    assert "mean d" in capsys.readouterr().out


def test_blocks_and_full_roi_agree(raw_file, tmp_path):
    small = process_file(raw_file, tmp_path / "a.h5", ProcessOptions(block=7, roi=None, background=None, despeckle=False))["entry"]
    big = process_file(raw_file, tmp_path / "b.h5", ProcessOptions(block=500, roi=None, background=None, despeckle=False))["entry"]
    assert np.allclose(small.d_spacing, big.d_spacing, rtol=1e-13)


@pytest.mark.parametrize("overrides, message", [
    ({"entry/scan/map_index": np.zeros(5, dtype=np.int64)}, "map_index: length"),
    ({"entry/scan/map_index": np.full(54, 9, dtype=np.int64)}, "names map pixel 9"),
    ({"entry/sample/positioners/eta": np.full(54, np.nan)}, "eta: 54 non-finite"),
    ({"entry/sample/positioners/phi": np.zeros(3)}, "phi: shape"),
    ({"entry/scan/map_shape": np.array([3, 3, 1])}, "map_shape"),
    ({"entry/instrument/beam/incident_energy": -5.0}, "incident_energy: invalid"),
])
def test_bad_input_names_the_field_and_writes_nothing(tmp_path, capsys, overrides, message, make_raw):
    raw = make_raw(tmp_path / "bad.h5", **overrides)
    out = tmp_path / "maps.h5"
    assert main(["process", str(raw), "-o", str(out), "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [raw]  # no temporary left behind


def test_missing_dataset_and_missing_file(tmp_path, capsys, raw_file):
    with h5py.File(raw_file, "a") as f:
        del f["entry/instrument/detector/distance"]
    out = tmp_path / "maps.h5"
    assert main(["process", str(raw_file), "-o", str(out), "-q"]) == 2
    assert "missing dataset /entry/instrument/detector/distance" in capsys.readouterr().err
    assert main(["process", str(tmp_path / "nope.h5"), "-o", str(out), "-q"]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    assert main(["process", str(tmp_path / "junk.h5"), "-o", str(out), "-q"]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert not out.exists()


def test_wrong_frame_shape_and_dtype(tmp_path, capsys, make_raw):
    raw = make_raw(tmp_path / "raw.h5")
    with h5py.File(raw, "a") as f:
        del f["entry/instrument/detector/data"]
        f["entry/instrument/detector/data"] = np.zeros((54, 4), np.uint32)
    assert main(["process", str(raw), "-o", str(tmp_path / "m.h5"), "-q"]) == 2
    assert "expected (N, rows, cols)" in capsys.readouterr().err
    with h5py.File(raw, "a") as f:
        del f["entry/instrument/detector/data"]
        f["entry/instrument/detector/data"] = np.zeros((54, 40, 48), np.float32)
    assert main(["process", str(raw), "-o", str(tmp_path / "m.h5"), "-q"]) == 2
    assert "dtype float32" in capsys.readouterr().err


def test_zero_intensity_map_is_refused(tmp_path, capsys, make_raw):
    raw = make_raw(tmp_path / "raw.h5", intensity=0.0)
    with h5py.File(raw, "a") as f:
        f["entry/instrument/detector/data"][...] = 0
    out = tmp_path / "maps.h5"
    assert main(["process", str(raw), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "holds no intensity" in err and "/entry" in err
    assert not out.exists()


def test_multi_entry_archive_processes_every_entry(tmp_path, make_raw):
    a = make_raw(tmp_path / "a.h5", seed=1)
    archive = tmp_path / "archive.h5"
    with h5py.File(archive, "w") as dst, h5py.File(a, "r") as src:
        for name in ("entry2", "entry10", "entry1"):
            src.copy("entry", dst, name=name)
    results = process_file(archive, tmp_path / "maps.h5")
    assert list(results) == ["entry1", "entry2", "entry10"]
    with h5py.File(tmp_path / "maps.h5", "r") as f:
        assert set(f) == {"entry1", "entry2", "entry10"}


def test_maps_carry_xy_axes_in_um_from_the_recorded_positions(tmp_path, make_raw):
    """Map pixel p (row p // 3, column p % 3) at x = 2 + 0.25 column, y = -1 + 0.5 row (µm), each
    frame's recorded position jittered by +-0.01 µm: the maps' axes are the positions' means."""
    index = np.repeat(np.arange(9), 6)
    jitter = np.tile([0.01, -0.01], index.size // 2)
    x, y = 2.0 + 0.25 * (index % 3) + jitter, -1.0 + 0.5 * (index // 3) - jitter
    raw = make_raw(tmp_path / "raw.h5", **{"entry/scan/x": x, "entry/scan/y": y})
    process_file(raw, tmp_path / "maps.h5")
    with h5py.File(tmp_path / "maps.h5", "r") as f:
        maps = f["entry/maps"]
        assert list(maps.attrs["axes"]) == ["y", "x"] and maps["x"].attrs["units"] == "um"
        np.testing.assert_allclose(maps["x"][()], [2.0, 2.25, 2.5], atol=1e-12)
        np.testing.assert_allclose(maps["y"][()], [-1.0, -0.5, 0.0], atol=1e-12)
    # positions not recorded (NaN, as the writer stores them): no made-up axes
    process_file(make_raw(tmp_path / "raw2.h5"), tmp_path / "maps2.h5")
    with h5py.File(tmp_path / "maps2.h5", "r") as f:
        assert "x" not in f["entry/maps"] and "axes" not in f["entry/maps"].attrs


def test_plot_command(raw_file, tmp_path):
    out = tmp_path / "maps.h5"
    process_file(raw_file, out)
    assert main(["plot", str(out), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_silx_opens_the_maps_as_the_default_image(raw_file, tmp_path):
    nxdata = pytest.importorskip("silx.io.nxdata")
    out = tmp_path / "maps.h5"
    process_file(raw_file, out)
    with h5py.File(out, "r") as f:
        assert nxdata.is_valid_nxdata(f["entry/maps"])
        default = nxdata.get_default(f)
        assert default is not None and default.is_image
        assert default.signal.shape == (3, 3) and default.signal.name.endswith("d_spacing")


def test_reads_a_map_whose_swmr_writer_was_killed(tmp_path, make_raw):
    """A writer killed mid-map leaves a file plain read mode refuses; process must still read it."""
    import subprocess
    import sys
    import textwrap
    src = make_raw(tmp_path / "src.h5")
    killed = tmp_path / "killed.h5"
    code = textwrap.dedent(f"""
        import os, h5py, hdf5plugin, numpy as np
        from opmon.streaming.archive.raw import RawMapWriter, read_raw_meta
        with h5py.File({str(src)!r}, "r") as s:
            e = s["entry"]; meta = read_raw_meta(e); frames = e["instrument/detector/data"][()]
        f = h5py.File({str(killed)!r}, "w", libver="latest")
        w = RawMapWriter(f.create_group("entry"), frame_shape=meta.frame_shape, dtype=meta.frame_dtype,
                         energy_ev=meta.energy_ev, distance_m=meta.distance_m, pixel_size_m=meta.pixel_size_m,
                         beam_center=meta.beam_center, map_shape=meta.map_shape)
        f.swmr_mode = True
        w.append(frames, meta.map_index, meta.eta, meta.phi, meta.nu, meta.delta)
        f.flush()
        os._exit(9)  # no close: what kill -9 leaves
    """)
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    with pytest.raises(OSError):
        h5py.File(killed, "r").close()  # the state the archiver's kill test leaves
    results = process_file(killed, tmp_path / "maps.h5")
    reference = process_file(src, tmp_path / "ref.h5")
    assert np.allclose(results["entry"].d_spacing, reference["entry"].d_spacing, equal_nan=True)


def test_the_auto_roi_is_not_stretched_over_a_background_gradient():
    """Fluorescence and air scatter make a gradient across the detector; the auto ROI's level follows it (a
    plane), so the bright side is not taken for signal."""
    from opmon.processors.offline import roi_from_image
    rows, cols = np.indices((200, 120))
    background = 40.0 * (1.0 + 0.8 * (2.0 * rows / 199 - 1.0))                  # summed counts per pixel
    peak = 400.0 * np.exp(-0.5 * (((rows - 100) / 6.0) ** 2 + ((cols - 60) / 8.0) ** 2))
    roi = roi_from_image(np.random.default_rng(2).poisson(background + peak).astype(float))
    assert roi is not None
    assert 55 < roi[0] < 100 < roi[1] < 145 and roi[2] < 60 < roi[3]    # the median level: rows 45-200
