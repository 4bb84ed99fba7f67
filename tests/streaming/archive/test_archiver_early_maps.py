"""Final maps that reach the archiver before their run's start (a fast source: a whole map
done while the start is still on its way, e.g. re-sent after the archiver's sync) are held
until that start is taken, then archived; maps of a run that never starts are dropped and counted."""
from __future__ import annotations

import threading

import numpy as np
import zmq

from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.streaming.archive import archiver as archiver_module
from opmon.streaming.archive.archiver import Archiver
from opmon.streaming.map_messages import encode_map
from opmon.streaming.publisher import ZmqFrameSink

from tests.streaming.conftest import GEOMETRY, frames_for
from tests.waiting import until

SHAPE = (16, 16)
MAP = (2, 2)


def _final_maps(run: str, frames: np.ndarray) -> list[bytes]:
    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], SHAPE)
    acc = MomentAccumulator(geometry, MAP, background=None)
    for i, f in enumerate(frames):
        acc.process_frame(f, i % 4, 10.0, 0, 0, 30)
    return encode_map(acc.finalize(), run=run, map_number=0, final=True, frames=len(frames), n_frames=len(frames),
                      frames_lost=0, options={"roi": [0, 16, 0, 16]})


def test_final_maps_before_the_runs_start_wait_for_it_and_those_of_no_run_expire(tmp_path, ctx, monkeypatch):
    sink = ZmqFrameSink(["tcp://127.0.0.1:0"], context=ctx, stall_timeout_s=10)
    archiver = Archiver(tmp_path / "archive", sink.endpoints[0], None, "tcp://127.0.0.1:0", flush_interval_s=0.2)
    maps = ctx.socket(zmq.PUSH)
    maps.setsockopt(zmq.LINGER, 2000)
    maps.connect(archiver.maps.getsockopt_string(zmq.LAST_ENDPOINT))
    done = threading.Event()
    thread = threading.Thread(target=archiver.run, kwargs={"stop_when": done.is_set}, daemon=True)
    thread.start()
    frames = frames_for(8, shape=SHAPE)
    try:
        maps.send_multipart(_final_maps("fast-run", frames))
        maps.send_multipart(_final_maps("never-started", frames))
        assert until(lambda: len(archiver.early_maps) == 2, 20)
        sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=MAP, run="fast-run", **GEOMETRY)
        sink.start_map(len(frames))
        for i, f in enumerate(frames):
            sink.send_frame(f, index=i % 4, eta=10.0, phi=0, nu=0, delta=30)
        sink.stop_run()
        assert until(lambda: (tmp_path / "archive" / "fast-run" / "map_0000_maps.h5").exists(), 20)
        assert [archiver_module._maps_run(parts) for _, parts in archiver.early_maps] == ["never-started"]
        monkeypatch.setattr(archiver_module, "EARLY_MAPS_S", 0.0)
        assert until(lambda: archiver.dropped["maps_of_unknown_run"] == 1, 20)
        assert not archiver.early_maps and not (tmp_path / "archive" / "never-started").exists()
    finally:
        done.set()
        thread.join(10)
        sink.close()
        maps.close()
