"""`opmon process --dask` as a user runs it: the same maps file as one process, the same
corrupt-frame handling, and one line (exit 2, no file) for a cluster that cannot be used."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from opmon.cli import main

MAPS = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mean_q", "mask", "bad_frames")


def same_maps(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert list(fa) == list(fb)
        for entry in fa:
            for name in MAPS:
                np.testing.assert_allclose(fb[entry]["maps"][name][()], fa[entry]["maps"][name][()],
                                           rtol=1e-7 if name == "peak_width" else 1e-12, equal_nan=True,
                                           err_msg=f"{entry}/{name}")
            np.testing.assert_array_equal(fb[entry]["maps"].attrs["roi"], fa[entry]["maps"].attrs["roi"])


@pytest.mark.parametrize("raw", ["raw.h5", "run/run.h5"])
def test_dask_scheduler_address_gives_the_maps_of_one_process(workdir, dask_client, raw, capsys):
    """A single raw file and an archived run, through the scheduler's tcp:// address."""
    assert main(["process", str(workdir / raw), "-o", str(workdir / "one.h5"), "-q"]) == 0
    from distributed import get_task_stream

    address = dask_client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    with get_task_stream(dask_client) as stream:  # what the scheduler ran, whichever client asked
        assert main(["process", str(workdir / raw), "-o", str(workdir / "dask.h5"), "-q", "--dask", address,
                     "--task-frames", "16"]) == 0
    assert "maps written to" in capsys.readouterr().out
    ran = [task["key"].split("-")[0] for task in stream.data]
    entries = 2 if raw == "run/run.h5" else 1
    assert ran.count("reduce_frames") == 4 * entries and ran.count("decide_plan") == entries  # 54 frames / 16
    same_maps(workdir / "one.h5", workdir / "dask.h5")


def test_corrupt_frames_on_dask_as_in_one_process(workdir, dask_client, capsys):
    corrupt, address = str(workdir / "corrupt.h5"), dask_client.scheduler.address
    assert main(["process", corrupt, "-o", str(workdir / "c.h5"), "-q", "--dask", address]) == 2
    assert "corrupt.h5:/entry: corrupt compressed frame 3" in capsys.readouterr().err
    assert not (workdir / "c.h5").exists()
    assert main(["process", corrupt, "-o", str(workdir / "one.h5"), "-q", "--skip-bad-frames"]) == 3
    assert main(["process", corrupt, "-o", str(workdir / "dask.h5"), "-q", "--skip-bad-frames", "--dask", address,
                 "--task-frames", "8"]) == 3
    assert "entry: frames 3, 40" in capsys.readouterr().err
    same_maps(workdir / "one.h5", workdir / "dask.h5")


@pytest.mark.parametrize("spec, message", [
    ("local:0", "local:N needs a worker count N >= 1"),
    ("local:two", "local:N needs a worker count N >= 1"),
    ("cluster.json", "expected local:N, a scheduler address"),
])
def test_bad_dask_option_is_one_line(workdir, capsys, spec, message):
    assert main(["process", str(workdir / "raw.h5"), "-o", str(workdir / "m.h5"), "-q", "--dask", spec]) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "m.h5").exists()


def test_scheduler_file_names_the_cluster(workdir, dask_client):
    """What `dask scheduler --scheduler-file` and dask-jobqueue write: JSON with the address."""
    import json

    (workdir / "scheduler.json").write_text(json.dumps({"type": "Scheduler", "address": dask_client.scheduler.address}))
    assert main(["process", str(workdir / "raw.h5"), "-o", str(workdir / "one.h5"), "-q"]) == 0
    assert main(["process", str(workdir / "raw.h5"), "-o", str(workdir / "dask.h5"), "-q",
                 "--dask", str(workdir / "scheduler.json")]) == 0
    same_maps(workdir / "one.h5", workdir / "dask.h5")


def test_scheduler_file_that_is_not_json_is_one_line(workdir, capsys):
    (workdir / "scheduler.json").write_text("not json")
    assert main(["process", str(workdir / "raw.h5"), "-o", str(workdir / "m.h5"), "-q",
                 "--dask", str(workdir / "scheduler.json")]) == 2
    assert "not a Dask scheduler file" in capsys.readouterr().err
    assert not (workdir / "m.h5").exists()


def test_unreachable_scheduler_is_one_line_and_no_file(workdir, capsys, monkeypatch):
    import socket

    from opmon.processors import distributed
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["process", str(workdir / "raw.h5"), "-o", str(workdir / "m.h5"), "-q",
                 "--dask", f"tcp://127.0.0.1:{port}"]) == 2
    assert f"--dask tcp://127.0.0.1:{port}: cannot reach the Dask scheduler" in capsys.readouterr().err
    assert not (workdir / "m.h5").exists()
