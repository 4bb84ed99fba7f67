"""A foreign RunEngine's grid scan of ophyd-async's simulated detector, followed live by opmon.

The producer (`bluesky_producer.py`) is its own process with no opmon code: a stock RunEngine,
ophyd-async 0.21.3's `SimBlobDetector` writing SWMR HDF5 and a `bluesky.plans.grid_scan`,
published through bluesky's own 0MQ Proxy and Publisher. opmon's bridge follows the documents
and the file into the real live processor; its final maps must equal `opmon process`
(processors.offline.process_entry) on the same HDF5 frames written in the FORMATS.md layout by a
small adapter below, whose map index comes from the motor positions in the events (binned to
the grid), not from the bridge's seq_num arithmetic.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from opmon.processors.live import open_live_processor
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.streaming.archive.raw import RawMapWriter
from opmon.streaming.bluesky_bridge import BlueskyBridge
from opmon.streaming.bluesky_options import FollowOptions
from opmon.streaming.detector_file import resource_path
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import assert_same_maps, map_sockets, recv_map

PRODUCER = Path(__file__).with_name("bluesky_producer.py")
GEOMETRY = dict(x_pixel_size=55e-6, y_pixel_size=55e-6, beam_center_x=160.0, beam_center_y=120.0)
START_MD = ["--md", "incident_energy=10000", "--md", "distance=1.6"]    # the rest comes from "--geometry"
SHAPE = (5, 6)
EXTENT = (2.0, 2.5)     # y and x ranges of the producer's grid_scan (from 0)


class Beamline:
    """The producer process: its proxy address, and the go / finish handshake over stdin."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(PRODUCER), str(directory), *extra], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.address = self.proc.stdout.readline().strip()
        assert self.address.startswith("tcp://127.0.0.1:"), self.address

    def go_when(self, connected, timeout_s: float = 60) -> None:
        """Start the grid scan once `connected()` (the subscriber saw a warm-up document)."""
        deadline = time.monotonic() + timeout_s
        while not connected():
            assert time.monotonic() < deadline and self.proc.poll() is None, "subscriber never saw the producer"
            time.sleep(0.02)
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_done(self) -> None:
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("bye\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def offline_maps_of(docs: list[tuple[str, dict]], roi, tmp_path: Path):
    """`opmon process` on the detector's HDF5 frames, placed on the map by their motor positions."""
    primary = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary")
    baseline = next(d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "baseline")
    events = sorted((d for n, d in docs if n == "event" and d["descriptor"] == primary), key=lambda d: d["seq_num"])
    eta, delta = (next(d["data"][k] for n, d in docs if n == "event" and d["descriptor"] == baseline)
                  for k in ("eta", "delta"))
    resource = next(d for n, d in docs if n == "stream_resource" and d["data_key"] == "det")
    with h5py.File(resource_path(resource), "r", swmr=True) as f:
        frames = f[resource["parameters"]["dataset"]][()]
    assert frames.dtype == np.uint8 and len(frames) == len(events) == SHAPE[0] * SHAPE[1]
    iy = np.rint([e["data"]["stage-y"] / (EXTENT[0] / (SHAPE[0] - 1)) for e in events]).astype(int)
    ix = np.rint([e["data"]["stage-x"] / (EXTENT[1] / (SHAPE[1] - 1)) for e in events]).astype(int)
    index = iy * SHAPE[1] + ix
    assert sorted(index) == list(range(SHAPE[0] * SHAPE[1]))      # every pixel once
    with h5py.File(tmp_path / "offline_raw.h5", "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=frames.shape[1:], dtype=np.uint16, map_shape=SHAPE,
                              energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(120.0, 160.0))
        writer.append(frames.astype(np.uint16), index, eta, 0.0, 0.0, delta)
    with h5py.File(tmp_path / "offline_raw.h5", "r") as f:
        result, _ = process_entry(f["entry"], ProcessOptions(roi=tuple(roi)))
    return result, frames, index


@pytest.mark.timeout(180)
def test_a_foreign_runengines_grid_scan_gives_live_maps_equal_to_offline_processing_of_its_hdf5(tmp_path):
    data_dir = tmp_path / "detector"
    data_dir.mkdir()
    beamline = Beamline(data_dir, "--snake", *START_MD)
    ctx = zmq.Context()
    maps_in, maps_endpoint, _display = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, maps_endpoint, publish_interval_s=0.1, context=ctx)
    docs: list[tuple[str, dict]] = []
    options = FollowOptions(angles={"phi": 0.0, "nu": 0.0}, geometry=GEOMETRY, geometry_source="geometry.toml")
    bridge = BlueskyBridge(beamline.address, sink, options, on_document=lambda n, d: docs.append((n, d)), context=ctx)
    done = threading.Event()
    threads = [threading.Thread(target=processor.serve, kwargs={"stop_when": done.is_set}, daemon=True),
               threading.Thread(target=bridge.serve, args=(done.is_set,), daemon=True)]
    for t in threads:
        t.start()
    try:
        beamline.go_when(lambda: bridge.subscriber.received > 0)
        header, live = recv_map(maps_in, 120_000)
        beamline.wait_done()
    finally:
        done.set()
        for t in threads:
            t.join(30)
        beamline.close()
    start = next(d for n, d in docs if n == "start" and d["plan_name"] == "grid_scan")
    assert header["run"] == start["uid"] and header["final"]
    assert header["frames"] == header["n_frames"] == 30 and header["frames_lost"] == 0
    assert bridge.follower.finished == [start["uid"]] and not bridge.follower.failed
    assert set(bridge.follower.skipped) == {d["uid"] for n, d in docs if n == "start" and d["plan_name"] == "count"}
    offline, frames, index = offline_maps_of(docs, header["options"]["roi"], tmp_path)
    assert_same_maps(live, offline)
    per_pixel = np.zeros(SHAPE[0] * SHAPE[1])
    np.add.at(per_pixel, index, frames.reshape(len(frames), -1).sum(axis=1))
    assert np.ptp(per_pixel) > 0      # the pattern varies over the map, so a wrong pixel order would show
    np.testing.assert_array_equal(live.intensity.ravel() > 0, per_pixel > 0)
    ctx.destroy(linger=0)


@pytest.mark.timeout(120)
def test_pickled_documents_are_refused_with_a_message_and_nothing_is_followed(tmp_path, caplog):
    data_dir = tmp_path / "detector"
    data_dir.mkdir()
    beamline = Beamline(data_dir, "--pickle", *START_MD)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    sink = ZmqFrameSink([f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"], bind=False, context=ctx)
    bridge = BlueskyBridge(beamline.address, sink, FollowOptions(geometry=GEOMETRY), context=ctx)
    done = threading.Event()
    thread = threading.Thread(target=bridge.serve, args=(done.is_set,), daemon=True)
    caplog.set_level(logging.ERROR, logger="opmon.streaming.bluesky_wire")
    thread.start()
    try:
        beamline.go_when(lambda: bridge.subscriber.received > 0)
        beamline.wait_done()
        deadline = time.monotonic() + 30
        while bridge.subscriber.rejected["pickle"] < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        thread.join(30)
        beamline.close()
    assert bridge.subscriber.rejected["pickle"] >= 10 and set(bridge.subscriber.rejected) == {"pickle"}
    assert bridge.follower.frames_sent == 0 and not pull.poll(0)
    assert "opmon never unpickles" in caplog.text and "serializer=msgpack.packb" in caplog.text
    ctx.destroy(linger=0)
