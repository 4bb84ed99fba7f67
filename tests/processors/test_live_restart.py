"""Killing the live processor mid-map and starting it again loses no map: it catches up from
the archive, and every archived map equals `opmon process` on the archived frames."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from opmon.commands.archive import build_archiver
from opmon.config import load_config
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.streaming.publisher import ZmqFrameSink

from opmon.port_picker import free_ports

from tests.processors.conftest import FRAME, GEOMETRY, MAP, synthetic_map, assert_same_maps
from tests.waiting import stop_processes, until


def _config(tmp_path):
    ports = free_ports(8)        # services bind from the config: the shared picker (opmon.port_picker)
    names = ["frames_archive", "frames_live", "docs", "maps_archive", "display_live", "display_acquisition",
             "display_archive", "control"]
    text = "[ports]\n" + "".join(f"{n} = {p}\n" for n, p in zip(names, ports))
    text += f'[archive]\ndir = "{tmp_path / "archive"}"\nflush_interval_s = 0.2\n[live]\npublish_interval_s = 0.1\n'
    path = tmp_path / "opmon.toml"
    path.write_text(text)
    return load_config(path), str(path)


def _wait(predicate, timeout=60.0) -> bool:
    return until(predicate, timeout)


def _start_archiver(config):
    """The real archiver in a thread; set the returned event to stop it."""
    archiver = build_archiver(config)
    done = threading.Event()
    thread = threading.Thread(target=archiver.run, kwargs={"stop_when": done.is_set}, daemon=True)
    thread.start()
    return done, thread


def _send(sink, frames):
    for frame, p, eta in frames:
        sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)


def _maps_done(master, n):
    try:
        with h5py.File(master, "r") as f:
            return all(f"entry{m}" in f and "maps" in f[f"entry{m}"] for m in range(n))
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(240)
def test_killed_and_restarted_live_processor_loses_no_map(tmp_path, workers):
    config, path = _config(tmp_path)
    done, thread = _start_archiver(config)
    sink = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")], stall_timeout_s=90)
    cmd = [sys.executable, "-m", "opmon.cli", "live", "--config", path, "--workers", str(workers)]
    log1 = open(tmp_path / "live1.log", "w")
    live = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log1)
    procs = [live]
    try:
        maps = [synthetic_map(m, seed=3) for m in range(3)]
        run = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        master = tmp_path / "archive" / run / "run.h5"

        sink.start_map(len(maps[0]))
        _send(sink, maps[0])
        sink.end_map()
        assert _wait(lambda: _maps_done(master, 1), 120), "first map never archived"
        sink.start_map(len(maps[1]))
        _send(sink, maps[1][:40])
        os.kill(live.pid, signal.SIGKILL)                  # mid-map 1
        live.wait(10)
        log2 = open(tmp_path / "live2.log", "w")
        live = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log2)
        procs.append(live)
        _send(sink, maps[1][40:])
        sink.end_map()
        sink.start_map(len(maps[2]))
        _send(sink, maps[2])
        sink.end_map()
        sink.stop_run()
        assert _wait(lambda: _maps_done(master, 3), 120), "a map was lost after the restart"
    finally:
        stop_processes(procs, 10)
        sink.close()
        done.set()
        thread.join(10)
    log_text = (tmp_path / "live2.log").read_text()
    if workers == 1:    # inline: the frames sent before the restart come from the archive
        assert "joined run" in log_text and "40 earlier frames recovered from the archive" in log_text, log_text
    else:
        # fan-out: what no live worker accumulated (the frames before the restart, and whatever
        # went to the dying workers) comes from the archive: frames of the map it joined, whole
        # maps it missed, or, when every later message was lost, the idle processor's catch-up
        assert re.search(r"joined run[\s\S]*(map [12]: \d+ frames recovered|map 1 recovered) from the archive",
                         log_text) or re.search(r"map 1: no live maps were made \(processor down\); made from its 72 "
                                                r"archived frames", log_text), log_text
    with h5py.File(master, "r") as f:
        for m in range(3):
            entry = f[f"entry{m}"]
            live_maps = read_map_result(entry)
            assert entry["maps"].attrs["frames_received"] == len(maps[m])
            roi = tuple(int(v) for v in entry["maps"].attrs["roi"])
            offline, _ = process_entry(entry, ProcessOptions(roi=roi))
            assert_same_maps(live_maps, offline)


@pytest.mark.timeout(180)
def test_a_map_whose_processor_died_before_finishing_it_is_made_from_the_archive(tmp_path):
    """The processor received all of map 0 and died before its final map; the next one
    joins at map 1, finds map 0 archived without maps, and makes them from the archive."""
    from opmon.processors.live import LiveProcessor
    from opmon.streaming.receiver import FrameReceiver
    config, _ = _config(tmp_path)
    done, thread = _start_archiver(config)
    sink = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")], stall_timeout_s=90)
    doomed = FrameReceiver(config.endpoint("frames_live"))
    maps = [synthetic_map(m, seed=5) for m in range(2)]
    run = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
    master = tmp_path / "archive" / run / "run.h5"

    sink.start_map(len(maps[0]))
    _send(sink, maps[0])
    sink.end_map()
    kinds = []
    while not kinds or kinds[-1] != "map_end":        # it saw the whole map, then "died"
        msg = doomed.recv(timeout_ms=30000)
        assert msg is not None
        kinds.append(msg.kind)
    doomed.close()
    processor = LiveProcessor(config.endpoint("frames_live"), None, config.endpoint("maps_archive"),
                              archive_dir=config.archive.dir, roi=(10, 30, 12, 34))
    live = threading.Thread(target=processor.serve, daemon=True)
    live.start()
    try:
        sink.start_map(len(maps[1]))
        _send(sink, maps[1])
        sink.end_map()
        sink.stop_run()
        assert _wait(lambda: _maps_done(master, 2), 120), "map 0 was lost with the processor"
    finally:
        processor.stopped = True
        live.join(30)
        sink.close()
        done.set()
        thread.join(10)
    assert [s["map"] for s in processor.summaries] == [0, 1]
    with h5py.File(master, "r") as f:
        for m in range(2):
            entry = f[f"entry{m}"]
            offline, _ = process_entry(entry, ProcessOptions(roi=(10, 30, 12, 34)))
            assert_same_maps(read_map_result(entry), offline)
