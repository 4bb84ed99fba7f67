"""`opmon inspect` on the real ID01 files (layout and metadata real, frames not included) says what
opmon sees, and `opmon process` on them fails with one line: no frames."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OPMON = str(Path(sys.executable).with_name("opmon"))
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "id01"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/id01")
BLISS = DATA / "PTO_STO_SL_0001.h5"
XSOCS = DATA / "xsocs_entry_sample_0001_1.1.h5"

pytestmark = pytest.mark.skipif(not BLISS.exists(), reason="the recorded ID01 files are not here")


def opmon(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPMON, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_inspect_names_the_bliss_scan_detector_geometry_and_missing_source(tmp_path):
    result = opmon("inspect", str(BLISS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ID01 BLISS (written by Bliss 1.9.0" in out
    assert "scans taken (0): none" in out
    assert "20.1 'ascan eta 15.24 19.24 50 1': not a map scan" in out
    assert "detector: mpx1x4, frames (51, 516, 516) int32 at 20.1/measurement/mpx1x4" in out
    assert ("missing frame source: 20.1/measurement/mpx1x4 is a virtual dataset onto scan0020/mpx1x4_0000.h5, "
            "which is missing") in out
    assert "eta array (51) 15.2422..19.2422" in out and "delta 37.046" in out
    assert "geometry incident_energy = 9999.9981 eV (from 20.1/instrument/monochromator/Energy)" in out
    assert "geometry distance = 0.56685103 m (from 20.1/instrument/mpx1x4/distance)" in out
    assert "geometry beam_center_x = 172.91091 pixel" in out and "geometry beam_center_y = 185.60416 pixel" in out
    assert "detector mask: 20.1/instrument/mpx1x4/pixel_mask, 25 bad pixels" in out
    assert "monitors: mon1, mon2, exp1" in out


def test_inspect_names_the_xsocs_entry_grid_geometry_and_missing_link(tmp_path):
    result = opmon("inspect", str(XSOCS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "XSOCS master, 1 scan(s)" in out and "scans taken (1): 1.1" in out
    assert ("missing frame source: 1.1/instrument/detector/data links to 1.1/measurement/image/data links to "
            "1.1/measurement/mpx1x4 in ./data/MA1234/id01/20230710/sample/sample_0001/sample_0001.h5, which is missing") in out
    assert "map grid: 60 x 60 (slow piy 37.4771..53.4771, fast pix 48.2441..64.2441)" in out
    assert "positions (1.1): pix: array (3600)" in out
    assert "eta 92.822" in out and "delta 112.852" in out
    assert "geometry incident_energy = 9000.0144 eV (from 1.1/instrument/detector/beam_energy)" in out
    assert "geometry beam_center_y = 256.16902 pixel (from 1.1/instrument/detector/center_chan_dim0)" in out
    assert "geometry distance = 0.9401126 m" in out and "2 tan 0.5 deg" in out


@pytest.mark.parametrize("path, message", [
    (BLISS, "no frames to process: no SXDM/KMAP map scan (20.1 'ascan eta 15.24 19.24 50 1'"),
    (XSOCS, "no frames: 1.1/instrument/detector/data links to"),
])
def test_process_fails_with_one_line(tmp_path, path, message):
    result = opmon("process", str(path), "-o", "maps.h5", "-q", cwd=tmp_path)
    assert result.returncode == 2
    err = result.stderr.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "maps.h5").exists()


def test_inspect_of_a_missing_file_is_one_line(tmp_path):
    result = opmon("inspect", "nothing.h5", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == "opmon inspect: error: nothing.h5: no such file"
