"""`opmon bench archive`: the archiver end to end, beside its two floors measured in the same run.

A simulated detector process streams 512 x 512 uint32 frames through `ZmqFrameSink` to an
`Archiver` here, which checks them, copies them into blocks, compresses them with
bitshuffle/LZ4 and appends them to a SWMR HDF5 map file, flushing every `flush_interval_s`.
A second row does the same with a detector that compresses at the source (an Eiger's FPGA;
here the frame pool is compressed once before timing): each frame travels as its bslz4 chunk
alone (`chunk_only`) and the archiver stores it as it came. After each run the archive is read
back and every frame compared with the one sent (`lost` counts any that differ or are missing).
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

import h5py
import numpy as np
import zmq

from opmon.benchmarks.loopback import GEOMETRY, SHAPE, compressed_pool, free_endpoint, frame_pool, raw_loopback, send_run
from opmon.streaming import protocol as P
from opmon.streaming.archive.frames import bslz4_layout
from opmon.streaming.archive.raw import iter_frame_blocks
from opmon.streaming.archive.reader import RunArchive
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


class TimedArchiver(Archiver):
    """An `Archiver` that notes when it took its first frame: the clock starts there, not at
    the end of the poll that took it (a poll can take the whole run of small chunk-only frames)."""

    first_frame: float | None = None

    def _on_frame(self, h: dict[str, Any], frame: Any, chunk: Any = None) -> None:
        if self.first_frame is None:
            self.first_frame = time.perf_counter()
        super()._on_frame(h, frame, chunk)


def archiver_chain(n: int, directory: Path, acks: bool = True, compressed: bool = False) -> dict[str, float]:
    """Frames/s of detector -> ZeroMQ -> Archiver (until the map file is closed), loss, size.

    With `acks` (as deployed) the detector holds every frame until the archiver acknowledges
    its flush; without, the plain PUSH stream of before. `compressed`: the detector sends each
    frame as its bslz4 chunk alone. `lost` includes frames read back different from those sent."""
    endpoint = free_endpoint("tcp")
    ack = free_endpoint("tcp") if acks else None
    ctx = zmq.Context()
    archiver = TimedArchiver(directory / "archive", endpoint, flush_interval_s=0.5, context=ctx, ack_endpoint=ack)
    proc = multiprocessing.get_context("spawn").Process(target=send_run,
                                                        args=(endpoint, n, _map_shape(n), None, ack, compressed))
    proc.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        archiver.poll_once(20)
        if archiver.runs and archiver.run_dir is None:   # stop received: map file flushed and closed
            break
    elapsed = time.perf_counter() - (archiver.first_frame or time.perf_counter())
    archiver.flush()            # acknowledges the run's end: the detector may close
    proc.join()
    counters = archiver.frames.counters
    written = archiver.frames_written
    runs = list(archiver.runs)
    archiver.close()
    ctx.term()
    size = sum(f.stat().st_size for f in (directory / "archive").rglob("*.h5"))
    return {"frames_per_s": (written - 1) / elapsed if elapsed > 0 else float("nan"), "runs": runs,
            "lost": counters.lost + (n - written), "rejected": sum(counters.rejected.values()), "bytes": size}


def read_back(directory: Path, chain: dict[str, Any]) -> dict[str, Any]:
    """Count the chain's frames read back different from those sent as lost, then remove its
    archive (outside the chain's CPU figures: it is the check, not the archiver's work)."""
    chain["lost"] += sum(differing_frames(directory / "archive", uid) for uid in chain.pop("runs"))
    shutil.rmtree(directory / "archive", ignore_errors=True)
    return chain


def differing_frames(directory: Path, uid: str) -> int:
    """Frames of an archived `send_run` run whose decompressed pixels differ from the frame sent
    (the pool frame of its seq), read through the checked decoder."""
    pool = frame_pool()
    archive = RunArchive(directory, uid)
    wrong = 0
    for number in archive.map_numbers():
        with h5py.File(archive.map_path(number), "r") as f:
            entry = f["entry"]
            seqs = entry["scan/sequence"][()]
            for first, block in iter_frame_blocks(entry):
                for k, frame in enumerate(block):
                    wrong += not np.array_equal(frame, pool[seqs[first + k] % len(pool)])
    return wrong


def wire_bytes_per_frame(compressed: bool) -> float:
    """Mean bytes a frame message takes on the archive socket (header + raw frame, or + chunk)."""
    pool = frame_pool()
    header = len(P.pack(P.frame_header("x" * 36, 0, 0, 0, 0, 10.0, 0.0, 0.0, 37.0, "uint32", SHAPE, chunk_only=compressed)))
    return header + (float(np.mean([len(c) for c in compressed_pool(pool)])) if compressed else pool[0].nbytes)


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
    acks = not args.no_acks
    try:
        read_back(directory, archiver_chain(BASE_FRAMES, directory))     # warm up
        chunk = compressed_pool(frame_pool(1))[0]       # and the archiver's chunk check (numba, from its cache)
        bslz4_layout(np.frombuffer(chunk, np.uint8), SHAPE[0] * SHAPE[1] * 4, 4)
        # short runs: the fixed CPU cost of a run (process start-up), subtracted below
        bases = {c: with_cpu(lambda: read_back(directory, archiver_chain(BASE_FRAMES, directory, acks, c)))[1]
                 for c in (False, True)}
        bases["raw"] = with_cpu(lambda: raw_loopback(BASE_FRAMES))[1]
        runs: dict[Any, list[Any]] = {False: [], True: [], "direct": [], "raw": []}
        cpu: dict[Any, list[tuple[float, float]]] = {False: [], True: [], "raw": []}
        for _ in range(args.repeat):           # interleaved, so a noisy neighbour hits all alike
            for compressed in (False, True):
                chain, used = with_cpu(lambda: archiver_chain(args.frames, directory, acks, compressed))
                runs[compressed].append(read_back(directory, chain))
                cpu[compressed].append(used)
            runs["direct"].append(direct_write(args.frames, directory))
            raw, used = with_cpu(lambda: raw_loopback(args.frames))
            runs["raw"].append(raw)
            cpu["raw"].append(used)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    chains, chunked, directs, raws = runs[False], runs[True], runs["direct"], runs["raw"]
    chain = float(np.median([c["frames_per_s"] for c in chains]))
    chunk_rate = float(np.median([c["frames_per_s"] for c in chunked]))
    direct = float(np.median([d[0] for d in directs]))
    raw = float(np.median(raws))
    vs_direct = float(np.median([c["frames_per_s"] / d[0] for c, d in zip(chains, directs)]))
    vs_raw = float(np.median([c["frames_per_s"] / r for c, r in zip(chains, raws)]))
    chunk_vs_raw = float(np.median([c["frames_per_s"] / r for c, r in zip(chunked, raws)]))
    chunk_vs_chain = float(np.median([c["frames_per_s"] / d["frames_per_s"] for c, d in zip(chunked, chains)]))
    disk_mb = float(np.median([c["bytes"] for c in chains])) / 1e6
    total = args.frames * args.repeat
    print(f"archiver (ZeroMQ -> HDF5)    {chain:8.0f} frames/s = {chain * FRAME_MB:6.0f} MB/s of raw frames")
    print(f"archiver, detector-compressed chunks {chunk_rate:8.0f} frames/s = {chunk_rate * FRAME_MB:6.0f} MB/s of raw "
          f"frames | {chunk_vs_chain:.2f}x raw-frame archiver, {chunk_vs_raw:.2f}x raw loopback (median of sets)")
    print(f"MapFileWriter from memory    {direct:8.0f} frames/s | archiver ratio {vs_direct:.2f}x (median of pairs)")
    print(f"raw pyzmq PUSH/PULL loopback {raw:8.0f} frames/s | archiver ratio {vs_raw:.2f}x (median of pairs)")
    print(f"  on disk {disk_mb:.1f} MB per {args.frames} frames ({disk_mb / (args.frames * FRAME_MB) * 100:.1f} % of raw);"
          f" frames lost {sum(c['lost'] for c in chains)} of {total}, rejected"
          f" {sum(c['rejected'] for c in chains)}")
    for name, rows, rate, compressed in (("raw frames", chains, chain, False), ("chunks", chunked, chunk_rate, True)):
        per_frame_disk = float(np.median([c["bytes"] for c in rows])) / args.frames
        wire = wire_bytes_per_frame(compressed)
        print(f"  {name:10s}: on the wire {wire / 1e3:7.1f} kB/frame = {rate * wire / 1e6:6.0f} MB/s, on disk "
              f"{per_frame_disk / 1e3:6.1f} kB/frame = {rate * per_frame_disk / 1e6:5.0f} MB/s; frames lost (read back "
              f"and compared) {sum(c['lost'] for c in rows)} of {total}, rejected {sum(c['rejected'] for c in rows)}")
    if args.frames > BASE_FRAMES:
        a_recv, a_send = cpu_per_frame(cpu[False], bases[False], args.frames, BASE_FRAMES)
        c_recv, c_send = cpu_per_frame(cpu[True], bases[True], args.frames, BASE_FRAMES)
        r_recv, r_send = cpu_per_frame(cpu["raw"], bases["raw"], args.frames, BASE_FRAMES)
        # Two processes share the cores: with every core busy the chain cannot beat cores / (CPU per frame).
        cores = os.cpu_count() or 1
        short = " (too few frames to tell them from the start-up: use more --frames)"

        def bound(us: float) -> str:
            return f"{cores * 1e6 / us:.0f}" if us > 0 else "0"
        print(f"CPU per frame (median, beyond start-up): archiver process {a_recv:.0f} us + detector process "
              f"{a_send:.0f} us = {a_recv + a_send:.0f} us -> at most {bound(a_recv + a_send)} frames/s on {cores} "
              f"fully busy cores; loopback receiver {r_recv:.0f} us + sender {r_send:.0f} us = {r_recv + r_send:.0f} us;"
              f" load average {os.getloadavg()[0]:.1f}{short if min(a_recv + a_send, r_recv + r_send) <= 0 else ''}")
        print(f"CPU per frame, detector-compressed chunks: archiver process {c_recv:.0f} us + detector process "
              f"{c_send:.0f} us = {c_recv + c_send:.0f} us -> at most {bound(c_recv + c_send)} frames/s on {cores} "
              f"fully busy cores{short if c_recv + c_send <= 0 else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
