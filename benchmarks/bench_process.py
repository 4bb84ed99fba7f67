"""`opmon bench process`: kernel, end-to-end and whole-command speed, each beside baselines from the same run.

Kernel baselines: a branch-free fused numba pass that reads the same in-memory frames and sums
three integer moments (per row Σ v and Σ v·col, then over rows: the practical memory limit of
one pass) and numpy's `frames.sum()`. End to end: h5py's read of the same compressed file
(decompression without analysis). Whole command: `opmon process` as a subprocess (start-up
included) on a simulated 128 x 160 map beside h5py reading and summing the same file, and
`opmon --help` beside `python -c "import numpy"`. Rounds are interleaved and the best of each
kept (least disturbed by other load); the single-threaded kernel figures are timed in the
measuring thread's CPU time, the rest in wall time. Figures vary ±30 % on shared machines, the
ratios are what to compare.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numba
import numpy as np

from opmon.streaming.archive.layout import DATA, ENTRY
from opmon.streaming.archive.raw import RawMapWriter
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.kernels_rows import REL_TOL
from opmon.processors.offline import ProcessOptions, process_file

SHAPE = (512, 512)
ROI_FRAME = (128, 160)                       # frames of a detector ROI, as `opmon simulate --roi` writes
SIM_ROI = (192, 320, 176, 336)               # that window of the simulated 512 x 512 detector
GEOMETRY = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (256.0, 256.0), SHAPE)
ROI = (192, 320, 192, 320)


def photon_counting_frames(n: int, dtype: type, seed: int = 0, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Frames like a Maxipix sees them: a Bragg peak of ~1e3 counts plus 1e-3 counts/pixel background."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n,) + shape, dtype=dtype)
    rr, cc = np.mgrid[-12:13, -12:13]
    blob = 1.0e3 / (2 * np.pi * 16) * np.exp(-(rr**2 + cc**2) / 32.0)
    k = int(1e-3 * shape[0] * shape[1])
    for f in range(n):
        frames[f].flat[rng.integers(0, shape[0] * shape[1], k)] = 1
        r, c = shape[0] // 2 + rng.integers(-20, 20), shape[1] // 2 + rng.integers(-20, 20)
        frames[f, r - 12:r + 13, c - 12:c + 13] += rng.poisson(blob).astype(dtype)
    return frames


@numba.njit(cache=True, nogil=True)
def fused_three_moments(frames, out):  # type: ignore[no-untyped-def]
    """The memory-limit baseline: per frame Σ v, Σ v·row, Σ v·col in integers, no branch."""
    n, rows, cols = frames.shape
    for f in range(n):
        s0 = np.int64(0)
        s_row = np.int64(0)
        s_col = np.int64(0)
        for r in range(rows):
            row_sum = np.int64(0)
            row_col = np.int64(0)
            for c in range(cols):
                v = np.int64(frames[f, r, c])
                row_sum += v
                row_col += v * c
            s0 += row_sum
            s_row += row_sum * r
            s_col += row_col
        out[f, 0] = s0
        out[f, 1] = s_row
        out[f, 2] = s_col


def best_rates(n: int, runs: dict[str, Callable[[], object]], rounds: int,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Frames per second of each run: the fastest of `rounds` interleaved rounds."""
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t = clock()
            fn()
            best[name] = min(best[name], clock() - t)
    return {name: n / seconds for name, seconds in best.items()}


def bench_kernel(n: int, dtype: type, shape: tuple[int, int], roi: tuple[int, int, int, int] | None, block: int,
                 rounds: int) -> dict[str, float]:
    """Accumulator, fused numba read and numpy sum over the same in-memory frames."""
    frames = photon_counting_frames(n, dtype, shape=shape)
    geometry = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (shape[0] / 2, shape[1] / 2), shape)
    rng = np.random.default_rng(1)
    index = rng.integers(0, 3600, n)
    eta = rng.uniform(18.7, 19.3, n)
    out = np.zeros((n, 3), dtype=np.int64)
    MomentAccumulator(geometry, (60, 60), roi=roi).process_block(frames[:2], index[:2], eta[:2], 0.0, 35.0, 0.0)
    fused_three_moments(frames[:2], out)  # compile (or load from the cache) outside the clock

    def kernel(exact: bool = False) -> None:
        acc = MomentAccumulator(geometry, (60, 60), roi=roi, exact_kernel=exact)
        for s in range(0, n, block):
            acc.process_block(frames[s:s + block], index[s:s + block], eta[s:s + block], 0.0, 35.0, 0.0)

    kernel(True)  # the exact kernel's compile (or cache load) outside the clock too
    # all four run in this one thread: its CPU time is what they cost, whatever else the machine runs
    return best_rates(n, {"kernel": kernel, "exact": lambda: kernel(True), "fused": lambda: fused_three_moments(frames, out),
                          "numpy": frames.sum}, rounds, clock=time.thread_time)


def bench_end_to_end(n: int, dtype: type, workdir: Path) -> tuple[float, float, float]:
    path = workdir / "bench_raw.h5"
    frames = photon_counting_frames(n, dtype, seed=2)
    with h5py.File(path, "w") as f:
        writer = RawMapWriter(f.create_group(ENTRY), frame_shape=SHAPE, dtype=dtype, energy_ev=10000.0, distance_m=1.6,
                              pixel_size_m=(55e-6, 55e-6), beam_center=(256.0, 256.0), map_shape=(40, 40))
        index = np.arange(n) % 1600
        writer.append(frames, index, np.linspace(18.7, 19.3, n), 0.0, 35.0, 0.0)
    raw_mb = n * frames[0].nbytes / 1e6
    del frames

    def read_only() -> None:
        with h5py.File(path, "r") as f:
            data = f[ENTRY][DATA]
            buf = np.empty((64,) + SHAPE, dtype=data.dtype)
            for s in range(0, n, 64):
                view = buf[: min(64, n - s)]
                data.read_direct(view, np.s_[s:s + view.shape[0]])

    def process() -> None:
        process_file(path, workdir / "bench_maps.h5", ProcessOptions(), force=True)

    process()  # compile and warm the page cache
    rates = best_rates(n, {"read": read_only, "process": process}, 2)
    return (rates["process"] * raw_mb / n, rates["read"] * raw_mb / n,
            path.stat().st_size / (n * SHAPE[0] * SHAPE[1] * np.dtype(dtype).itemsize))


H5PY_READ_SUM = """
import sys, time
t = time.perf_counter()
import h5py, hdf5plugin, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    data = f[sys.argv[2]]
    block = max(1, (16 << 20) // (data.shape[1] * data.shape[2] * data.dtype.itemsize))
    buf = np.empty((block,) + data.shape[1:], dtype=data.dtype)
    total = 0
    for s in range(0, data.shape[0], block):
        view = buf[: min(block, data.shape[0] - s)]
        data.read_direct(view, np.s_[s:s + view.shape[0]])
        total += int(view.sum(dtype=np.uint64))
print(total, time.perf_counter() - t)
"""


def wall(argv: list[str]) -> tuple[float, str]:
    """Seconds a command takes from start to exit, and what it printed."""
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - t, out.stdout


def bench_command(map_shape: tuple[int, int, int], rounds: int, workdir: Path) -> dict[str, float]:
    """`opmon process` as a whole command beside h5py read + sum of the same file, and `opmon --help`."""
    from opmon.commands.simulate import simulate

    raw, maps = workdir / "map_128x160.h5", workdir / "maps_128x160.h5"
    ny, nx, angles = map_shape
    simulate(raw, ny=ny, nx=nx, angles=angles, roi=SIM_ROI, progress=False)
    process = [sys.executable, "-m", "opmon.cli", "process", str(raw), "-o", str(maps), "--force", "-q"]
    plain = [*process, "--powder-spots", "off", "--register", "off"]   # without the robust steps' per-map work (spot search, registration)
    read_sum = [sys.executable, "-c", H5PY_READ_SUM, str(raw), f"{ENTRY}/{DATA}"]
    wall(process)  # fills numba's on-disk cache if this installation has not run yet
    wall(plain)
    best = {"process": float("inf"), "process plain": float("inf"), "h5py script": float("inf"),
            "h5py in-process": float("inf"), "help": float("inf"), "numpy": float("inf")}
    for _ in range(rounds):
        best["process"] = min(best["process"], wall(process)[0])
        best["process plain"] = min(best["process plain"], wall(plain)[0])
        seconds, printed = wall(read_sum)
        best["h5py script"] = min(best["h5py script"], seconds)
        best["h5py in-process"] = min(best["h5py in-process"], float(printed.split()[1]))
        best["help"] = min(best["help"], wall([sys.executable, "-m", "opmon.cli", "--help"])[0])
        best["numpy"] = min(best["numpy"], wall([sys.executable, "-c", "import numpy"])[0])
    best["frames"] = ny * nx * angles
    return best


def kernel_accuracy(workdir: Path, size: int, cases: list[str]) -> list[dict[str, float]]:
    """The fast kernel (kernels_rows) against the exact one on the truth harness's maps: each case is
    simulated (`opmon simulate`, the harness's detector window) and processed both ways."""
    from opmon.benchmarks.bench_truth import ROI as TRUTH_ROI
    from opmon.commands.simulate import simulate

    rows = []
    for case in cases:
        raw = workdir / f"accuracy_{case}.h5"
        simulate(raw, ny=size, nx=size, roi=TRUTH_ROI, effects=case, progress=False, force=True)
        fast = process_file(raw, workdir / f"{case}_fast.h5", ProcessOptions(), force=True)
        exact = process_file(raw, workdir / f"{case}_exact.h5", ProcessOptions(exact_kernel=True), force=True)
        for entry, a in fast.items():
            b = exact[entry]
            both = (a.mask & b.mask).astype(bool)
            rows.append({"case": case, "pixels": int(both.sum()), "mask_differs": int((a.mask != b.mask).sum()),
                         "d": float(np.max(np.abs(a.d_spacing - b.d_spacing)[both])),
                         "tilt": float(np.max(np.abs(a.tilt_altitude - b.tilt_altitude)[both])),
                         "width": float(np.max(np.abs(a.peak_width / b.peak_width - 1.0)[both])),
                         "d_median": float(np.median(b.d_spacing[both]))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench process", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1500, help="512 x 512 frames per kernel measurement "
                        "(1 MB each for uint32; 128 x 160 runs use 12x as many)")
    parser.add_argument("--file-frames", type=int, default=3000, help="frames in the compressed end-to-end file")
    parser.add_argument("--block", type=int, default=ProcessOptions().block,
                        help="frames per process_block call (default: what `opmon process` reads at once)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--map", type=int, nargs=3, default=(20, 28, 31), metavar=("NY", "NX", "ANGLES"),
                        help="simulated 128 x 160 map for the whole-command figure (default 20 28 31: 17,360 frames)")
    parser.add_argument("--accuracy", nargs="*", metavar="CASE", default=None,
                        help="instead of the speeds: the fast kernel against the exact one on simulated truth-harness "
                        "maps (`opmon bench truth` cases; default none all drift)")
    parser.add_argument("--size", type=int, default=16, help="map side of the --accuracy maps (default 16)")
    args = parser.parse_args(argv)
    if args.accuracy is not None:
        with tempfile.TemporaryDirectory() as tmp:
            rows = kernel_accuracy(Path(tmp), args.size, args.accuracy or ["none", "all", "drift"])
        print(f"fast kernel vs exact kernel, {args.size}x{args.size} maps, ROI window of the truth harness "
              f"(fit tolerance {REL_TOL:g} of |q|):")
        for r in rows:
            print(f"  {r['case']:6} {r['pixels']:4d} valid pixels (mask differs at {r['mask_differs']}): max |Δd| "
                  f"{r['d']:.1e} Å (d ≈ {r['d_median']:.3f} Å), max |Δ tilt| {r['tilt']:.1e}°, max |Δ width| / width {r['width']:.1e}")
        return 0
    if min(args.frames, args.file_frames, args.rounds, args.block, *args.map) < 1:
        parser.error("--frames, --file-frames, --block, --rounds and --map must be >= 1")
    print(f"opmon bench process: photon-counting frames (Bragg peak ~1e3 counts, 1e-3 counts/pixel background), "
          f"block {args.block}, best of {args.rounds} interleaved rounds, kernels in thread CPU time")
    print("kernel: the default (kernels_rows, q fitted along row segments); exact: the per-pixel kernel "
          "(threshold > 0, despeckle, exact_kernel=True)")
    print(f"{'dtype':7} {'region':9} {'frames':8} {'kernel fr/s':>12} {'exact fr/s':>11} {'numpy sum fr/s':>15} "
          f"{'fused numba fr/s':>17} {'kernel/fused':>13} {'exact/fused':>12} {'kernel/numpy':>13}")
    for dtype in (np.uint32, np.uint16):
        for label, shape, roi, n in (("full", SHAPE, None, args.frames), ("ROI 128²", SHAPE, ROI, args.frames),
                                     ("full", ROI_FRAME, None, 12 * args.frames)):
            r = bench_kernel(n, dtype, shape, roi, args.block, args.rounds)
            print(f"{np.dtype(dtype).name:7} {label:9} {shape[0]}x{shape[1]:<4} {r['kernel']:12.0f} {r['exact']:11.0f} "
                  f"{r['numpy']:15.0f} {r['fused']:17.0f} {r['kernel'] / r['fused']:13.2f} {r['exact'] / r['fused']:12.2f} "
                  f"{r['kernel'] / r['numpy']:13.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mbs, read_mbs, ratio = bench_end_to_end(args.file_frames, np.uint32, Path(tmp))
        print(f"end-to-end opmon process (uint32, bitshuffle/LZ4, compressed to {ratio:.1%}): "
              f"{mbs:.0f} MB/s of raw frames; h5py read+decompress alone {read_mbs:.0f} MB/s; ratio {mbs / read_mbs:.2f}")
        c = bench_command(tuple(args.map), max(2, args.rounds // 2), Path(tmp))
        print(f"whole command, {c['frames']:.0f}-frame 128x160 uint32 map (opmon simulate): opmon process {c['process']:.2f} s; "
              f"h5py read+sum {c['h5py in-process']:.2f} s in-process, {c['h5py script']:.2f} s as a script; "
              f"speed ratio {c['h5py in-process'] / c['process']:.2f} (in-process), {c['h5py script'] / c['process']:.2f} (script)")
        print(f"whole command with --powder-spots off --register off (no per-map robust steps): opmon process {c['process plain']:.2f} s; "
              f"speed ratio {c['h5py in-process'] / c['process plain']:.2f} (in-process), {c['h5py script'] / c['process plain']:.2f} (script)")
        print(f"start-up: opmon --help {c['help']:.2f} s; python -c 'import numpy' {c['numpy']:.2f} s; "
              f"ratio {c['help'] / c['numpy']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
