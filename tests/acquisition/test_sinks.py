"""Frame sinks: the HDF5 file per map and the ZeroMQ stream behind the same detector."""
from __future__ import annotations

import threading

import h5py
import numpy as np

from opmon.acquisition.mapping import MapGrid, sxdm_map
from opmon.acquisition.sinks import MapMeta, PublisherSink, TeeSink
from opmon.streaming.archive.map_sink import Hdf5MapSink
from opmon.streaming.archive.raw import read_raw_meta
from opmon.streaming.publisher import ZmqFrameSink
from opmon.streaming.receiver import FrameReceiver
from tests.acquisition.conftest import stream


def test_hdf5_sink_writes_one_valid_raw_file_per_map(tmp_path) -> None:
    sink = Hdf5MapSink(tmp_path / "maps", flush_period_s=0.0)
    meta = MapMeta(run_uid="r1", map_number=3, map_shape=(2, 2), frame_shape=(8, 8), dtype="uint16",
                   energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(4.0, 4.0))
    target = sink.open("r1", 3, meta)
    for i in range(4):
        header = dict(map_index=i, eta=19.0, phi=0.0, nu=0.0, delta=20.0, x=0.1 * i, y=0.0)
        assert sink.write(np.full((8, 8), i, np.uint16), header) == i
        with h5py.File(tmp_path / "maps" / "r1_map0003.h5", "r", libver="latest", swmr=True) as f:
            assert f["entry/instrument/detector/data"].shape[0] == i + 1  # readable while written
    sink.close()
    assert target.uri.endswith("r1_map0003.h5") and target.parameters["dataset"] == "/entry/instrument/detector/data"
    with h5py.File(tmp_path / "maps" / "r1_map0003.h5", "r") as f:
        m = read_raw_meta(f["entry"])
        assert m.n_frames == 4 and m.map_shape == (2, 2) and m.frame_dtype == np.uint16
        np.testing.assert_allclose(m.x_um, [0.0, 0.1, 0.2, 0.3])


def test_frames_stream_over_zeromq_and_land_in_files(RE, docs, make_beamline, tmp_path) -> None:
    publisher = ZmqFrameSink(["tcp://127.0.0.1:*"], stall_timeout_s=10.0)
    stream_sink = PublisherSink(publisher)
    bl = make_beamline(sink=TeeSink(Hdf5MapSink(tmp_path / "h5"), stream_sink))
    RE.subscribe(stream_sink)
    receiver = FrameReceiver(publisher.endpoints[0])
    got: list = []

    def pull() -> None:
        while True:
            msg = receiver.recv(timeout_ms=5000)
            if msg is None:
                return
            got.append((msg.kind, dict(msg.header), None if msg.array is None else np.array(msg.array)))
            if msg.kind == "stop":
                return

    thread = threading.Thread(target=pull)
    thread.start()
    try:
        uid = RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, MapGrid((4, 4), 0.1), bl.etas()[:2])).plan_result
        thread.join(timeout=30)
    finally:
        receiver.close()
        publisher.close()
    kinds = [k for k, _, _ in got]
    assert kinds[0] == "start" and kinds[-1] == "stop" and kinds.count("frame") == 32
    frames = [(h, a) for k, h, a in got if k == "frame"]
    assert all(h["run"] == uid for h, _ in frames)
    events = stream(docs, "primary")
    assert [h["index"] for h, _ in frames] == [e["data"]["detector-map_index"] for e in events]
    resource = next(d for n, d in docs if n == "stream_resource")
    with h5py.File(resource["uri"].removeprefix("file://"), "r") as f:
        on_disk = f["entry/instrument/detector/data"][()]
    np.testing.assert_array_equal(on_disk, np.stack([a for _, a in frames]))
    assert got[-1][1].get("exit_status", got[-1][1].get("status")) == "success"


def test_a_detector_compressing_at_the_source_sends_the_archiver_chunks_and_the_live_stream_raw_frames(
        RE, docs, make_beamline) -> None:
    """`[detector] compression = "bslz4"`: the archive stream carries each frame as its chunk only."""
    from opmon.streaming.archive.chunks import source_compressor
    from opmon.streaming.archive.frames import decode_bslz4
    publisher = ZmqFrameSink(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"], stall_timeout_s=10.0, archive_chunk_only=True)
    sink = PublisherSink(publisher, compress=source_compressor("bslz4"))
    bl = make_beamline(sink=sink)
    RE.subscribe(sink)
    receivers = [FrameReceiver(publisher.endpoints[0], accept_chunk_only=True), FrameReceiver(publisher.endpoints[1])]
    got: list[list] = [[], []]

    def pull(receiver, out) -> None:
        while (msg := receiver.recv(timeout_ms=5000)) is not None and msg.kind != "stop":
            if msg.kind == "frame":
                out.append((None if msg.array is None else np.array(msg.array),
                            None if msg.chunk is None else bytes(msg.chunk)))

    threads = [threading.Thread(target=pull, args=(r, g)) for r, g in zip(receivers, got)]
    for t in threads:
        t.start()
    try:
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, MapGrid((2, 2), 0.1), bl.etas()[:2]))
        for t in threads:
            t.join(timeout=30)
    finally:
        for r in receivers:
            r.close()
        publisher.close()
    archived, live = got
    assert len(archived) == len(live) == 8
    assert all(a is None and c is not None for a, c in archived) and all(c is None for _, c in live)
    for (_, chunk), (frame, _) in zip(archived, live):
        out = np.empty_like(frame)
        assert decode_bslz4(np.frombuffer(chunk, np.uint8), out.reshape(-1).view(np.uint8), out.itemsize) == 0
        np.testing.assert_array_equal(out, frame)
