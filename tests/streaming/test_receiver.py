"""Receivers keep good frames intact, count every loss and survive any garbage."""
from __future__ import annotations

import random

import msgpack
import numpy as np
import pytest
import zmq

from opmon.streaming import protocol as P
from opmon.streaming.receiver import FrameReceiver

from .conftest import GEOMETRY, frames_for

START = dict(GEOMETRY, frame_shape=(8, 8), dtype="uint32", map_shape=(4, 5))


def _pair(ctx):
    receiver = FrameReceiver("tcp://127.0.0.1:*", bind=True, context=ctx, rcvhwm=100000)
    endpoint = receiver.socket.getsockopt_string(zmq.LAST_ENDPOINT)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 10000)
    push.setsockopt(zmq.SNDHWM, 100000)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(endpoint)
    return receiver, push


def _frame(run, seq, frame, data, index=0, map_number=0):
    header = P.frame_header(run, map_number, seq, frame, index, 10.0, 0.0, 0.0, 30.0, "uint32", data.shape)
    return [P.pack(header), data]


def _drain(receiver, run=None, limit=100000):
    got = []
    for _ in range(limit):
        msg = receiver.recv(timeout_ms=5000)
        assert msg is not None, "receiver starved"
        got.append(msg)
        if msg.kind == "stop" and run in (None, msg.run):
            return got
    raise AssertionError("no stop")


def _malformed(rng: random.Random, good_run: str, stale_run: str, data: np.ndarray) -> list[bytes]:
    """One malformed message of a random family (each must be rejected)."""
    good = P.frame_header(good_run, 0, 0, 0, 0, 10.0, 0.0, 0.0, 30.0, "uint32", (8, 8))
    family = rng.randrange(13)
    if family == 0:
        return [P.pack(good), data.tobytes(), b"extra"]                  # wrong part count
    if family == 1:
        return [P.pack(good)]                                             # frame without buffer
    if family == 2:
        return [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64))), data.tobytes()]  # garbage header
    if family == 3:
        return [msgpack.packb([1, 2, 3]), data.tobytes()]
    if family == 4:
        return [P.pack({**good, "v": rng.choice([0, 2, 99, "1", None])}), data.tobytes()]  # unknown version
    if family == 5:
        return [P.pack({**good, "kind": rng.choice(["img", "", "pickle"])}), data.tobytes()]
    if family == 6:
        key = rng.choice(["seq", "eta", "run", "shape", "index", "map"])
        return [P.pack({**good, key: rng.choice(["x", None, [1], {"a": 1}, 1.5j.real if key == "run" else "7"])}), data.tobytes()]
    if family == 7:
        return [P.pack(good), data.tobytes()[: rng.randrange(0, 255)]]    # wrong buffer size
    if family == 8:
        shape = rng.choice([[2**31, 2**31], [100000, 8], [8, -8], [0, 0], [8], [8, 8, 8], [2**62, 2]])
        return [P.pack({**good, "shape": shape}), data.tobytes()]           # huge / bad shapes
    if family == 9:
        return [P.pack({**good, "dtype": rng.choice(["float64", "object", "V8", "<u4"])}), data.tobytes()]
    if family == 10:
        return [P.pack({**good, "index": rng.randrange(20, 10**9)}), data.tobytes()]   # outside the 4x5 map
    if family == 11:
        return [P.pack({**good, "run": stale_run}), data.tobytes()]       # frame of a finished run
    return [P.pack({**good, "run": f"nobody-{rng.randrange(10**6)}"}), data.tobytes()]  # never started


@pytest.mark.timeout(120)
def test_ten_thousand_malformed_messages_do_not_touch_good_frames(ctx):
    receiver, push = _pair(ctx)
    rng = random.Random(7)
    # A first run that ends: its later frames are stale.
    push.send_multipart([P.pack(P.start_header("old", **START))])
    push.send_multipart([P.pack(P.stop_header("old", "abort", 0, 0))])
    push.send_multipart([P.pack(P.start_header("live", **START))])
    push.send_multipart([P.pack(P.map_start_header("live", 0, (4, 5), 0))])
    good = frames_for(200)
    n_bad = 10_000
    bad_per_good = n_bad // len(good)
    sent_bad = 0
    for seq, frame in enumerate(good):
        for _ in range(bad_per_good):
            push.send_multipart(_malformed(rng, "live", "old", frame), copy=False)
            sent_bad += 1
        push.send_multipart(_frame("live", seq, seq, frame, index=seq % 20), copy=False)
    push.send_multipart([P.pack(P.map_end_header("live", 0, len(good), len(good) - 1))])
    push.send_multipart([P.pack(P.stop_header("live", "success", len(good), 1))])
    got = _drain(receiver, "live")
    frames = [m for m in got if m.kind == "frame"]
    assert sent_bad == n_bad
    assert len(frames) == len(good)
    for i, msg in enumerate(frames):
        assert msg.header["seq"] == i
        np.testing.assert_array_equal(msg.array, good[i])
    c = receiver.counters
    assert c.accepted == len(good) and c.lost == 0
    assert sum(c.rejected.values()) == n_bad
    assert set(c.rejected) >= {"parts", "header", "version", "kind", "field", "size", "shape", "dtype", "index",
                               "stale", "unknown_run"}
    receiver.close()
    push.close()


def test_gaps_are_counted_inside_maps_at_map_end_and_at_stop(ctx):
    receiver, push = _pair(ctx)
    data = frames_for(1)[0]
    push.send_multipart([P.pack(P.start_header("r", **START))])
    push.send_multipart([P.pack(P.map_start_header("r", 0, (4, 5), 6))])
    for seq in (0, 1, 3, 4):                                   # seq 2 lost
        push.send_multipart(_frame("r", seq, seq, data))
    push.send_multipart([P.pack(P.map_end_header("r", 0, 6, 5))])      # seq 5 lost at the end of the map
    push.send_multipart(_frame("r", 4, 4, data))                        # a duplicate
    push.send_multipart([P.pack(P.map_start_header("r", 1, (4, 5), 2))])
    push.send_multipart(_frame("r", 6, 0, data, map_number=1))
    push.send_multipart([P.pack(P.stop_header("r", "abort", 9, 2))])    # seq 7, 8 never arrived
    _drain(receiver)
    c = receiver.counters
    assert (c.accepted, c.lost, c.duplicate) == (5, 4, 1)
    run_maps = receiver.tracker  # run is finished now: its map bookkeeping was for display
    assert "r" in run_maps.finished and run_maps.finished["r"] == "abort"
    receiver.close()
    push.close()


def test_new_start_without_stop_aborts_the_old_run(ctx):
    receiver, push = _pair(ctx)
    data = frames_for(1)[0]
    push.send_multipart([P.pack(P.start_header("a", **START))])
    push.send_multipart([P.pack(P.start_header("b", **START))])
    push.send_multipart(_frame("a", 0, 0, data))
    push.send_multipart(_frame("b", 0, 0, data))
    push.send_multipart([P.pack(P.stop_header("b", "success", 1, 0))])
    got = _drain(receiver)
    assert [m.header["run"] for m in got if m.kind == "frame"] == ["b"]
    assert receiver.tracker.finished["a"] == "abort"
    assert receiver.counters.rejected["stale"] == 1
    receiver.close()
    push.close()


def test_resolver_adopts_a_run_joined_mid_stream(ctx):
    start = P.start_header("late", **START)
    receiver = FrameReceiver("tcp://127.0.0.1:*", bind=True, context=ctx,
                             resolver=lambda uid: (start, None) if uid == "late" else None)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(receiver.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    data = frames_for(1)[0]
    for seq in (40, 41, 43):
        push.send_multipart(_frame("late", seq, seq - 30, data))
    push.send_multipart([P.pack(P.stop_header("late", "success", 44, 1))])
    got = _drain(receiver)
    assert [m.header["seq"] for m in got if m.kind == "frame"] == [40, 41, 43]
    run_lost = receiver.counters.lost
    assert run_lost == 1            # 42; frames before 40 are not counted (recovered elsewhere)
    receiver.close()
    push.close()
