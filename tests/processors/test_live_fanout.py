"""The fan-out live processor: workers take frames straight from the stream, the coordinator
accounts and merges; garbage, reordered control messages and a killed coordinator included."""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import zmq

from opmon.processors.live.fanout import FanOutProcessor
from opmon.streaming import protocol as P
from opmon.streaming.publisher import ZmqFrameSink

from tests.waiting import until
from tests.processors.conftest import FRAME, GEOMETRY, MAP, assert_same_maps, recv_map, map_sockets, offline_maps, synthetic_map

GARBAGE = [
    [b"\x00\x01not msgpack"],
    [P.pack({"v": 99, "kind": "frame"}), b"x"],                       # unknown version
    [b"a", b"b", b"c", b"d"],                                         # wrong part count (3 is a frame with its chunk)
    [P.pack(P.frame_header("r", 0, 0, 0, 0, 10.0, 0.0, 0.0, 30.0, "uint32", FRAME)), b"short"],   # wrong size
    [P.pack(P.frame_header("r", 0, 0, 0, 0, 10.0, 0.0, 0.0, 30.0, "uint32", (20000, 20000))), b"x"],  # huge
]


@pytest.mark.timeout(180)
def test_garbage_between_good_frames_is_counted_and_the_maps_stay_exact(tmp_path):
    ctx = zmq.Context()
    maps_in, maps_endpoint, _ = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = FanOutProcessor(sink.endpoints[0], None, maps_endpoint, workers=2, publish_interval_s=0.05,
                                roi=(8, 32, 10, 38), context=ctx, rcvhwm=99)
    # the processor's receive queue is split among its workers (as much latency as inline)
    assert processor.worker_rcvhwm == {0: 50, 1: 50}
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    try:
        frames = synthetic_map(0, seed=11)
        run = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        sink.start_map(len(frames))
        injected = 0
        for i, (frame, p, eta) in enumerate(frames):
            sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
            if i % 3 == 0:
                sink.sockets[0].send_multipart(GARBAGE[i % len(GARBAGE)])
                injected += 1
        sink.end_map()
        sink.stop_run()
        header, result = recv_map(maps_in)
        until(lambda: sum(processor.counters.rejected.values()) >= injected, 30)
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
    assert header["run"] == run and header["final"] and header["frames"] == len(frames) and header["frames_lost"] == 0
    assert sum(processor.counters.rejected.values()) == injected, processor.counters.rejected
    assert {"header", "version", "parts", "size", "shape"} <= set(processor.counters.rejected)
    assert_same_maps(result, offline_maps(frames, (8, 32, 10, 38), tmp_path, "fanout"))
    assert processor.summaries[0]["frames"] == len(frames)
    ctx.destroy(linger=0)


def _control(kind: str, run: str, **fields) -> list[bytes]:
    """A control message of the frame stream, as the detector sends it."""
    builders = {"start": lambda: P.start_header(run, frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY),
                "map_start": lambda: P.map_start_header(run, fields["map"], (2, 6), fields["n"]),
                "map_end": lambda: P.map_end_header(run, fields["map"], fields["n"], fields["last"]),
                "stop": lambda: P.stop_header(run, "success", fields["n"], 1)}
    return [P.pack(builders[kind]())]


def _frame(run: str, seq: int, frame: np.ndarray, index: int) -> list[bytes]:
    """Frame `seq` of map 0 of `run`, at map pixel `index`."""
    return [P.pack(P.frame_header(run, 0, seq, seq, index, 10.0, 0.0, 0.0, 30.0, "uint32", FRAME)), frame.tobytes()]


def _shuffled(messages: list[list[bytes]], seed: int) -> list[list[bytes]]:
    order = list(messages)
    random.Random(seed).shuffle(order)
    return order


@pytest.mark.timeout(120)
def test_control_messages_count_whatever_order_the_workers_pass_them_on(tmp_path):
    """Each control message reaches one worker, so the coordinator may hear map_end before
    start; it holds what it cannot place yet and rejects runs that never start.

    Real messages on a real stream to a real fan-out processor: map_start, map_end and frames
    of a run before its start, then its start among the other frames, two malformed frames and
    a control message of a run that never starts, each batch in shuffled order."""
    ctx = zmq.Context()
    stream = ctx.socket(zmq.PUSH)
    port = stream.bind_to_random_port("tcp://127.0.0.1")
    maps_in, maps_endpoint, _ = map_sockets(ctx)
    processor = FanOutProcessor(f"tcp://127.0.0.1:{port}", None, maps_endpoint, workers=2, roi=(0, 40, 0, 48),
                                context=ctx, ask_wait_s=5.0, grace_s=0.2)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    frames = [_frame("r1", seq, frame, index) for seq, (frame, index, _) in enumerate(synthetic_map(0)[:12])]
    malformed = [[P.pack(P.frame_header("r1", 0, 12 + i, 12 + i, 0, 10.0, 0.0, 0.0, 30.0, "uint32", FRAME)), b"short"]
                 for i in range(2)]
    try:
        for parts in _shuffled([_control("map_start", "r1", map=0, n=12),
                                _control("map_end", "r1", map=0, n=12, last=11), *frames[:6]], seed=1):
            stream.send_multipart(parts)
        assert until(lambda: len(processor.held_controls.get("r1", [])) == 2, 30)
        assert "r1" not in processor.runs and len(processor.held_controls["r1"]) == 2
        for parts in _shuffled([_control("start", "r1"), *frames[6:], *malformed,
                                _control("map_start", "ghost", map=3, n=1)], seed=2):
            stream.send_multipart(parts)
        header, _ = recv_map(maps_in)
        assert until(lambda: processor.counters.rejected["unknown_run"] >= 1 and processor.counters.rejected["size"] >= 2, 30)
    finally:
        processor.stopped = True
        thread.join(30)
        stream.close(linger=0)
    assert header["run"] == "r1" and header["final"] and header["frames"] == 12 and header["frames_lost"] == 0
    run = processor.runs["r1"]
    fm = run.maps[0]
    assert fm.map_shape == (2, 6) and fm.n_expected == 12 and fm.n_sent == 12 and not processor.held_controls
    assert fm.received == 12 and processor.counters.rejected["size"] == 2
    assert fm.done and processor.counters.lost == 0
    assert processor.counters.rejected["unknown_run"] == 1 and "ghost" not in processor.runs
    ctx.destroy(linger=0)


# The coordinator as `opmon live --workers 2` runs it, on a stream the test binds (no port picked ahead).
COORDINATOR = """
import sys
from opmon.processors.live import open_live_processor
processor = open_live_processor(sys.argv[1], None, None, workers=2)
print(*processor.worker_pids, flush=True)
processor.serve()
"""


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first, then the parent's pid)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_workers_die_with_a_killed_coordinator():
    """An orphaned worker would stay on the stream and swallow frames nobody counts."""
    ctx = zmq.Context()
    stream = ctx.socket(zmq.PUSH)
    port = stream.bind_to_random_port("tcp://127.0.0.1")
    coordinator = subprocess.Popen([sys.executable, "-c", COORDINATOR, f"tcp://127.0.0.1:{port}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        ready, _, _ = select.select([coordinator.stdout], [], [], 60)
        assert ready, "the coordinator never said its workers' pids"
        workers = [int(pid) for pid in coordinator.stdout.readline().split()]
        # its own two worker processes (the spawn resource tracker is a child too, but not a worker)
        assert len(workers) == 2 and all(_alive(w) and int(_stat(w)[1]) == coordinator.pid for w in workers)
        assert all(b"spawn_main" in open(f"/proc/{w}/cmdline", "rb").read() for w in workers)
    finally:
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(10)
        stream.close(linger=0)
        ctx.destroy(linger=0)
    try:
        assert until(lambda: not any(_alive(w) for w in workers), 5, interval_s=0.01)
    finally:
        for w in workers:            # a failing run leaves nothing behind
            if _alive(w):
                os.kill(w, signal.SIGKILL)
