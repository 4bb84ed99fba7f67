"""The message checker accepts what the builders write and names what is wrong otherwise."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest

from opmon.streaming import protocol as P


def _frame_parts(**over):
    header = P.frame_header("run-1", 0, 5, 5, 3, 10.0, 0.0, 0.0, 30.0, "uint32", (8, 8), x=1.0, y=2.0)
    header.update(over)
    return [P.pack(header), np.arange(64, dtype=np.uint32).tobytes()]


def test_frame_round_trip_is_a_view_of_the_buffer():
    parts = _frame_parts()
    msg = P.parse(parts)
    assert msg.kind == "frame" and msg.header["seq"] == 5
    np.testing.assert_array_equal(msg.array, np.arange(64, dtype=np.uint32).reshape(8, 8))
    assert not msg.array.flags.owndata


@pytest.mark.parametrize("parts, reason", [
    ([b"\x92\x01\x02"], "header"),                                  # a msgpack list
    ([b"\xc1garbage"], "header"),
    ([P.pack({"v": 2, "kind": "frame"})], "version"),
    ([P.pack({"v": True, "kind": "frame"})], "version"),
    ([P.pack({"v": 1, "kind": "pickle"})], "kind"),
    (_frame_parts()[:1], "parts"),
    (_frame_parts() + [b"x"], "parts"),
    (_frame_parts(seq="5"), "field"),
    (_frame_parts(eta=None), "field"),
    (_frame_parts(seq=-1), "field"),
    (_frame_parts(eta=float("nan")), "field"),
    (_frame_parts(delta=float("inf")), "field"),
    (_frame_parts(dtype="float64"), "dtype"),
    (_frame_parts(shape=[100000, 100000]), "shape"),
    (_frame_parts(shape=[8, 8, 1]), "shape"),
    (_frame_parts(shape=[0, 64]), "shape"),
    (_frame_parts(shape=[16, 8]), "size"),
    (_frame_parts(monitor=0.0), "field"),                          # no beam: nothing to divide by
    (_frame_parts(monitor="1e5"), "field"),
    (_frame_parts(monitor=float("nan")), "field"),
    ([P.pack(P.map_end_header("r", 0, 3, 2)), b"extra"], "parts"),
    ([P.pack({**P.stop_header("r", "success", 1, 1), "exit_status": "maybe"})], "field"),
])
def test_bad_messages_are_rejected_with_their_reason(parts, reason):
    with pytest.raises(P.RejectedMessage) as info:
        P.parse(parts)
    assert info.value.reason == reason


def test_a_frames_monitor_travels_in_its_header_only_when_there_is_one():
    assert "monitor" not in P.parse(_frame_parts()).header
    header = P.frame_header("run-1", 0, 5, 5, 3, 10.0, 0.0, 0.0, 30.0, "uint32", (8, 8), monitor=7.5e4)
    assert P.parse([P.pack(header), np.zeros(64, np.uint32).tobytes()]).header["monitor"] == 7.5e4


def test_oversized_header_is_rejected_before_decoding():
    big = msgpack.packb({"v": 1, "kind": "frame", "pad": "x" * (P.MAX_HEADER_BYTES + 10)})
    with pytest.raises(P.RejectedMessage, match="header"):
        P.parse([big, b""])


def test_start_with_mask_carries_it():
    header = P.start_header("r", energy_ev=1e4, distance_m=1.6, pixel_size_m=(5.5e-5, 5.5e-5), beam_center=(1, 2),
                            frame_shape=(4, 4), dtype="uint16", map_shape=(2, 3), mask=True)
    mask = np.eye(4, dtype=np.uint8)
    msg = P.parse([P.pack(header), mask.tobytes()])
    np.testing.assert_array_equal(msg.array, mask)
    with pytest.raises(P.RejectedMessage, match="size"):
        P.parse([P.pack(header), b"\x00" * 3])


def test_pack_refuses_objects_it_cannot_send_plainly():
    with pytest.raises(TypeError, match="never pickle"):
        P.pack({"v": 1, "obj": object()})
    assert P.unpack(P.pack({"a": np.float32(1.5), "b": np.arange(3)})) == {"a": 1.5, "b": [0, 1, 2]}


def _chunk(frame):
    from opmon.streaming.archive.chunks import bitshuffle_lz4_chunk
    return bitshuffle_lz4_chunk(frame)


def _chunk_only_parts(chunk, **over):
    header = P.frame_header("run-1", 0, 5, 5, 3, 10.0, 0.0, 0.0, 30.0, "uint32", (8, 8), chunk_only=True)
    header.update(over)
    return [P.pack(header), chunk]


def test_a_chunk_only_frame_reaches_only_a_receiver_that_stores_chunks():
    frame = np.arange(64, dtype=np.uint32).reshape(8, 8)
    parts = _chunk_only_parts(_chunk(frame))
    msg = P.parse(parts, accept_chunk_only=True)
    assert msg.array is None and bytes(msg.chunk) == parts[1]
    with pytest.raises(P.RejectedMessage) as info:     # the live processor needs pixels
        P.parse(parts)
    assert info.value.reason == "chunk"


def test_a_chunk_that_does_not_describe_its_frame_is_rejected_from_its_sizes():
    """Checked from the 12-byte chunk header and the chunk's length, nothing decompressed."""
    frame = np.arange(64, dtype=np.uint32).reshape(8, 8)
    good = _chunk(frame)
    wrong_size = _chunk(np.arange(128, dtype=np.uint32).reshape(16, 8))    # another frame's chunk
    bad_block = good[:8] + (12).to_bytes(4, "big") + good[12:]              # 3 elements a block
    cases = [(wrong_size, "size"), (bad_block, "chunk"), (good[:10], "chunk"), (good[:14], "size"),
             (good + bytes(600), "size")]
    for chunk, reason in cases:
        with pytest.raises(P.RejectedMessage) as info:
            P.parse(_chunk_only_parts(chunk), accept_chunk_only=True)
        assert info.value.reason == reason, chunk[:16]
    raw_and_chunk = _frame_parts(chunk="bslz4") + [wrong_size]            # the three-part form too
    with pytest.raises(P.RejectedMessage) as info:
        P.parse(raw_and_chunk)
    assert info.value.reason == "size"
    with pytest.raises(P.RejectedMessage) as info:                          # chunk only, but a raw part too
        P.parse(_chunk_only_parts(good) + [frame.tobytes()], accept_chunk_only=True)
    assert info.value.reason == "parts"
