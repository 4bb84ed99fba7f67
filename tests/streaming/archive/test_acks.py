"""Archive acknowledgements: the sender holds the archive stream until the archiver has it on
disk, so a killed archiver loses nothing; what a full spool really drops is named, not hidden."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import zmq

from opmon.streaming.archive.layout import COMPLETE, MAP_COMPLETE
from opmon.streaming.archive.raw import iter_frame_blocks
from opmon.streaming import protocol as P
from opmon.streaming.archive.acks import ArchiveAcks
from opmon.streaming.publisher import ZmqFrameSink

from tests.streaming.conftest import GEOMETRY, frames_for, write_config
from tests.waiting import stop_processes, until


def _wait_for(predicate, timeout=30.0) -> bool:
    return until(predicate, timeout)


def _stored(path):
    try:
        with h5py.File(path, "r", swmr=True) as f:
            return f["entry/scan/sequence"].shape[0]
    except (OSError, KeyError):
        return 0


def _state(master):
    try:
        with h5py.File(master, "r") as f:
            return f.attrs["state"]
    except (OSError, KeyError):
        return None


def _stop(procs):
    stop_processes(procs, 20)


@pytest.mark.timeout(180)
def test_archiver_killed_mid_map_and_restarted_archives_every_frame_exactly_once(tmp_path, ctx):
    config, path = write_config(tmp_path)
    sink = ZmqFrameSink([config.endpoint("frames_archive")], context=ctx, stall_timeout_s=60,
                        ack_endpoint=config.endpoint("frames_archive_ack"))
    cmd = [sys.executable, "-m", "opmon.cli", "archive", "--config", path]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    frames = frames_for(400, shape=(32, 32))
    log_path = tmp_path / "archiver2.log"
    try:
        run = sink.start_run(frame_shape=(32, 32), dtype="uint32", map_shape=(10, 30), **GEOMETRY)
        run_dir = tmp_path / "archive" / run
        sink.start_map(300)
        for i in range(150):
            sink.send_frame(frames[i], index=i % 300, eta=10, phi=0, nu=0, delta=30)
        assert _wait_for(lambda: _stored(run_dir / "map_0000.h5") >= 100), "archiver never flushed"
        for i in range(150, 220):       # these are in flight or unflushed when the archiver dies
            sink.send_frame(frames[i], index=i % 300, eta=10, phi=0, nu=0, delta=30)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        held_at_kill = sink.archive.held
        for i in range(220, 260):       # sent while no archiver runs: held in the spool
            sink.send_frame(frames[i], index=i % 300, eta=10, phi=0, nu=0, delta=30)
        with open(log_path, "w") as log_file:
            procs.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT))
        for i in range(260, 300):
            sink.send_frame(frames[i], index=i % 300, eta=10, phi=0, nu=0, delta=30)
        sink.end_map()
        sink.start_map(100)
        for i in range(300, 400):
            sink.send_frame(frames[i], index=i % 300, eta=10, phi=0, nu=0, delta=30)
        sink.stop_run()
        assert sink.drain(60), f"{sink.archive.held} message(s) never acknowledged"
        assert _wait_for(lambda: _state(run_dir / "run.h5") == "done", 30)
    finally:
        _stop(procs)
        sink.close()
    assert held_at_kill > 0                      # something was unacknowledged when it died
    assert sink.archive_dropped == []
    assert list(run_dir.glob("map_0000.crashed-*.h5"))   # it was really killed mid-map and recovered
    with h5py.File(run_dir / "run.h5", "r") as f:
        for m, seqs in ((0, np.arange(300)), (1, np.arange(300, 400))):
            entry = f[f"entry{m}"]
            np.testing.assert_array_equal(entry["scan/sequence"][()], seqs)      # each once, in order
            stored = np.concatenate([b.copy() for _, b in iter_frame_blocks(entry)])
            np.testing.assert_array_equal(stored, frames[seqs])
            assert entry.attrs["complete"] == 1 and entry[COMPLETE][()] == 1
    text = log_path.read_text()
    assert "sender synced" in text and "were lost" not in text, text


@pytest.mark.timeout(60)
def test_a_sync_for_another_archiver_and_bad_acknowledgements_are_ignored(ctx):
    """The hello/sync/ack handshake at message level: tokens and epochs must match."""
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    acks = ArchiveAcks(ctx, f"tcp://127.0.0.1:{port}")
    acks.tick()
    hello = P.parse_ack(pull.recv())
    assert hello["kind"] == "hello" and hello["token"] == acks.token
    assert not acks.on_sync(P.sync_header("someone-else", 1, 5))
    assert acks.note() is False and acks.handled == 0             # not synced: nothing counted
    sync = P.parse_sync([P.pack(P.sync_header(acks.token, 3, 2))])
    assert sync is not None and acks.on_sync(sync)
    assert [acks.note() for _ in range(4)] == [True, True, False, False]
    acks.flushed()
    ack = P.parse_ack(pull.recv())
    assert (ack["kind"], ack["epoch"], ack["handled"]) == ("ack", 3, 4)
    acks.flushed()                                                # nothing new: no message
    assert not pull.poll(200)
    for bad in (b"\xc1", P.pack({"v": 2, "kind": "ack", "token": "t", "epoch": 0, "handled": 1}),
                P.pack({"v": 1, "kind": "ack", "token": "t", "epoch": 0, "handled": -1}),
                P.pack({"v": 1, "kind": "hello"})):
        with pytest.raises(P.RejectedMessage):
            P.parse_ack(bad)
    assert P.parse_sync([P.pack(P.map_end_header("r", 0, 1, 0))]) is None
    acks.close()
    pull.close()


def _poll_until(archivers, predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for a in archivers:
            a.poll_once(20)
        if predicate():
            return True
    return False


@pytest.mark.timeout(120)
def test_frames_flushed_but_never_acknowledged_are_re_sent_and_archived_once(tmp_path, ctx):
    """The archiver flushed, then went away before its ack left: everything since the sync is
    re-sent to the next archiver, which keeps one copy and counts the rest as re-sent."""
    from opmon.streaming.archive.archiver import Archiver
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=30, ack_endpoint="tcp://127.0.0.1:*")
    frames_ep = sink.endpoints[0]
    # no timed flush of its own: one before its acks are cut would acknowledge some frames (a load race)
    first = Archiver(tmp_path, frames_ep, context=ctx, flush_interval_s=3600, ack_endpoint=sink.archive.ack_endpoint)
    first.acks.flushed = lambda: None          # its acknowledgements never reach the sender
    frames = frames_for(60, shape=(8, 8))
    run = sink.start_run(frame_shape=(8, 8), dtype="uint32", map_shape=(6, 10), **GEOMETRY)
    sink.start_map(60)
    for i in range(30):
        sink.send_frame(frames[i], index=i, eta=10, phi=0, nu=0, delta=30)
    assert _poll_until([first], lambda: first.frames_written == 30)
    first.flush()
    assert sink.archive.held == 32             # start, map_start and 30 frames, all unacknowledged
    first.close()                              # files closed: every frame of them is on disk
    second = Archiver(tmp_path, frames_ep, context=ctx, flush_interval_s=0.1, ack_endpoint=sink.archive.ack_endpoint)
    for i in range(30, 60):
        sink.send_frame(frames[i], index=i, eta=10, phi=0, nu=0, delta=30)
    sink.end_map()
    sink.stop_run()
    assert _poll_until([second], lambda: sink.archive.held == 0), f"{sink.archive.held} never acknowledged"
    c = second.frames.counters
    second.close()
    sink.close()
    assert (c.lost, c.duplicate, dict(c.rejected)) == (0, 0, {})
    assert c.resent == 30                      # the 30 frames the first archiver had kept
    with h5py.File(tmp_path / run / "run.h5", "r") as f:
        entry = f["entry0"]
        np.testing.assert_array_equal(entry["scan/sequence"][()], np.arange(60))
        np.testing.assert_array_equal(np.concatenate([b.copy() for _, b in iter_frame_blocks(entry)]), frames)
        assert entry.attrs["complete"] == 1 and f.attrs["state"] == "done"


@pytest.mark.timeout(60)
def test_a_full_spool_drops_frames_as_real_losses_and_the_map_is_not_complete(tmp_path, ctx):
    """No archiver for a while and a tiny spool: frames wait the stall timeout, then are dropped
    (control messages never are); the archiver that comes later counts the gap as lost."""
    from opmon.demo import summarize
    from opmon.streaming.archive.archiver import Archiver
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=0.3, ack_endpoint="tcp://127.0.0.1:*",
                        spool_bytes=4000)
    frames = frames_for(20, shape=(8, 8))
    run = sink.start_run(frame_shape=(8, 8), dtype="uint32", map_shape=(4, 5), **GEOMETRY)
    sink.start_map(0)           # frames not announced: complete must come from map_end's count
    for i in range(20):
        sink.send_frame(frames[i], index=i, eta=10, phi=0, nu=0, delta=30)
    sink.end_map()
    sink.stop_run()
    kept = 20 - len(sink.archive_dropped)
    assert 0 < kept < 20 and sink.archive_dropped == list(range(kept, 20))
    archiver = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1,
                        ack_endpoint=sink.archive.ack_endpoint)
    assert _poll_until([archiver], lambda: sink.archive.held == 0)
    lost = archiver.frames.counters.lost
    archiver.close()
    sink.close()
    assert lost == 20 - kept
    with h5py.File(tmp_path / run / "map_0000.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/scan/sequence"][()], np.arange(kept))
        assert f[MAP_COMPLETE][()] == 0
        assert (f["entry/scan/n_frames_sent"][()], f["entry/scan/last_seq_sent"][()]) == (20, 19)
    summary = summarize(tmp_path / run, 20, "success")
    assert summary.frames_lost == 20 - kept and not summary.ok
    assert summary.maps[0].missing == [(kept, 19)]
    assert f"missing {20 - kept} frame(s), seq {kept}-19" in summary.text()


@pytest.mark.timeout(60)
def test_a_stray_archivers_hello_does_not_take_the_stream(tmp_path, ctx):
    """Two archivers saying hello to one sender: the one synced and acknowledging keeps it."""
    from opmon.streaming.archive.archiver import Archiver
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=10, ack_endpoint="tcp://127.0.0.1:*")
    archiver = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1,
                        ack_endpoint=sink.archive.ack_endpoint)
    run = sink.start_run(frame_shape=(8, 8), dtype="uint32", map_shape=(2, 5), **GEOMETRY)
    sink.start_map(10)
    assert _poll_until([archiver], lambda: sink.archive.token == archiver.acks.token and sink.archive.held == 0)
    stray = ArchiveAcks(ctx, sink.archive.ack_endpoint)        # on the ack port, not on the frame stream
    stray.tick()
    frames = frames_for(10, shape=(8, 8))
    for i in range(10):
        sink.send_frame(frames[i], index=i, eta=10, phi=0, nu=0, delta=30)
    sink.end_map()
    sink.stop_run()
    assert _poll_until([archiver], lambda: sink.archive.held == 0)
    assert sink.archive.token == archiver.acks.token and sink.archive.resyncs == 1
    archiver.close()
    stray.close()
    sink.close()
    with h5py.File(tmp_path / run / "map_0000.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/scan/sequence"][()], np.arange(10))


@pytest.mark.timeout(60)
def test_an_archiver_killed_as_a_map_began_counts_no_false_loss(tmp_path, ctx):
    """The map file it left holds no frame: the restarted archiver has no seq to count a gap from."""
    from opmon.streaming.archive.archiver import Archiver
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=30, ack_endpoint="tcp://127.0.0.1:*")
    first = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1, ack_endpoint=sink.archive.ack_endpoint)
    frames = frames_for(20, shape=(8, 8))
    run = sink.start_run(frame_shape=(8, 8), dtype="uint32", map_shape=(2, 5), **GEOMETRY)
    sink.start_map(10)
    for i in range(10):
        sink.send_frame(frames[i], index=i, eta=10, phi=0, nu=0, delta=30)
    sink.end_map()
    assert _poll_until([first], lambda: sink.archive.held == 0)
    sink.start_map(10)
    assert _poll_until([first], lambda: first.map_writer is not None and first.map_writer.number == 1)
    first.acks.flushed = lambda: None          # gone before acknowledging map 1's start
    first.close()
    second = Archiver(tmp_path, sink.endpoints[0], context=ctx, flush_interval_s=0.1, ack_endpoint=sink.archive.ack_endpoint)
    for i in range(10, 20):
        sink.send_frame(frames[i], index=i - 10, eta=10, phi=0, nu=0, delta=30)
    sink.end_map()
    sink.stop_run()
    assert _poll_until([second], lambda: sink.archive.held == 0)
    c = second.frames.counters
    second.close()
    sink.close()
    assert (c.lost, c.duplicate, dict(c.rejected)) == (0, 0, {})
    with h5py.File(tmp_path / run / "run.h5", "r") as f:
        np.testing.assert_array_equal(f["entry1/scan/sequence"][()], np.arange(10, 20))
        assert f["entry0"].attrs["complete"] == 1 and f["entry1"].attrs["complete"] == 1


@pytest.mark.timeout(60)
def test_newer_frames_that_reach_a_restarted_archiver_before_its_sync_do_not_push_out_the_re_sent_older_ones(tmp_path, ctx):
    """The sender's socket hands new frames to a restarted archiver as soon as it connects,
    before hello and sync; the older, unacknowledged ones are re-sent after the sync. Taken in
    arrival order, the newer would advance the sequence and the older be refused as already
    seen: lost from the archive. Here the order is forced: frames 5-9, then the sync, then 0-9."""
    from opmon.streaming.archive.archiver import Archiver
    stream, acks_in = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    stream_port = stream.bind_to_random_port("tcp://127.0.0.1")
    ack_port = acks_in.bind_to_random_port("tcp://127.0.0.1")
    archiver = Archiver(tmp_path, f"tcp://127.0.0.1:{stream_port}", context=ctx, flush_interval_s=0.1,
                        ack_endpoint=f"tcp://127.0.0.1:{ack_port}")
    run, frames = "r-presync", frames_for(10, shape=(8, 8))
    start = [P.pack(P.start_header(run, frame_shape=(8, 8), dtype="uint32", map_shape=(2, 5), **GEOMETRY))]
    map_start = [P.pack(P.map_start_header(run, 0, (2, 5), 10))]

    def frame(seq: int) -> list[bytes]:
        return [P.pack(P.frame_header(run, 0, seq, seq, seq, 10.0, 0.0, 0.0, 30.0, "uint32", (8, 8))), frames[seq].tobytes()]

    resend = [start, map_start] + [frame(s) for s in range(10)]
    try:
        for parts in [start, map_start] + [frame(s) for s in range(5, 10)]:   # what reached it before the sync
            stream.send_multipart(parts)
        assert _poll_until([archiver], lambda: acks_in.poll(0) and P.parse_ack(acks_in.recv())["kind"] == "hello")
        stream.send_multipart([P.pack(P.sync_header(archiver.acks.token, 1, len(resend)))])
        for parts in resend + [[P.pack(P.map_end_header(run, 0, 10, 9))], [P.pack(P.stop_header(run, "success", 10, 1))]]:
            stream.send_multipart(parts)
        assert _poll_until([archiver], lambda: archiver.runs.get(run) is not None and archiver.run_dir is None)
        counters = archiver.frames.counters
    finally:
        archiver.close()
    assert counters.lost == 0
    with h5py.File(tmp_path / run / "map_0000.h5", "r") as f:
        np.testing.assert_array_equal(f["entry/scan/sequence"][()], np.arange(10))
        np.testing.assert_array_equal(f["entry/instrument/detector/data"][()], frames)
