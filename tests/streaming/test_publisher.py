"""The frame sink gives every lossless receiver the whole run, and blocks rather than drop."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from opmon.errors import FrameShapeError, ProtocolError, StreamStalledError
from opmon.streaming.publisher import ZmqFrameSink
from opmon.streaming.receiver import FrameReceiver

from .conftest import GEOMETRY, frames_for


def test_two_receivers_each_get_every_frame_in_order(ctx):
    sink = ZmqFrameSink(["tcp://127.0.0.1:*", "tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=10)
    receivers = [FrameReceiver(ep, context=ctx) for ep in sink.endpoints]
    frames = frames_for(30, dtype=np.uint16)
    got: list[list] = [[], []]

    def drain(i):
        while True:
            msg = receivers[i].recv(timeout_ms=10000)
            if msg is None:
                return
            got[i].append((msg.kind, msg.header.get("seq"), None if msg.array is None else msg.array.copy()))
            if msg.kind == "stop":
                return

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    run = sink.start_run(frame_shape=(8, 8), dtype="uint16", map_shape=(3, 5), **GEOMETRY)
    for m in range(2):
        sink.start_map(15)
        for i in range(15):
            sink.send_frame(frames[m * 15 + i], index=i, eta=10 + 0.01 * i, phi=0, nu=0, delta=30)
    sink.stop_run()
    for t in threads:
        t.join(20)
    for i in range(2):
        kinds = [k for k, _, _ in got[i]]
        assert kinds == ["start"] + (["map_start"] + ["frame"] * 15 + ["map_end"]) * 2 + ["stop"]
        seqs = [s for k, s, _ in got[i] if k == "frame"]
        assert seqs == list(range(30))
        data = np.array([a for k, _, a in got[i] if k == "frame"])
        np.testing.assert_array_equal(data, frames)
        assert receivers[i].counters.lost == 0 and receivers[i].tracker.finished[run] == "success"
        receivers[i].close()
    sink.close()


def test_a_receiver_that_stops_reading_stalls_the_sender_loudly(ctx):
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, sndhwm=2, stall_timeout_s=0.3)
    receiver = FrameReceiver(sink.endpoints[0], context=ctx, rcvhwm=2)   # connected, never reads
    frame = np.zeros((512, 512), np.uint32)
    sink.start_run(frame_shape=(512, 512), dtype="uint32", map_shape=(10, 10), **GEOMETRY)
    sink.start_map()
    with pytest.raises(StreamStalledError, match="no receiver took frames"):
        for i in range(2000):
            sink.send_frame(frame, index=0, eta=0, phi=0, nu=0, delta=0)
    receiver.close()
    for sock in sink.sockets:
        sock.close(linger=0)


def test_sink_refuses_frames_that_do_not_match_the_run(ctx):
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=0.2)
    with pytest.raises(ProtocolError):
        sink.send_frame(np.zeros((8, 8), np.uint32), index=0, eta=0, phi=0, nu=0, delta=0)
    for sock in sink.sockets:
        sock.close(linger=0)
    with pytest.raises(FrameShapeError):
        sink2 = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=0.2)
        receiver = FrameReceiver(sink2.endpoints[0], context=ctx)
        try:
            sink2.start_run(frame_shape=(8, 8), dtype="uint32", map_shape=(2, 2), **GEOMETRY)
            sink2.start_map()
            sink2.send_frame(np.zeros((8, 9), np.uint32), index=0, eta=0, phi=0, nu=0, delta=0)
        finally:
            receiver.close()
            for sock in sink2.sockets:
                sock.close(linger=0)
