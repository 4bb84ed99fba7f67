"""The fan-out live processor: workers take frames straight from the stream, the coordinator
accounts and merges; garbage, reordered control messages and a killed coordinator included."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from opmon.config import Ports
from opmon.processors.live_fanout import FanOutProcessor
from opmon.streaming import protocol as P
from opmon.streaming.publisher import ZmqFrameSink

from opmon.port_picker import free_ports

from .test_live import FRAME, GEOMETRY, MAP, _assert_same_maps, _recv_map, _sockets, offline_maps, synthetic_map

GARBAGE = [
    [b"\x00\x01not msgpack"],
    [P.pack({"v": 99, "kind": "frame"}), b"x"],                       # unknown version
    [b"a", b"b", b"c"],                                               # wrong part count
    [P.pack(P.frame_header("r", 0, 0, 0, 0, 10.0, 0.0, 0.0, 30.0, "uint32", FRAME)), b"short"],   # wrong size
    [P.pack(P.frame_header("r", 0, 0, 0, 0, 10.0, 0.0, 0.0, 30.0, "uint32", (20000, 20000))), b"x"],  # huge
]


@pytest.mark.timeout(180)
def test_garbage_between_good_frames_is_counted_and_the_maps_stay_exact(tmp_path):
    ctx = zmq.Context()
    maps_in, maps_endpoint, _ = _sockets(ctx)
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
        header, result = _recv_map(maps_in)
        deadline = time.monotonic() + 30
        while sum(processor.counters.rejected.values()) < injected and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
    assert header["run"] == run and header["final"] and header["frames"] == len(frames) and header["frames_lost"] == 0
    assert sum(processor.counters.rejected.values()) == injected, processor.counters.rejected
    assert {"header", "version", "parts", "size", "shape"} <= set(processor.counters.rejected)
    _assert_same_maps(result, offline_maps(frames, (8, 32, 10, 38), tmp_path, "fanout"))
    assert processor.summaries[0]["frames"] == len(frames)
    ctx.destroy(linger=0)


def _control(kind: str, run: str, **fields):
    builders = {"start": lambda: P.start_header(run, frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY),
                "map_start": lambda: P.map_start_header(run, fields["map"], (2, 6), fields["n"]),
                "map_end": lambda: P.map_end_header(run, fields["map"], fields["n"], fields["last"]),
                "stop": lambda: P.stop_header(run, "success", fields["n"], 1)}
    return [zmq.Frame(P.pack(builders[kind]()))]


@pytest.mark.timeout(120)
def test_control_messages_count_whatever_order_the_workers_pass_them_on(tmp_path):
    """Each control message reaches one worker, so the coordinator may hear map_end before
    start; it holds what it cannot place yet and rejects runs that never start."""
    ctx = zmq.Context()
    idle = ctx.socket(zmq.PUSH)
    port = idle.bind_to_random_port("tcp://127.0.0.1")     # a stream that sends nothing
    processor = FanOutProcessor(f"tcp://127.0.0.1:{port}", None, None, workers=2, roi=(0, 40, 0, 48),
                                context=ctx, ask_wait_s=0.2, grace_s=0.2)
    try:
        processor._on_control(_control("map_start", "r1", map=0, n=12))
        processor._on_control(_control("map_end", "r1", map=0, n=12, last=11))
        assert "r1" not in processor.runs and len(processor.held_controls["r1"]) == 2
        processor._on_control(_control("start", "r1"))
        run = processor.runs["r1"]
        fm = run.maps[0]
        assert fm.map_shape == (2, 6) and fm.n_expected == 12 and fm.n_sent == 12 and not processor.held_controls
        rows = np.array([[s, 0, s, time.time() - 0.01, time.time()] for s in range(12)], dtype=np.float64)
        processor._on_seen({"run": "r1", "worker": 0, "rejected": {"size": 2}}, rows[::2])
        processor._on_seen({"run": "r1", "worker": 1, "rejected": {}}, rows[1::2])
        assert fm.received == 12 and processor.counters.rejected["size"] == 2
        processor._on_control(_control("map_start", "ghost", map=3, n=1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not fm.done or "ghost" in processor.held_controls):
            processor.poll_once(20)      # FINAL goes to the real workers, which hand in (empty) sums
        assert fm.done and processor.counters.lost == 0
        assert processor.counters.rejected["unknown_run"] == 1 and "ghost" not in processor.runs
    finally:
        processor.close()
        idle.close(linger=0)
        ctx.destroy(linger=0)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_workers_die_with_a_killed_coordinator(tmp_path):
    """An orphaned worker would stay on the stream and swallow frames nobody counts."""
    # every port from the shared picker: `opmon live` binds its display port, which must not be
    # a running demo's default
    names = [f.name for f in dataclasses.fields(Ports)]
    config = tmp_path / "opmon.toml"
    config.write_text("[ports]\n" + "".join(f"{n} = {p}\n" for n, p in zip(names, free_ports(len(names)))))
    live = subprocess.Popen([sys.executable, "-m", "opmon.cli", "live", "--config", str(config), "--workers", "2",
                             "--no-recover"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [k for k in _children(live.pid) if b"live_worker" in open(f"/proc/{k}/cmdline", "rb").read()
                       or b"multiprocessing" in open(f"/proc/{k}/cmdline", "rb").read()]
            time.sleep(0.1)
        assert len(workers) >= 2, "the workers never started"
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.01)
    assert not any(_alive(w) for w in workers)
