"""RunArchive reads back what the real archiver wrote: complete, short and aborted maps, the
seqs a map is missing, frames in seq order, and a corrupt chunk named instead of crashing."""
from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import zmq

from opmon.errors import ArchiveError, CorruptFrameError
from opmon.streaming import protocol as P
from opmon.streaming.archive.archiver import Archiver
from opmon.streaming.archive.layout import DATA, ENTRY
from opmon.streaming.archive.reader import RunArchive
from tests.streaming.conftest import GEOMETRY, frames_for
from tests.waiting import until

SHAPE = (16, 16)
MAP = (2, 4)
RUN = "run-reader-0001"
# map 0: seqs 0-7, all arrive; map 1: seqs 8-17 sent, 13 and 14 lost on the way; map 2: aborted after 3
SENT = {0: list(range(0, 8)), 1: list(range(8, 18)), 2: list(range(18, 21))}
LOST = {13, 14}


def _angles(seq: int) -> dict[str, float]:
    return {"eta": 10.0 + 0.01 * seq, "phi": 0.5, "nu": 1.0 + 0.001 * seq, "delta": 30.0}


def _stream(push: zmq.Socket, frames: np.ndarray, mask: np.ndarray) -> None:
    """The archive stream of one run, message by message as the acquisition sends it."""
    start = P.start_header(RUN, frame_shape=SHAPE, dtype="uint32", map_shape=MAP, mask=True, **GEOMETRY)
    push.send_multipart([P.pack(start), mask])
    for number, seqs in SENT.items():
        push.send(P.pack(P.map_start_header(RUN, number, MAP, len(seqs) if number < 2 else 8,
                                            {"kind": "test", "map": number})))
        for i, seq in enumerate(seqs):
            if seq in LOST:
                continue
            header = P.frame_header(RUN, number, seq, i, seq % 8, dtype="uint32", shape=SHAPE, x=0.1 * seq, y=None,
                                    t=1000.0 + seq, **_angles(seq))
            push.send_multipart([P.pack(header), frames[seq]])
        if number < 2:
            push.send(P.pack(P.map_end_header(RUN, number, len(seqs), seqs[-1])))
    push.send(P.pack(P.stop_header(RUN, "abort", 21, 2, "test")))


@pytest.fixture
def archived(tmp_path, ctx):
    """A run directory written by the real archiver from a real ZeroMQ stream."""
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    archiver = Archiver(tmp_path, f"tcp://127.0.0.1:{port}", flush_interval_s=0.1, context=ctx)
    done = threading.Event()
    thread = threading.Thread(target=archiver.run, kwargs={"stop_when": done.is_set}, daemon=True)
    thread.start()
    frames = frames_for(21, shape=SHAPE, seed=3)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[0, :3] = 1
    try:
        _stream(push, frames, mask)
        assert until(lambda: RUN in archiver.runs and archiver.run_dir is None, 20), "the archiver never saw the stop"
    finally:
        done.set()
        thread.join(10)
        push.close(linger=0)
    return RunArchive(tmp_path, RUN), frames, mask


def test_the_run_its_start_mask_and_end(archived):
    archive, _, mask = archived
    start, read_mask = archive.start(mask_wait_s=0.0)
    assert start["run"] == RUN and start["frame_shape"] == list(SHAPE) and start["map_shape"] == list(MAP)
    np.testing.assert_array_equal(read_mask, mask)
    assert archive.closed() and archive.stop()["exit_status"] == "abort"
    assert archive.map_numbers() == [0, 1, 2]
    assert not RunArchive(archive.path.parent, "no-such-run").exists()
    assert RunArchive(archive.path.parent, "no-such-run").start() is None


def test_complete_short_and_aborted_maps_and_their_missing_seqs(archived):
    archive, _, _ = archived
    whole, short, aborted = (archive.map_info(n) for n in (0, 1, 2))
    assert whole.complete and whole.frames == 8 and whole.sent == (0, 7)
    np.testing.assert_array_equal(whole.seqs, np.arange(8))
    assert not short.complete and short.frames == 8 and short.sent == (8, 17)
    np.testing.assert_array_equal(short.seqs, [8, 9, 10, 11, 12, 15, 16, 17])
    missing = np.setdiff1d(np.arange(short.sent[0], short.sent[1] + 1), short.seqs)
    np.testing.assert_array_equal(missing, sorted(LOST))
    assert not aborted.complete and aborted.frames == 3 and aborted.sent is None
    assert '"map": 1' in short.trigger
    assert archive.frames_held() == 19
    # no final maps arrived: nothing is done, and only the complete map can be made from the archive
    assert not any(archive.map_done(n, run_closed=True) for n in (0, 1, 2))
    assert archive.maps_to_make() == [0]


def test_frames_come_back_in_seq_order_with_their_headers(archived):
    archive, frames, _ = archived
    got = list(archive.frames(0, wait_s=1.0, block=3))      # several blocks
    assert [h["seq"] for h, _ in got] == list(range(8))
    for header, frame in got:
        seq = header["seq"]
        np.testing.assert_array_equal(frame, frames[seq])
        assert header["index"] == seq % 8 and header["map"] == 0 and header["run"] == RUN
        assert header == {**header, **_angles(seq), "t": 1000.0 + seq, "x": pytest.approx(0.1 * seq), "y": None}
    # frames sent before a seq (what a live processor that joined late asks for), across a gap
    before = list(archive.frames(1, below_seq=16, wait_s=1.0))
    assert [h["seq"] for h, _ in before] == [8, 9, 10, 11, 12, 15]
    for header, frame in before:
        np.testing.assert_array_equal(frame, frames[header["seq"]])


def test_waiting_for_a_map_that_never_completes_ends_with_an_error(archived):
    archive, _, _ = archived
    with pytest.raises(ArchiveError, match="map 1.*the map to complete"):
        list(archive.frames(1, wait_s=0.3))
    with pytest.raises(ArchiveError, match="no readable archived frames for map 7"):
        list(archive.frames(7, wait_s=0.1))


def test_a_corrupt_chunk_is_named_or_skipped_never_read_through_the_filter(archived):
    archive, frames, _ = archived
    path = archive.map_path(0)
    with h5py.File(path, "r") as f:
        offset = f[ENTRY][DATA].id.get_chunk_info_by_coord((2, 0, 0)).byte_offset
    with open(path, "r+b") as raw:
        raw.seek(offset + 12)               # past the chunk's own header: inside the LZ4 stream
        raw.write(b"\xff" * 24)
    with pytest.raises(CorruptFrameError, match="frame 2"):
        list(archive.frames(0, wait_s=1.0))
    kept = list(archive.frames(0, wait_s=1.0, skip_bad=True))
    assert [h["seq"] for h, _ in kept] == [0, 1, 3, 4, 5, 6, 7]
    for header, frame in kept:
        np.testing.assert_array_equal(frame, frames[header["seq"]])
