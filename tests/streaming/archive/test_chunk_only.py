"""Frames sent to the archiver as their detector-compressed chunk only: stored as sent, read
back equal, a bad chunk rejected with its reason, and re-sent to a restarted archiver intact."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import zmq

from opmon.streaming import protocol as P
from opmon.streaming.archive.archiver import Archiver
from opmon.streaming.archive.chunks import bitshuffle_lz4_chunk
from opmon.streaming.archive.raw import iter_frame_blocks
from opmon.streaming.publisher import ZmqFrameSink

from tests.streaming.archive.test_acks import _poll_until
from tests.streaming.conftest import GEOMETRY, frames_for

SHAPE = (16, 16)


def _stored(entry):
    return np.concatenate([b.copy() for _, b in iter_frame_blocks(entry)])


def _archive_one_map(sink, archiver, frames, chunks, map_shape):
    """A run of one map, every frame sent with its chunk, until the archiver closed it; its uid."""
    run = sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=map_shape, **GEOMETRY)
    sink.start_map(len(frames))
    for i, (frame, chunk) in enumerate(zip(frames, chunks)):
        sink.send_frame(frame, index=i, eta=10, phi=0, nu=0, delta=30, chunk=chunk)
    sink.end_map()
    sink.stop_run()
    assert _poll_until([archiver], lambda: archiver.runs and archiver.run_dir is None)
    return run


@pytest.mark.timeout(60)
def test_chunk_only_frames_are_archived_as_sent_and_the_live_stream_keeps_raw_frames(tmp_path, ctx):
    sink = ZmqFrameSink(["tcp://127.0.0.1:0", "tcp://127.0.0.1:0"], context=ctx, stall_timeout_s=10,
                        archive_chunk_only=True)
    live = ctx.socket(zmq.PULL)
    live.connect(sink.endpoints[1])
    archiver = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1)
    frames = frames_for(12, shape=SHAPE)
    chunks = [bitshuffle_lz4_chunk(f) for f in frames]
    run = _archive_one_map(sink, archiver, frames, chunks, (3, 4))
    c = archiver.frames.counters
    archiver.close()
    assert (c.accepted, c.lost, dict(c.rejected)) == (12, 0, {})
    with h5py.File(tmp_path / run / "map_0000.h5", "r") as f:
        data = f["entry/instrument/detector/data"]
        assert [bytes(data.id.read_direct_chunk((i, 0, 0))[1]) for i in range(12)] == chunks   # same bytes on disk
        np.testing.assert_array_equal(_stored(f["entry"]), frames)
        assert f["entry/scan/complete"][()] == 1
    received = []                                   # the live processor's stream: raw frames, no chunk
    while live.poll(1000) and len(received) < 15:
        received.append(P.parse(live.recv_multipart(copy=False)))
    got = [m for m in received if m.kind == "frame"]
    assert len(got) == 12 and all(m.chunk is None and "chunk" not in m.header for m in got)
    np.testing.assert_array_equal(np.stack([m.array for m in got]), frames)
    sink.close()


@pytest.mark.timeout(60)
def test_a_corrupt_or_wrong_size_chunk_is_rejected_with_its_reason_and_the_rest_of_the_map_archived(tmp_path, ctx):
    sink = ZmqFrameSink(["tcp://127.0.0.1:0"], context=ctx, stall_timeout_s=10, archive_chunk_only=True)
    archiver = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1)
    frames = frames_for(10, shape=SHAPE)
    chunks = [bitshuffle_lz4_chunk(f) for f in frames]
    chunks[3] = bitshuffle_lz4_chunk(frames_for(1, shape=(16, 8))[0])         # another frame size
    blocks = chunks[5][12:]                                                     # a block size field corrupted:
    chunks[5] = chunks[5][:12] + (len(blocks) - 2).to_bytes(4, "big") + blocks[4:]   # blocks no longer fill it
    run = _archive_one_map(sink, archiver, frames, chunks, (2, 5))
    c = archiver.frames.counters
    archiver.close()
    sink.close()
    assert dict(c.rejected) == {"size": 1, "chunk": 1} and c.lost == 2 and c.accepted == 8
    kept = [i for i in range(10) if i not in (3, 5)]
    with h5py.File(tmp_path / run / "map_0000.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/scan/sequence"][()], kept)
        np.testing.assert_array_equal(_stored(f["entry"]), frames[kept])
        assert f["entry/scan/complete"][()] == 0


@pytest.mark.timeout(60)
def test_chunk_only_frames_a_dead_archiver_never_wrote_are_re_sent_and_archived_once(tmp_path, ctx):
    """The archiver flushed some frames and held more in memory when it died, acknowledging
    nothing: the sender's spool re-sends every chunk to the next one, which copies the frames of
    the file it finds and keeps one copy of each."""
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=30, ack_endpoint="tcp://127.0.0.1:*",
                        archive_chunk_only=True)
    first = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1, ack_endpoint=sink.archive.ack_endpoint)
    frames = frames_for(40, shape=SHAPE)
    chunks = [bitshuffle_lz4_chunk(f) for f in frames]
    run = sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=(5, 8), **GEOMETRY)
    sink.start_map(40)

    def send(lo, hi):
        for i in range(lo, hi):
            sink.send_frame(frames[i], index=i, eta=10, phi=0, nu=0, delta=30, chunk=chunks[i])

    send(0, 15)
    assert _poll_until([first], lambda: first.frames_written == 15)
    first.acks.flushed = lambda: None          # its acknowledgements never reach the sender
    first.flush()                              # frames 0-14 on disk
    send(15, 25)
    assert _poll_until([first], lambda: first.frames_written == 25)
    first.map_writer._pending.clear()          # frames 15-24 were in its memory only when it died
    first.close()
    second = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1, ack_endpoint=sink.archive.ack_endpoint)
    send(25, 40)
    sink.end_map()
    sink.stop_run()
    assert _poll_until([second], lambda: sink.archive.held == 0), f"{sink.archive.held} never acknowledged"
    c = second.frames.counters
    second.close()
    sink.close()
    assert (c.lost, c.duplicate, dict(c.rejected), c.resent) == (0, 0, {}, 15)
    with h5py.File(tmp_path / run / "run.h5", "r") as f:
        entry = f["entry0"]
        np.testing.assert_array_equal(entry["scan/sequence"][()], np.arange(40))
        np.testing.assert_array_equal(_stored(entry), frames)
        assert entry.attrs["complete"] == 1 and f.attrs["state"] == "done"
