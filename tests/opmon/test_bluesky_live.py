"""`opmon live --source bluesky:tcp://HOST:PORT` as a user runs it: bad options give one line and
exit 2 before anything connects; a foreign RunEngine's grid scan comes out as a final map."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
import zmq

from opmon.cli import main
from opmon.streaming import protocol as P

from tests.streaming.test_bluesky_source import START_MD, Beamline

GEOMETRY_TOML = "x_pixel_size = 55e-6\ny_pixel_size = 55e-6\nbeam_center_x = 160.0\nbeam_center_y = 120.0\n"


@pytest.mark.parametrize("args, message", [
    (["--source", "bluesky:localhost:5567"], "expected bluesky:tcp://HOST:PORT"),
    (["--source", "kafka:broker:9092"], "expected opmon, bluesky:tcp://HOST:PORT"),
    (["--geometry", "{missing}"], "cannot read"),
    (["--geometry", "{bad_key}"], "unknown geometry key 'pixel_size'"),
    (["--geometry", "{bad_value}"], "distance = 'far' is not a finite number"),
    (["--angle", "eta"], "--angle 'eta': expected NAME=DATA_KEY or NAME=DEGREES"),
    (["--angle", "chi=3"], "NAME one of eta, phi, nu, delta"),
    (["--map-shape", "0", "4"], "--map-shape 0 4: both sides must be >= 1"),
])
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    files = {"missing": tmp_path / "missing.toml", "bad_key": tmp_path / "k.toml", "bad_value": tmp_path / "v.toml"}
    files["bad_key"].write_text("pixel_size = 1e-4\n")
    files["bad_value"].write_text('distance = "far"\n')
    args = [a.format(**files) for a in args]
    source = [] if "--source" in args else ["--source", "bluesky:tcp://127.0.0.1:1"]
    assert main(["live", *source, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("opmon live: error: "), err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_opmon_live_follows_a_foreign_grid_scan_and_stops_on_sigterm(tmp_path):
    data_dir = tmp_path / "detector"
    data_dir.mkdir()
    ctx = zmq.Context()
    maps_in = ctx.socket(zmq.PULL)
    maps_port = maps_in.bind_to_random_port("tcp://127.0.0.1")
    config = tmp_path / "opmon.toml"
    config.write_text(f"[ports]\nframes_live = {free_port()}\ndisplay_live = {free_port()}\nmaps_archive = {maps_port}\n")
    (tmp_path / "geometry.toml").write_text(GEOMETRY_TOML)
    beamline = Beamline(data_dir, *START_MD)
    live = subprocess.Popen([sys.executable, "-m", "opmon.cli", "live", "--config", str(config), "--no-recover",
                             "--source", f"bluesky:{beamline.address}", "--geometry", str(tmp_path / "geometry.toml"),
                             "--angle", "phi=0", "--angle", "nu=0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        beamline.go_when(lambda: live.poll() is not None or live.stderr.readline().find("not a grid scan") >= 0)
        assert live.poll() is None, live.stderr.read()
        assert maps_in.poll(120_000), "no final map from opmon live"
        header = P.unpack(maps_in.recv_multipart()[1])
        beamline.wait_done()
    finally:
        beamline.close()
        if live.poll() is None:
            live.send_signal(signal.SIGTERM)
        _, err = live.communicate(timeout=60)
    assert header["final"] and header["frames"] == 30 and header["frames_lost"] == 0 and header["map_shape"] == [5, 6]
    assert live.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    ctx.destroy(linger=0)
