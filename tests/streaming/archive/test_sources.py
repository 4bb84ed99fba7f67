"""ID01 BLISS and XSOCS files give the maps of the same frames in opmon's raw layout; each problem
with such a file is one line naming it.

The 5-D SXDM is simulated (31 etas x 20 x 28 points, 64 x 64 frames) and written three ways
(`id01_data`); the BLISS scans take the map in snake order with jittered piezo positions, so
the map index can only come from binning the positions.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from opmon.cli import main
from opmon.processors.maps import read_map_result
from opmon.simulators.id01_files import Id01Scan, Id01Setup, write_bliss
from opmon.streaming.archive.sources import open_source

from tests.processors.conftest import assert_same_maps  # same frames, same geometry: to float rounding
from tests.streaming.archive.id01_data import make_id01_files

@pytest.fixture(scope="module")
def id01(tmp_path_factory):
    return make_id01_files(tmp_path_factory.mktemp("id01") / "data")


def process(path: Path, out: Path, *extra: str) -> object:
    assert main(["process", str(path), "-o", str(out), "-q", *extra]) == 0
    with h5py.File(out, "r") as f:
        return read_map_result(f["entry"])


def test_bliss_and_xsocs_files_give_the_maps_of_the_raw_layout(id01, tmp_path, capsys):
    reference = process(id01.raw, tmp_path / "raw_maps.h5")
    assert int(reference.mask.sum()) > 50  # a real particle, not an empty map
    from_metadata = process(id01.bliss, tmp_path / "bliss_maps.h5")
    from_toml = process(id01.bliss_uncalibrated, tmp_path / "toml_maps.h5", "--geometry", str(id01.geometry))
    from_xsocs = process(id01.xsocs, tmp_path / "xsocs_maps.h5")
    for maps in (from_metadata, from_toml, from_xsocs):
        assert_same_maps(maps, reference)
    with h5py.File(tmp_path / "toml_maps.h5", "r") as f:
        attrs = f["entry/maps"].attrs
        assert attrs["source_format"] == "ID01 BLISS"
        assert '"32.1": "not a map scan' in attrs["provenance"]  # the ascan is skipped and listed
        assert f'"from": "--geometry {id01.geometry}"' in attrs["provenance"]
    with h5py.File(tmp_path / "xsocs_maps.h5", "r") as f:
        assert "2 tan 0.5 deg" in f["entry/maps"].attrs["provenance"]


def test_blocks_follow_chunks_and_scans_without_copying_the_stack(id01):
    with open_source(id01.bliss) as src:
        (smap,) = src.maps
        assert smap.n_frames == 31 * 20 * 28 and smap.meta.frame_dtype == np.uint32  # Lima's int32, as counts
        starts = [(b.start, b.stop) for b in smap.blocks(block=100)]
        scan_edges = {seg.first for seg in smap.segments}
        assert all(any(s <= e < t for s, t in starts) for e in scan_edges)
        assert not any(s < e < t for s, t in starts for e in scan_edges)  # no block straddles two scans
        first = next(iter(smap.blocks(block=100, start=600, stop=610)))
        with h5py.File(id01.bliss, "r") as f:
            direct = f["2.1/measurement/mpx1x4"][40:50]
        np.testing.assert_array_equal(first.frames, direct)


# -- errors: one line naming the problem (small files, written here) -----------------------------
SMALL = (3, 4)


def small_bliss(root: Path, **kw) -> Path:
    rng = np.random.default_rng(1)
    setup = Id01Setup(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(-300.0, 20.0),
                      phi=0.0, nu=0.0, delta=35.0, map_shape=SMALL)
    scans = [Id01Scan(19.0 + 0.01 * k, rng.poisson(3.0, (12, 16, 16)).astype(np.int32), np.arange(12))
             for k in range(3)]
    root.mkdir(parents=True, exist_ok=True)
    return write_bliss(root / "s.h5", setup, scans, **kw)


def one_line_error(capsys, path: Path, *extra: str) -> str:
    assert main(["process", str(path), "-o", str(path.with_name("maps.h5")), "-q", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert not path.with_name("maps.h5").exists()
    return err


def test_missing_detector(tmp_path, capsys):
    path = small_bliss(tmp_path)
    with h5py.File(path, "a") as f:
        for scan in ("1.1", "2.1", "3.1", "4.1"):
            del f[f"{scan}/measurement/mpx1x4"], f[f"{scan}/instrument/mpx1x4/image"]
    assert "missing detector: no 3-D frame dataset" in one_line_error(capsys, path)
    err = one_line_error(capsys, small_bliss(tmp_path / "b"), "--detector", "eiger")
    assert "no frames: 1.1: no frames of detector 'eiger'" in err


def test_inconsistent_scans(tmp_path, capsys):
    path = small_bliss(tmp_path)
    with h5py.File(path, "a") as f:
        del f["2.1/technique/dim0"]
        f["2.1/technique/dim0"] = 5
    err = one_line_error(capsys, path)
    assert "inconsistent scans: 2.1: map grid (3, 5)" in err


def test_positions_that_do_not_fit_the_grid(tmp_path, capsys):
    path = small_bliss(tmp_path)
    with h5py.File(path, "a") as f:
        f["3.1/measurement/piy_position"][7] = 0.5  # grid 0..0.2 um in 3 points
    err = one_line_error(capsys, path)
    assert "3.1/measurement (piy): position 0.5 of frame 7 does not fit the grid of piy" in err


def test_missing_geometry_names_the_key_and_the_option(tmp_path, capsys):
    path = small_bliss(tmp_path, with_calibration=False)
    err = one_line_error(capsys, path)
    assert "missing geometry: distance (not in 1.1/instrument/mpx1x4/distance)" in err and "--geometry" in err


def test_missing_virtual_dataset_source_is_no_frames(tmp_path, capsys):
    path = small_bliss(tmp_path)
    shutil.rmtree(tmp_path / "scan0002")
    err = one_line_error(capsys, path)
    assert "no frames: 2.1/measurement/mpx1x4 is a virtual dataset onto scan0002/mpx1x4_0000.h5, which is missing" in err


def test_scans_option_chooses_scans(tmp_path):
    path = small_bliss(tmp_path)
    with open_source(path, options=None) as src:
        assert src.maps[0].provenance["scans"] == ["1.1", "2.1", "3.1"]
    from opmon.streaming.archive.sources import SourceOptions
    with open_source(path, options=SourceOptions(scans=["1.1", "3.1"])) as src:
        assert src.maps[0].provenance["scans"] == ["1.1", "3.1"] and src.maps[0].n_frames == 24


def test_signed_counts_are_read_as_counts_with_flags_at_zero(tmp_path):
    """Lima writes int32; a negative value is a flag, not -1 photons (it would wrap to 4e9 as uint32)."""
    path = small_bliss(tmp_path)
    lima = tmp_path / "scan0002" / "mpx1x4_0000.h5"
    with h5py.File(lima, "a") as f:
        data = f["/entry_0000/instrument/mpx1x4/data"]
        frame = data[3]
        frame[5, 6] = -1
        data[3] = frame
    with open_source(path) as src:
        (smap,) = src.maps
        block = next(b for b in smap.blocks(block=4) if b.start <= 12 + 3 < b.stop)
        got = block.frames[12 + 3 - block.start]
    assert got.dtype == np.uint32 and got[5, 6] == 0
    np.testing.assert_array_equal(np.delete(got.reshape(-1), 5 * 16 + 6), np.delete(frame.reshape(-1), 5 * 16 + 6))


def test_command_line_kinds_are_the_sources_kinds():
    from opmon.source_options import KINDS
    from opmon.streaming.archive.sources import KINDS as SOURCE_KINDS
    assert KINDS == SOURCE_KINDS


def test_a_dataset_split_over_two_bliss_files_makes_one_map(id01, tmp_path):
    """BLISS starts a new dataset file now and then: the etas of one map may sit in several files."""
    from tests.streaming.archive.id01_data import scans_of, setup_of
    scans, setup = scans_of(id01.raw), setup_of(id01.raw)
    parts = []
    for k, chunk in enumerate((scans[:15], scans[15:])):
        (tmp_path / f"part{k}").mkdir()
        parts.append(write_bliss(tmp_path / f"part{k}" / f"sample_000{k + 1}.h5", setup, chunk, extra_scan=k == 0))
    reference = process(id01.raw, tmp_path / "raw_maps.h5")
    assert main(["process", str(parts[0]), str(parts[1]), "-o", str(tmp_path / "two.h5"), "-q"]) == 0
    with h5py.File(tmp_path / "two.h5", "r") as f:
        assert_same_maps(read_map_result(f["entry"]), reference)
        assert '"sample_0002.h5:16.1"' in f["entry/maps"].attrs["provenance"]  # scans numbered per file
        assert '"sample_0002.h5:1.1"' in f["entry/maps"].attrs["provenance"]


def test_geometry_file_overrides_a_raw_map_and_is_recorded(id01, tmp_path):
    """A stale calibration in opmon's own raw layout is fixed the same way: the key wins, its origin is kept."""
    import json
    toml = tmp_path / "g.toml"
    toml.write_text("distance = 1.7\n")
    assert main(["process", str(id01.raw), "-o", str(tmp_path / "m.h5"), "-q", "--geometry", str(toml)]) == 0
    with h5py.File(tmp_path / "m.h5", "r") as f:
        geometry = json.loads(f["entry/maps"].attrs["provenance"])["geometry"]
    assert geometry["distance"] == {"value": 1.7, "from": f"--geometry {toml}"}
    assert geometry["incident_energy"] == {"value": 10000.0, "from": "entry (raw file)"}
    moved = read_map_result(h5py.File(tmp_path / "m.h5", "r")["entry"])
    reference = process(id01.raw, tmp_path / "ref.h5")
    assert not np.allclose(np.nan_to_num(moved.d_spacing), np.nan_to_num(reference.d_spacing))


def test_a_bad_geometry_file_is_one_line_naming_the_key_or_value(tmp_path):
    """`opmon process --geometry` and `opmon live --source bluesky: --geometry` read the file with
    the same checks (one reader), raised here as the file commands' error."""
    import pytest

    from opmon.errors import RawFileError
    from opmon.streaming.archive.sources.geometry import read_geometry_file
    cases = {"pixel_size = 5.5e-5\n": "unknown geometry key 'pixel_size'",
             "distance = 'far'\n": "distance = 'far' is not a finite number",
             "distance = -1.0\n": "distance = -1.0 must be > 0",
             "distance = [\n": "not a TOML file"}
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"g{i}.toml"
        path.write_text(text)
        with pytest.raises(RawFileError, match=message.replace("[", r"\[")):
            read_geometry_file(path)
    with pytest.raises(RawFileError, match="cannot read"):
        read_geometry_file(tmp_path / "missing.toml")
    (tmp_path / "ok.toml").write_text("distance = 1.6\nbeam_center_x = 96\n")
    assert read_geometry_file(tmp_path / "ok.toml") == {"distance": 1.6, "beam_center_x": 96.0}
