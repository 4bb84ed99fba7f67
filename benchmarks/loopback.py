"""What the streaming benchmarks share: detector-like frames, a detector that streams them
through `ZmqFrameSink`, and the bare pyzmq PUSH/PULL loopback every stage is compared with.

Used by `opmon bench stream` (benchmarks/bench_stream.py), `opmon bench archive`
(benchmarks/bench_archive.py) and benchmarks/soak_stream.py, so their baselines are the
same code and the same frames.
"""
from __future__ import annotations

import multiprocessing
import tempfile
import time
import uuid

import numpy as np
import zmq

from opmon.streaming import protocol as P
from opmon.streaming.memory import keep_frame_buffers
from opmon.port_picker import free_ports
from opmon.streaming.publisher import ZmqFrameSink

SHAPE = (512, 512)
GEOMETRY = dict(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(-1800.0, 256.0))


def frame_pool(n: int = 8, seed: int = 0) -> np.ndarray:
    """Detector-like frames: a Bragg spot that moves a little, Poisson counts, faint background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    pool = np.empty((n, *SHAPE), dtype=np.uint32)
    for i in range(n):
        lam = 300 * np.exp(-((rows - 250 - i) ** 2 + (cols - 260 + i) ** 2) / (2 * 4.0 ** 2)) + 1e-3
        pool[i] = rng.poisson(lam)
    return pool


def free_endpoint(transport: str) -> str:
    """A fresh local endpoint for a socket another process will bind (a sender started later):
    tcp loopback on a port from the shared picker, or an ipc path."""
    if transport == "ipc":
        return f"ipc://{tempfile.gettempdir()}/opmon-bench-{uuid.uuid4().hex[:12]}"
    return f"tcp://127.0.0.1:{free_ports(1)[0]}"


def _raw_sender(endpoint: str, n: int) -> None:
    pool = frame_pool()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 200)
    push.connect(endpoint)
    header = P.pack(P.frame_header("raw", 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, "uint32", SHAPE))
    for i in range(n):
        push.send_multipart([header, pool[i % len(pool)]], copy=False)
    push.close(linger=-1)
    ctx.term()


def compressed_pool(pool: np.ndarray) -> list[bytes]:
    """The pool's frames as bitshuffle/LZ4 chunks, made once (a detector's FPGA does it for free)."""
    from opmon.streaming.archive.chunks import bitshuffle_lz4_chunk
    return [bitshuffle_lz4_chunk(frame) for frame in pool]


def send_run(endpoint: str, n: int, map_shape: tuple[int, int], rate_fps: float | None = None,
             ack_endpoint: str | None = None, compressed: bool = False) -> None:
    """A detector: one run of one map of `n` frames through `ZmqFrameSink` (bound), as fast as
    the receiver takes them or paced at `rate_fps` (process target); with `ack_endpoint`, an
    acknowledged archive stream (held until the archiver flushed it); `compressed`: a detector
    that compresses at the source, each frame sent as its bslz4 chunk alone (`chunk_only`)."""
    pool = frame_pool()
    chunks: list[bytes | None] = compressed_pool(pool) if compressed else [None] * len(pool)
    sink = ZmqFrameSink([endpoint], stall_timeout_s=120, ack_endpoint=ack_endpoint, archive_chunk_only=compressed)
    sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=map_shape, **GEOMETRY)
    sink.start_map(n)
    sink.drain()        # acknowledged: the archiver is up and synced, so frames stream to it as they are
    npix = map_shape[0] * map_shape[1]            # sent instead of piling up in the spool first
    t0 = time.perf_counter()
    for i in range(n):
        if rate_fps:
            wait = t0 + i / rate_fps - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        sink.send_frame(pool[i % len(pool)], index=i % npix, eta=10.0 + 0.016 * (i // npix), phi=0.0, nu=0.0, delta=37.0,
                        chunk=chunks[i % len(pool)])
    sink.stop_run()
    sink.close()


def raw_loopback(n: int, transport: str = "tcp") -> float:
    """Frames/s of bare PUSH/PULL over tcp loopback (receiver here, sender in a process).
    The receiver keeps frame buffers like opmon's receivers do, so the ratio measures opmon's
    work, not an allocator setting."""
    keep_frame_buffers()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 200)
    if transport == "tcp":       # bound here: the kernel picks the port
        endpoint = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
    else:
        endpoint = free_endpoint(transport)
        pull.bind(endpoint)
    proc = multiprocessing.get_context("spawn").Process(target=_raw_sender, args=(endpoint, n))
    proc.start()
    parts = pull.recv_multipart(copy=False)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        parts = pull.recv_multipart(copy=False)
    rate = (n - 1) / (time.perf_counter() - t0)
    del parts
    proc.join()
    pull.close()
    ctx.term()
    return rate
