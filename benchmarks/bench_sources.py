"""`opmon bench sources`: the ID01 BLISS reader's MB/s beside h5py reading the same frames.

A BLISS dataset is written as ID01 writes it (one sxdm scan per eta, int32 Maxipix-like frames
in bitshuffle/LZ4 Lima files behind virtual datasets). Then, alternately, in the same run:

* baseline: plain h5py ``read_direct`` of each scan's ``measurement/<det>`` into a reused
  buffer, block by block (what any reader must at least pay: HDF5 + VDS + decompression);
* opmon: ``open_source`` (sniffing, survey, position binning) and every block of
  ``SourceMap.blocks`` (chunk-aligned, int32 counts clipped to uint32 in place).

MB/s are of uncompressed frames; medians of the interleaved repeats and their ratio are printed.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from opmon.simulators.id01_files import Id01Scan, Id01Setup, write_bliss
from opmon.streaming.archive.sources import open_source


def write_dataset(root: Path, scans: int, frames: int, size: int, seed: int = 0) -> Path:
    """A BLISS file of `scans` sxdm scans of `frames` frames (size x size int32, sparse counts and a peak)."""
    rng = np.random.default_rng(seed)
    nx = max(1, int(np.sqrt(frames)))
    ny = -(-frames // nx)
    setup = Id01Setup(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6),
                      beam_center=(size / 2, size / 2), phi=0.0, nu=0.0, delta=35.0, map_shape=(ny, nx))
    rr, cc = np.mgrid[-8:9, -8:9]
    blob = 50.0 * np.exp(-(rr**2 + cc**2) / 18.0)
    todo = []
    for k in range(scans):
        stack = (rng.random((frames, size, size)) < 1e-3).astype(np.int32)
        c = size // 2
        stack[:, c - 8:c + 9, c - 8:c + 9] += rng.poisson(blob, (frames, 17, 17)).astype(np.int32)
        todo.append(Id01Scan(19.0 + 0.01 * k, stack, np.arange(frames)))
    return write_bliss(root / "bench_0001.h5", setup, todo, extra_scan=False)


def read_h5py(path: Path, block: int) -> int:
    """Bytes of frames read by plain h5py, scan by scan, block by block, into one buffer."""
    total = 0
    with h5py.File(path, "r") as f:
        for name in sorted((n for n in f if n.endswith(".1")), key=lambda n: int(n.split(".")[0])):
            data = f[f"{name}/measurement/mpx1x4"]
            buf = np.empty((block,) + data.shape[1:], dtype=data.dtype)
            for start in range(0, data.shape[0], block):
                k = min(block, data.shape[0] - start)
                data.read_direct(buf, np.s_[start:start + k], np.s_[0:k])
                total += buf[:k].nbytes
    return total


def read_opmon(path: Path, block: int) -> int:
    """Bytes of frames read through the BLISS source (open, survey, bin positions, every block)."""
    total = 0
    with open_source(path) as src:
        for smap in src.maps:
            for blk in smap.blocks(block):
                total += blk.frames.nbytes
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="opmon bench sources", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int, default=8, help="sxdm scans (etas) in the file (default 8)")
    p.add_argument("--frames", type=int, default=400, help="frames per scan (default 400)")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    p.add_argument("--block", type=int, default=64, help="frames per read (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved pairs of runs (default 3)")
    p.add_argument("--dir", help="where to write the dataset (default: a temporary directory)")
    args = p.parse_args(argv)
    for name in ("scans", "frames", "size", "block", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = write_dataset(Path(tmp), args.scans, args.frames, args.size)
        raw_mb = args.scans * args.frames * args.size * args.size * 4 / 1e6
        disk_mb = sum(q.stat().st_size for q in Path(tmp).rglob("*.h5")) / 1e6
        print(f"BLISS dataset: {args.scans} scans x {args.frames} frames of {args.size} x {args.size} int32 "
              f"({raw_mb:.0f} MB of frames, {disk_mb:.1f} MB on disk, VDS onto bitshuffle/LZ4 Lima files)")
        read_opmon(path, args.block)  # warm the page cache and numba for both
        rates: dict[str, list[float]] = {"h5py": [], "opmon": []}
        for _ in range(args.repeat):
            for name, fn in (("h5py", read_h5py), ("opmon", read_opmon)):
                t = time.perf_counter()
                nbytes = fn(path, args.block)
                rates[name].append(nbytes / 1e6 / (time.perf_counter() - t))
    h5, op = statistics.median(rates["h5py"]), statistics.median(rates["opmon"])
    print(f"h5py read_direct of the same frames   {h5:9.0f} MB/s (median of {args.repeat})")
    print(f"opmon BLISS source (open + blocks)    {op:9.0f} MB/s (median of {args.repeat})")
    print(f"ratio opmon / h5py: {op / h5:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
