"""Display channel -> model over real ZeroMQ sockets, including the live processor's encoder."""
from __future__ import annotations


import numpy as np
import pytest
import zmq

from opmon.dashboard.model import DashboardModel
from opmon.dashboard.subscriber import DisplayMessageError, DisplaySubscriber, dispatch, map_update
from opmon.processors.maps import derive_maps
from opmon.streaming.map_messages import encode_map
from opmon.streaming.protocol import pack, unpack
from tests.waiting import until


def _wait(pred, what, timeout=10.0):
    if not until(pred, timeout, interval_s=0.02):
        raise AssertionError(f"timed out waiting for {what}")


def _processor_result(ny=4, nx=5):
    rng = np.random.default_rng(0)
    s0 = rng.uniform(50, 100, (ny, nx))
    q = np.array([0.0, 0.0, 2 * np.pi / 2.04]) + rng.normal(0, 1e-4, (ny, nx, 3))
    s1 = s0[..., None] * q
    s2 = s0[..., None, None] * (q[..., :, None] * q[..., None, :] + 1e-6 * np.eye(3))
    return derive_maps(s0, s1, s2, np.full((ny, nx), 30, dtype=np.int64))


def _on_the_wire(parts):
    """The message parts as bytes, as a subscriber receives them."""
    return [p if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes() for p in parts]


def test_decodes_the_live_processors_map_message():
    result = _processor_result()
    parts = encode_map(result, run="r1", map_number=3, final=False, frames=300, n_frames=600, frames_lost=0)
    header = unpack(parts[1])
    upd = map_update(header, [memoryview(p) for p in parts[2:]])
    assert upd.map_number == 3 and not upd.final and upd.progress == pytest.approx(0.5)
    np.testing.assert_array_equal(upd.arrays["d_spacing"], result.d_spacing)
    np.testing.assert_array_equal(upd.arrays["q"], result.q)
    assert upd.t_processed == header["t"]


def test_round_trip_and_rejections():
    parts = _on_the_wire(encode_map(_processor_result(2, 3), run="", map_number=1, final=True, frames=9, n_frames=9,
                                    frames_lost=0))
    m = DashboardModel()
    assert dispatch(m, parts) == "map"
    assert m.latest_map()[1].seq == 9
    with pytest.raises(DisplayMessageError, match="bytes"):
        dispatch(m, parts[:2] + [parts[2][:-8]] + parts[3:])      # truncated buffer
    with pytest.raises(DisplayMessageError, match="buffers"):
        dispatch(m, parts[:-1])
    with pytest.raises(DisplayMessageError, match="version"):
        dispatch(m, [b"status", pack({"v": 2, "kind": "status"})])
    with pytest.raises(DisplayMessageError, match="msgpack"):
        dispatch(m, [b"status", b"\xc1garbage"])
    with pytest.raises(DisplayMessageError, match="reading"):
        dispatch(m, [b"reading", pack({"v": 1, "kind": "reading", "t": 1.0})])


def test_subscriber_feeds_the_model_from_several_publishers():
    ctx = zmq.Context()
    live, acq = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    try:
        p1 = live.bind_to_random_port("tcp://127.0.0.1")
        p2 = acq.bind_to_random_port("tcp://127.0.0.1")
        model = DashboardModel()
        sub = DisplaySubscriber(model, [f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}"], ctx).start()
        result = _processor_result()
        reading = pack({"v": 1, "kind": "reading", "run": "r", "t": 5.0, "voltage_v": 4.7, "current_a": 1e-5,
                        "charge_mah": 0.2})
        status = pack({"v": 1, "kind": "status", "source": "acquisition", "t": 5.0, "state": "paused"})

        def send_all():     # PUB/SUB drops until the subscription is up: resend (latest wins)
            live.send_multipart(encode_map(result, run="r", map_number=0, final=True, frames=600,
                                           n_frames=600, frames_lost=0))
            live.send_multipart([b"junk", b"not msgpack"])          # not subscribed: never seen
            acq.send_multipart([b"reading", reading])
            acq.send_multipart([b"status", status])
            acq.send_multipart([b"status", b"\xc1"])                # subscribed, bad: counted
            return sub.counts["map"] and sub.counts["status"] and sub.counts["reading"]

        _wait(send_all, "all message kinds to arrive")
        _wait(lambda: sub.rejected, "the bad status to be counted")
        assert model.status()[1]["state"] == "paused"
        assert model.history()[1][0].update.map_number == 0
        new, _ = model.readings_since(0)
        assert new["voltage"][0] == 4.7
        sub.close()
    finally:
        live.close(0)
        acq.close(0)
        ctx.term()


def test_progress_without_n_frames_comes_from_the_visited_pixels():
    result = _processor_result()
    result.frames[:] = 0
    result.frames[:2] = 30                      # 2 of 4 rows visited
    parts = encode_map(result, run="r", map_number=0, final=False, frames=300, n_frames=0, frames_lost=0)
    upd = map_update(unpack(parts[1]), parts[2:])
    assert upd.progress == pytest.approx(0.5)
