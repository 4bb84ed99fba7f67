"""The headless demo end to end: real processes, real sockets, real archive; maps = opmon process."""
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from opmon.processors.maps import read_map_result
from opmon.port_picker import port_block
from opmon.processors.offline import ProcessOptions, process_file
from opmon.streaming.archive.layout import MAP_COMPLETE


@pytest.mark.slow
def test_headless_demo_archives_every_frame_and_its_maps_equal_offline_processing(tmp_path):
    archive = tmp_path / "archive"
    port_base = port_block(10)          # the shared picker (opmon.port_picker)
    cmd = [sys.executable, "-m", "opmon.cli", "demo", "--headless", "--archive-dir", str(archive),
           "--port-base", str(port_base), "--map-shape", "8", "8", "--acceleration", "1500",
           "--maps-at", "4.5", "4.7", "4.75"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "exit status: success" in out
    assert re.search(r"frames lost: 0\b", out)
    maps = int(re.search(r"maps: (\d+)", out).group(1))
    assert maps >= 2
    assert out.count("voltage threshold") >= maps  # each archived map says why it was taken
    run_dirs = [p for p in archive.iterdir() if p.is_dir() and p.name != "logs"]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    for number in range(maps):
        raw = run_dir / f"map_{number:04d}.h5"
        with h5py.File(raw, "r") as f:
            assert f[MAP_COMPLETE][()] == 1
            assert f["entry/instrument/detector/data"].shape[0] == 8 * 8 * 30
        offline = process_file(raw, tmp_path / f"offline_{number}.h5", ProcessOptions(roi=None))["entry"]
        with h5py.File(run_dir / f"map_{number:04d}_maps.h5", "r") as f:
            live = read_map_result(f["entry"])
        for name, arr in offline.arrays().items():
            if name == "frames":
                continue
            rtol = 1e-7 if name == "peak_width" else 1e-10
            assert np.allclose(getattr(live, name), arr, rtol=rtol, atol=0, equal_nan=True), name
        # sane physics: the particle diffracts (a bright pixel collects ~1e4 counts over its
        # rocking curve, the background alone a few) at the LMNO (400) spacings of a first charge
        assert np.nanmax(offline.intensity) > 1000
        d = offline.valid_d()
        # the detector sees one phase (the paper's window): a transforming particle loses valid
        # pixels map by map, so only the first map must hold many
        assert d.size >= (10 if number == 0 else 1) and 2.015 < d.mean() < 2.045 and d.std() < 0.01


def test_demo_fly_option_chooses_eta_outer_and_refuses_point_outer():
    from opmon.cli import build_parser
    from opmon.demo import plan_from_args
    from opmon.errors import ConfigError

    parser = build_parser()
    plan = plan_from_args(parser.parse_args(["demo", "--fly", "--point-time", "0.001"]))
    assert (plan.fly, plan.order, plan.point_time_s) == (True, "eta-outer", 0.001)
    assert (lambda p: (p.fly, p.order))(plan_from_args(parser.parse_args(["demo"]))) == (False, "point-outer")
    with pytest.raises(ConfigError, match="eta-outer"):
        plan_from_args(parser.parse_args(["demo", "--fly", "--order", "point-outer"]))
