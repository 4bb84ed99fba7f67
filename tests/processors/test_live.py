"""The live processor makes the same maps as `opmon process`, inline and with worker processes."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from opmon.processors.live import LiveProcessor, open_live_processor
from opmon.processors.live.roi import roi_from_sum
from opmon.streaming import protocol as P
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import FRAME, GEOMETRY, MAP, assert_same_maps, recv_map, map_sockets, offline_maps, synthetic_map
from tests.waiting import until

@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(180)
def test_live_maps_equal_offline_maps_and_partials_come_first(tmp_path, workers):
    ctx = zmq.Context()
    maps_in, maps_endpoint, display = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], "tcp://127.0.0.1:*", maps_endpoint, workers=workers,
                              publish_interval_s=0.05, roi_frames=20, roi_wait_s=60.0, context=ctx)
    display.connect(processor.display.getsockopt_string(zmq.LAST_ENDPOINT))
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    maps = [synthetic_map(m) for m in range(2)]
    run = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
    partial_seen = []
    for m, frames in enumerate(maps):
        sink.start_map(len(frames))
        half = len(frames) // 2
        for frame, p, eta in frames[:half]:
            sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
        if m == 0:   # wait (bounded) for a partial map of the first half before sending the rest
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not partial_seen:
                if display.poll(100):
                    header = P.unpack(display.recv_multipart()[1])
                    if header["kind"] == "map" and not header["final"] and header["map"] == 0:
                        partial_seen.append(header)
        for frame, p, eta in frames[half:]:
            sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
        sink.end_map()
    sink.stop_run()
    finals = [recv_map(maps_in) for _ in range(2)]
    status = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (status is None or status["frames"] < 2 * len(maps[0])):
        if display.poll(100):
            topic, head, *_ = display.recv_multipart()
            if topic == b"status":
                status = P.unpack(head)
    processor.stopped = True
    thread.join(30)
    assert partial_seen and 0 < partial_seen[0]["frames"] <= len(maps[0]) // 2
    assert status["source"] == "live" and status["frames_lost"] == 0 and status["maps_done"] >= 0
    assert status["frames"] == 2 * len(maps[0]) and status["workers"] == workers
    roi = finals[0][0]["options"]["roi"]
    total = sum(fr.astype(np.float64) for fr, _, _ in maps[0][:20])
    if workers == 1:
        assert tuple(roi) == roi_from_sum(total)      # decided from the run's first 20 frames
    else:   # from the first frames each worker was dealt: about the first 20, ZeroMQ decides which
        assert np.abs(np.subtract(roi, roi_from_sum(total))).max() <= 1, (roi, roi_from_sum(total))
    for (header, result), frames in zip(finals, maps):
        assert header["run"] == run and header["final"] and header["frames"] == len(frames)
        assert header["frames_lost"] == 0
        assert_same_maps(result, offline_maps(frames, roi, tmp_path, f"map{header['map']}"))
    sink.close()
    ctx.destroy(linger=0)


@pytest.mark.timeout(120)
def test_an_aborted_run_ends_short_and_its_late_frames_are_dropped_and_counted(tmp_path):
    ctx = zmq.Context()
    maps_in, maps_endpoint, _display = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = LiveProcessor(sink.endpoints[0], None, maps_endpoint, roi=None, context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    frames = synthetic_map(0)
    first = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
    sink.start_map(len(frames))
    for frame, p, eta in frames[:10]:
        sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
    late = P.frame_header(first, 0, 10, 10, 0, 10.0, 0.0, 0.0, 30.0, "uint32", FRAME)
    second = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)   # aborts the first
    for sock in sink.sockets:                      # a stale frame of the aborted run, after its stop
        sock.send_multipart([P.pack(late), frames[10][0]])
    sink.start_map(len(frames))
    for frame, p, eta in frames:
        sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
    sink.stop_run()
    got = {}
    for _ in range(2):
        header, result = recv_map(maps_in)
        got[header["run"]] = (header, result)
    processor.stopped = True
    thread.join(30)
    assert got[first][0]["frames"] == 10 and got[first][0]["n_frames"] == len(frames)   # ended short
    assert got[second][0]["frames"] == len(frames) and got[second][0]["frames_lost"] == 0
    assert processor.receiver.counters.rejected["stale"] == 1
    assert processor.receiver.tracker.finished[first] == "abort"
    assert_same_maps(got[second][1], offline_maps(frames, (0, FRAME[0], 0, FRAME[1]), tmp_path, "second"))
    sink.close()
    ctx.destroy(linger=0)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(180)
def test_auto_roi_waits_for_a_bragg_peak_when_the_first_frames_show_none(tmp_path, workers):
    """An eta-outer scan starts off the rocking curve: its first frames hold background only.
    The ROI is decided once a peak stands out (not from noise), and the maps stay exact."""
    ctx = zmq.Context()
    maps_in, maps_endpoint, _ = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, maps_endpoint, workers=workers, roi_frames=20,
                                    roi_wait_s=60.0, context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    rng = np.random.default_rng(7)
    dark = [(rng.poisson(0.01, FRAME).astype(np.uint32), p % (MAP[0] * MAP[1]), 9.0) for p in range(60)]
    frames = dark + synthetic_map(0, seed=7)
    try:
        sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        sink.start_map(len(frames))
        for frame, p, eta in frames:
            sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
        sink.end_map()
        sink.stop_run()
        header, result = recv_map(maps_in)
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
    roi = tuple(header["options"]["roi"])
    r0, r1, c0, c1 = roi
    assert roi != (0, FRAME[0], 0, FRAME[1]) and r0 <= 17 and r1 >= 21 and c0 <= 21 and c1 >= 25, roi
    assert roi_from_sum(sum(fr.astype(np.float64) for fr, _, _ in dark)) == (0, FRAME[0], 0, FRAME[1])
    assert header["frames"] == len(frames) and header["frames_lost"] == 0
    assert_same_maps(result, offline_maps(frames, roi, tmp_path, "late-peak"))
    ctx.destroy(linger=0)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(180)
def test_finished_maps_release_their_sums(workers):
    """A 48 h run makes hundreds of maps in one run: once a map's final maps are out, its sums
    must not stay in memory (they did, ~0.7 MB per map on a 512 x 512 detector)."""
    ctx = zmq.Context()
    maps_in, maps_endpoint, _ = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, maps_endpoint, workers=workers,
                                    roi=(0, FRAME[0], 0, FRAME[1]), context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    try:
        sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        for m in range(3):
            frames = synthetic_map(m)
            sink.start_map(len(frames))
            for frame, p, eta in frames:
                sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
            sink.end_map()
        finals = [recv_map(maps_in)[0]["map"] for _ in range(3)]
        # the run is still open, with only finished maps in it: their sums go once their final
        # maps are out (the coordinator may still be merging the last one as it is received here)
        released = until(lambda: _sums_held(processor) == 0, 20)
        sink.stop_run()
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
    assert sorted(finals) == [0, 1, 2]
    assert released, f"{_sums_held(processor)} finished map(s) still hold their sums"
    ctx.destroy(linger=0)


def _sums_held(processor) -> int:
    """`sums_held()` read from this thread while the processor's own thread changes its maps."""
    try:
        return processor.sums_held()
    except RuntimeError:          # a map dict changed size while it was counted: look again
        return -1
