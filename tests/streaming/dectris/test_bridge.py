"""The bridge's checks and loss accounting: every bad message counted with a clear reason,
every good frame forwarded intact, whatever came before it."""
from __future__ import annotations

import logging

import cbor2
import numpy as np
import pytest
import zmq

from opmon.streaming.dectris.bridge import StreamV2Bridge, detector_endpoint
from opmon.streaming.dectris.codec import dumps, multi_dim_array
from opmon.streaming.dectris.sender import compress, end_message, image_message, start_message
from opmon.streaming.protocol import parse
from opmon.streaming.publisher import ZmqFrameSink

SHAPE = (12, 10)


@pytest.fixture
def bridged(ctx):
    """A bridge whose sink sends to a PULL socket; `received()` drains what came out."""
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sink = ZmqFrameSink([f"tcp://127.0.0.1:{port}"], bind=False, context=ctx, stall_timeout_s=5)
    bridge = StreamV2Bridge(sink)

    def received():
        out = []
        while pull.poll(300):
            out.append(parse(pull.recv_multipart(copy=False)))
        return out
    yield bridge, received
    sink.close()
    pull.close(linger=0)


def frames(n, dtype="uint16", seed=0):
    return [np.random.default_rng(seed + i).poisson(3.0, SHAPE).astype(dtype) for i in range(n)]


def start(series_id=1, n=4, dtype="uint16", **kw):
    return dumps(start_message(series_id, frame_shape=SHAPE, dtype=dtype, n_images=n, channels=("t1", "t2"), **kw))


def image(series_id, image_id, frame, algorithm="bslz4"):
    return dumps(image_message(series_id, image_id, {"t1": frame, "t2": frame + 1}, algorithm))


def image_with(series_id, image_id, payload):
    """An image whose t1 channel is tag 40 around `payload` (for hand-broken encodings)."""
    message = image_message(series_id, image_id, {"t2": np.zeros(SHAPE, "uint16")}, None)
    message["data"]["t1"] = cbor2.CBORTag(40, [list(SHAPE), payload])
    return dumps(message)


def frame_arrays(messages):
    return [np.array(m.array) for m in messages if m.kind == "frame"]


def test_every_dtype_and_codec_arrives_intact_with_its_chunk(bridged):
    bridge, received = bridged
    sent = []
    for sid, (dtype, algorithm) in enumerate([("uint8", "bslz4"), ("uint16", "lz4"), ("uint32", None), ("uint32", "bslz4")]):
        fr = frames(2, dtype, seed=10 * sid)
        bridge.handle(start(sid, n=2, dtype=dtype))
        for i, f in enumerate(fr):
            bridge.handle(image(sid, i, f, algorithm))
        bridge.handle(dumps(end_message(sid)))
        got = [m for m in received() if m.kind == "frame"]
        assert [np.array(m.array).dtype for m in got] == [np.uint16 if dtype == "uint8" else np.dtype(dtype)] * 2
        np.testing.assert_array_equal(frame_arrays(got), fr)
        # only bslz4 of the frame's own element size travels on as a chunk for the archive
        assert [m.chunk is not None for m in got] == [algorithm == "bslz4" and dtype != "uint8"] * 2
        if got[0].chunk is not None:
            assert bytes(got[0].chunk) == compress(fr[0]).data
        sent += fr
    assert bridge.counters.accepted == len(sent) and bridge.counters.lost == 0
    assert not bridge.counters.rejected


def test_big_endian_and_column_major_arrays_decode_to_the_same_frame(bridged):
    bridge, received = bridged
    f = frames(1)[0]
    bridge.handle(start(n=2))
    bridge.handle(image_with(1, 0, cbor2.CBORTag(65, f.astype(">u2").tobytes())))          # big-endian uint16
    message = image_message(1, 1, {"t2": f}, None)
    message["data"]["t1"] = cbor2.CBORTag(1040, [list(SHAPE), cbor2.CBORTag(69, f.T.astype("<u2").tobytes())])
    bridge.handle(dumps(message))                                                          # column-major
    np.testing.assert_array_equal(frame_arrays(received()), [f, f])


def test_malformed_messages_are_counted_by_reason_and_lose_nothing(bridged, caplog):
    bridge, received = bridged
    fr = frames(6)
    truncated = compress(fr[2])
    bad = {
        "cbor": [b"\x1c\x00 garbage", dumps({"type": "image"})[:5]],
        "type": [cbor2.dumps([1, 2]), dumps({"type": "status"})],
        "tag": [image_with(1, 2, cbor2.CBORTag(69, "text, not bytes")),
                image_with(1, 2, cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2]))),
                dumps({**image_message(1, 2, {}), "data": {"t1": cbor2.CBORTag(40, ["no dims", b""])}})],
        "compression": [image_with(1, 2, cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, truncated.data[:-9]]))),
                        image_with(1, 2, cbor2.CBORTag(69, cbor2.CBORTag(56500, ["zstd9", 2, truncated.data]))),
                        image_with(1, 2, cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 4, truncated.data])))],
        "shape": [image_with(1, 2, cbor2.CBORTag(69, b"\x00" * 10))],
        "dtype": [image_with(1, 2, cbor2.CBORTag(85, np.zeros(SHAPE, "<f4").tobytes()))],
        "channel": [dumps({**image_message(1, 2, {"t9": fr[2]})})],
        "unknown_series": [image(1, 0, fr[0])],          # before any start
        "series": [image(7, 2, fr[2]), dumps(end_message(7))],
    }
    bridge.handle(bad["unknown_series"][0])
    bridge.handle(start(n=6))
    bridge.handle(image(1, 0, fr[0]))
    bridge.handle(image(1, 1, fr[1]))
    for reason, messages in bad.items():
        for message in messages[1 if reason == "unknown_series" else 0:]:
            assert not bridge.handle(message), reason
    assert not bridge.handle(image(1, 1, fr[1]))          # image_id already seen
    bridge.handle(image(1, 2, fr[2]))
    bridge.handle(image(1, 4, fr[4]))                     # image 3 never came: a gap
    bridge.handle(dumps(end_message(1)))                  # and image 5 never came before the end
    assert dict(bridge.counters.rejected) == {reason: len(messages) for reason, messages in bad.items()}
    assert bridge.counters.duplicate == 1
    assert bridge.counters.lost == 2 and bridge.counters.accepted == 4
    assert bridge.reports[0].gaps == [(3, 3), (5, 5)] and bridge.reports[0].ended
    out = received()
    np.testing.assert_array_equal(frame_arrays(out), [fr[0], fr[1], fr[2], fr[4]])
    assert [m.header["index"] for m in out if m.kind == "frame"] == [0, 1, 2, 4]
    assert out[-1].kind == "stop"
    text = caplog.text
    for phrase in ("does not decompress", "zstd9", "bslz4 element size 4", "image has no channel 't1' (has ['t9'])",
                   "while no series is open", "expected a byte string", "images 3..3 lost"):
        assert phrase in text, phrase


def test_a_start_without_distance_or_with_a_bad_scan_is_refused_naming_the_field(bridged, caplog):
    bridge, _ = bridged
    message = start_message(1, frame_shape=SHAPE, dtype="uint16", n_images=4)
    message["detector_translation"] = [0.0, 0.0, 0.0]
    assert not bridge.handle(dumps(message))
    assert not bridge.handle(start(user_data={"opmon": {"map_shape": [2, 2], "map_index": [0, 1, 2, 9]}}))
    assert not bridge.handle(start(user_data={"opmon": {"eta": [1.0, 2.0]}}))
    assert dict(bridge.counters.rejected) == {"field": 1, "user_data": 2}
    assert "start.detector_translation" in caplog.text and "user_data.opmon.map_index" in caplog.text
    assert "user_data.opmon.eta" in caplog.text


def test_a_series_without_end_is_aborted_and_counted_when_the_next_starts(bridged):
    bridge, received = bridged
    fr = frames(3)
    bridge.handle(start(1, n=3))
    bridge.handle(image(1, 0, fr[0]))
    bridge.handle(start(2, n=1))
    bridge.handle(image(2, 0, fr[1]))
    bridge.handle(dumps(end_message(2)))
    kinds = [(m.kind, m.header.get("exit_status")) for m in received() if m.kind in ("start", "stop")]
    assert kinds == [("start", None), ("stop", "abort"), ("start", None), ("stop", "success")]
    assert bridge.counters.lost == 0 and not bridge.reports[0].ended   # never ended: its images are not counted
    assert bridge.reports[1].ended and bridge.reports[1].received == 1


def test_series_sharing_a_run_become_its_maps_with_scan_points_from_user_data(bridged):
    bridge, received = bridged
    fr = frames(4)
    for sid in (1, 2):
        user = {"opmon": {"run": "cycle-7", "map_shape": [2, 2], "map_index": [3, 2, 1, 0], "eta": [10.0, 10.1, 10.2, 10.3],
                          "x": [1.0, 2.0, 3.0, 4.0], "last_map": sid == 2}}
        bridge.handle(start(sid, n=4, user_data=user, goniometer={"two_theta": {"start": 30.0, "increment": 0.0}}))
        for i in range(4):
            bridge.handle(image(sid, i, fr[i]))
        bridge.handle(dumps(end_message(sid)))
    out = received()
    assert [m.kind for m in out].count("start") == 1 and out[-1].kind == "stop"
    assert [m.header["map"] for m in out if m.kind == "map_start"] == [0, 1]
    first = [m.header for m in out if m.kind == "frame"][:4]
    assert [h["index"] for h in first] == [3, 2, 1, 0] and [h["eta"] for h in first] == [10.0, 10.1, 10.2, 10.3]
    assert {h["delta"] for h in first} == {30.0} and [h["x"] for h in first] == [1.0, 2.0, 3.0, 4.0]
    assert all(m.run == "cycle-7" for m in out)


def test_the_pixel_mask_and_the_first_images_nodata_pixels_make_the_runs_mask(bridged):
    bridge, received = bridged
    f = frames(1)[0]
    f[0, 0] = 65535                                       # DECTRIS's NODATA: a module gap
    mask = np.zeros(SHAPE, np.uint32)
    mask[5, 5] = 2                                        # any bit set: a bad pixel
    bridge.handle(dumps(start_message(1, frame_shape=SHAPE, dtype="uint16", n_images=1, masks={"threshold_1": mask})))
    bridge.handle(image_message_t1(1, 0, f))
    start_msg = received()[0]
    assert start_msg.kind == "start"
    assert [tuple(v) for v in np.array(start_msg.array).nonzero()] == [(0, 5), (0, 5)]


def image_message_t1(series_id, image_id, frame):
    return dumps(image_message(series_id, image_id, {"threshold_1": frame}))


def test_detector_endpoint_names_a_bad_source():
    assert detector_endpoint("dectris:tcp://10.0.0.5:31001") == "tcp://10.0.0.5:31001"
    with pytest.raises(ValueError, match="expected dectris:tcp://HOST:PORT"):
        detector_endpoint("eiger:tcp://h:1")


def test_rejections_are_logged_once_per_message_kind_at_first(bridged, caplog):
    bridge, _ = bridged
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            bridge.handle(b"garbage")
    assert caplog.text.count("detector message rejected") == 5 and bridge.counters.rejected["cbor"] == 20
