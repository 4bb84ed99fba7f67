"""`opmon bench archive`: the archiver end to end, beside its two floors measured in the same run.

A simulated detector process streams 512 x 512 uint32 frames through `ZmqFrameSink` to an
`Archiver` here, which checks them, copies them into blocks, compresses them with
bitshuffle/LZ4 and appends them to a SWMR HDF5 map file, flushing every `flush_interval_s`.
Frames/s counts from the first frame received to the map file closed (so the last flush and
close are in). Beside it, in interleaved pairs: the same frames written by the same
`MapFileWriter` straight from memory (disk + compression alone: the archiver cannot be faster)
and bare pyzmq PUSH/PULL loopback (transport alone). Printed: frames/s of each, the archiver's
ratio to each, MB/s of raw frames and on disk, and frames lost. Then the CPU each frame costs
in the archiver's process and in the detector's (from getrusage, a short run's fixed cost
subtracted), and what that allows when both processes share the machine's cores: the bound
that holds whatever the load (the frames/s figures move with it).
Not a timed test: machines are noisy, so read the ratios.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from opmon.benchmarks.loopback import GEOMETRY, SHAPE, free_endpoint, frame_pool, raw_loopback, send_run
from opmon.streaming import protocol as P
from opmon.streaming.archive.run_writer import MapFileWriter
from opmon.streaming.archive.archiver import Archiver

BASE_FRAMES = 100              # the short run whose CPU is a run's fixed cost
FRAME_MB = SHAPE[0] * SHAPE[1] * 4 / 1e6


def _map_shape(n: int) -> tuple[int, int]:
    return (max(1, n // 50), 50) if n >= 50 else (1, n)


def direct_write(n: int, directory: Path) -> tuple[float, int]:
    """Frames/s of `MapFileWriter` fed from memory (no ZeroMQ), and the file's size in bytes."""
    pool = frame_pool()
    map_shape = _map_shape(n)
    start = P.start_header("direct", frame_shape=SHAPE, dtype="uint32", map_shape=map_shape, **GEOMETRY)
    path = directory / "direct.h5"
    t0 = time.perf_counter()
    writer = MapFileWriter(path, start, P.map_start_header("direct", 0, map_shape, n))
    npix = map_shape[0] * map_shape[1]
    last_flush = time.monotonic()
    for i in range(n):
        header = P.frame_header("direct", 0, i, i, i % npix, 10.0, 0.0, 0.0, 37.0, "uint32", SHAPE)
        writer.add(header, pool[i % len(pool)])
        if time.monotonic() - last_flush >= 0.5:        # the archiver's flush period
            writer.flush()
            last_flush = time.monotonic()
    writer.close(complete=True)
    rate = n / (time.perf_counter() - t0)
    size = path.stat().st_size
    path.unlink()
    return rate, size


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (every thread, ended ones too) and by its
    finished child processes."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def with_cpu(fn: Callable[[], Any]) -> tuple[Any, tuple[float, float]]:
    """fn's result and the CPU seconds it used here and in the child processes it waited for."""
    here0, children0 = cpu_seconds()
    result = fn()
    here1, children1 = cpu_seconds()
    return result, (here1 - here0, children1 - children0)


def cpu_per_frame(measured: list[tuple[float, float]], base: tuple[float, float], n: int, n_base: int) -> tuple[float, float]:
    """Median CPU µs per frame (receiving process, sending process) beyond a run's fixed cost:
    the sender's process start-up is a second of CPU, so a short run of `n_base` frames is
    subtracted from each run of `n`."""
    here = float(np.median([m[0] for m in measured])) - base[0]
    children = float(np.median([m[1] for m in measured])) - base[1]
    return here / (n - n_base) * 1e6, children / (n - n_base) * 1e6


def archiver_chain(n: int, directory: Path, acks: bool = True) -> dict[str, float]:
    """Frames/s of detector -> ZeroMQ -> Archiver (until the map file is closed), loss, size.

    With `acks` (as deployed) the detector holds every frame until the archiver acknowledges
    its flush; without, the plain PUSH stream of before."""
    endpoint = free_endpoint("tcp")
    ack = free_endpoint("tcp") if acks else None
    ctx = zmq.Context()
    archiver = Archiver(directory / "archive", endpoint, flush_interval_s=0.5, context=ctx, ack_endpoint=ack)
    proc = multiprocessing.get_context("spawn").Process(target=send_run, args=(endpoint, n, _map_shape(n), None, ack))
    proc.start()
    t0 = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        archiver.poll_once(20)
        if t0 is None and archiver.frames_written:
            t0 = time.perf_counter()
        if archiver.runs and archiver.run_dir is None:   # stop received: map file flushed and closed
            break
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    archiver.flush()            # acknowledges the run's end: the detector may close
    proc.join()
    counters = archiver.frames.counters
    written = archiver.frames_written
    archiver.close()
    ctx.term()
    size = sum(f.stat().st_size for f in (directory / "archive").rglob("*.h5"))
    shutil.rmtree(directory / "archive", ignore_errors=True)
    return {"frames_per_s": (written - 1) / elapsed if elapsed > 0 else float("nan"),
            "lost": counters.lost + (n - written), "rejected": sum(counters.rejected.values()), "bytes": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench archive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames per measurement (default 3000)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved measurements of each (default 5)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--no-acks", action="store_true",
                        help="plain PUSH archive stream, no acknowledgements (the stream before they existed)")
    args = parser.parse_args(argv)
    if args.frames < 100:
        parser.error("--frames must be >= 100")
    directory = Path(tempfile.mkdtemp(prefix="opmon-bench-archive-", dir=args.dir))
    print(f"opmon bench archive: {args.frames} frames of {SHAPE[0]}x{SHAPE[1]} uint32 per measurement, "
          f"bitshuffle/LZ4, SWMR, flush every 0.5 s, into {directory} ({os.cpu_count()} cores); archive stream "
          + ("plain PUSH (no acknowledgements)" if args.no_acks else "acknowledged (frames held until flushed)"))
    try:
        archiver_chain(BASE_FRAMES, directory)          # warm up
        # short runs: the fixed CPU cost of a run (process start-up), subtracted below
        _, chain_base = with_cpu(lambda: archiver_chain(BASE_FRAMES, directory, acks=not args.no_acks))
        _, raw_base = with_cpu(lambda: raw_loopback(BASE_FRAMES))
        chains, directs, raws, chain_cpu, raw_cpu = [], [], [], [], []
        for _ in range(args.repeat):           # interleaved, so a noisy neighbour hits all alike
            chain, used = with_cpu(lambda: archiver_chain(args.frames, directory, acks=not args.no_acks))
            chains.append(chain)
            chain_cpu.append(used)
            directs.append(direct_write(args.frames, directory))
            raw, used = with_cpu(lambda: raw_loopback(args.frames))
            raws.append(raw)
            raw_cpu.append(used)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    chain = float(np.median([c["frames_per_s"] for c in chains]))
    direct = float(np.median([d[0] for d in directs]))
    raw = float(np.median(raws))
    vs_direct = float(np.median([c["frames_per_s"] / d[0] for c, d in zip(chains, directs)]))
    vs_raw = float(np.median([c["frames_per_s"] / r for c, r in zip(chains, raws)]))
    disk_mb = float(np.median([c["bytes"] for c in chains])) / 1e6
    print(f"archiver (ZeroMQ -> HDF5)    {chain:8.0f} frames/s = {chain * FRAME_MB:6.0f} MB/s of raw frames")
    print(f"MapFileWriter from memory    {direct:8.0f} frames/s | archiver ratio {vs_direct:.2f}x (median of pairs)")
    print(f"raw pyzmq PUSH/PULL loopback {raw:8.0f} frames/s | archiver ratio {vs_raw:.2f}x (median of pairs)")
    print(f"  on disk {disk_mb:.1f} MB per {args.frames} frames ({disk_mb / (args.frames * FRAME_MB) * 100:.1f} % of raw);"
          f" frames lost {sum(c['lost'] for c in chains)} of {args.frames * args.repeat}, rejected"
          f" {sum(c['rejected'] for c in chains)}")
    if args.frames > BASE_FRAMES:
        a_recv, a_send = cpu_per_frame(chain_cpu, chain_base, args.frames, BASE_FRAMES)
        r_recv, r_send = cpu_per_frame(raw_cpu, raw_base, args.frames, BASE_FRAMES)
        # Two processes share the cores: with every core busy the chain cannot beat cores / (CPU per frame).
        cores = os.cpu_count() or 1
        if min(a_recv + a_send, r_recv + r_send) <= 0:
            print("CPU per frame: too few frames to tell it from the start-up (use more --frames)")
            return 0
        print(f"CPU per frame (median, beyond start-up): archiver process {a_recv:.0f} us + detector process "
              f"{a_send:.0f} us = {a_recv + a_send:.0f} us -> at most {cores * 1e6 / (a_recv + a_send):.0f} frames/s "
              f"on {cores} fully busy cores; loopback receiver {r_recv:.0f} us + sender {r_send:.0f} us "
              f"= {r_recv + r_send:.0f} us; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
