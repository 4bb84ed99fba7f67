"""`opmon simulate -o RAW.h5`: a simulated SXDM map in the raw layout, with its ground truth.

Frames are rendered in blocks (never the whole stack) by `opmon.simulators.render` and
written through `opmon.streaming.archive.raw.RawMapWriter`; the next block renders in a worker thread
(numba releases the GIL) while the current one is compressed and written. The truth maps
of the particle go to ``/entry/truth/<name>`` with the names of FORMATS.md plus
``lithium``, ``support`` and ``sigma``; the simulation parameters are attributes of
``/entry/truth``.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opmon import interrupt
from opmon.errors import ConfigError
from opmon.streaming.archive.safe_writes import atomic_path, check_outputs

if TYPE_CHECKING:     # numpy, h5py and numba are imported when a map is simulated, not for `opmon --help`
    import h5py
    import numpy as np

log = logging.getLogger(__name__)

UNITS = {"d_spacing": "angstrom", "tilt_altitude": "deg", "tilt_azimuth": "deg", "intensity": "counts",
         "peak_width": "1/angstrom", "sigma": "1/angstrom", "q": "1/angstrom", "mean_q": "1/angstrom"}


def write_truth(group: h5py.Group, truth: dict[str, Any]) -> None:
    """Write truth maps into ``group`` (one dataset per name, with units)."""
    import numpy as np
    group.attrs["NX_class"] = "NXcollection"
    for name, value in truth.items():
        ds = group.create_dataset(name, data=np.asarray(value))
        if name in UNITS:
            ds.attrs["units"] = UNITS[name]


# Budget figures (measured on the 2-core reference machine, 2026-11-29): simulated photon-counting
# frames compress to ~0.8 % with bitshuffle/LZ4 (2 % is the conservative estimate), and render +
# compress + write runs at ~6 s per GB of raw frames. The writer holds two blocks and the renderer
# about one more.
DISK_FRACTION = 0.02
SECONDS_PER_RAW_GB = 6.0
BLOCKS_IN_MEMORY = 3
WRITE_SLICE = 32  # frames per h5py write: Ctrl-C is honoured between slices


@dataclass
class Budget:
    """What a simulation will take, estimated before it starts."""

    frames: int
    raw_bytes: int
    disk_bytes: int
    memory_bytes: int
    seconds: float

    def describe(self) -> str:
        return (f"{self.frames} frames, {self.raw_bytes / 1e9:.2f} GB of raw frames, ~{self.disk_bytes / 1e6:.0f} MB "
                f"on disk, ~{self.memory_bytes / 1e6:.0f} MB of memory, ~{self.seconds:.0f} s")


def estimate(n_frames: int, frame_shape: tuple[int, int], itemsize: int, block: int, map_pixels: int) -> Budget:
    """Size, memory and time of a simulation, from the figures above."""
    frame_bytes = frame_shape[0] * frame_shape[1] * itemsize
    raw = n_frames * frame_bytes
    disk = int(DISK_FRACTION * raw) + map_pixels * 40 * 8 + (1 << 20)  # frames, ~40 truth values per pixel, headers
    memory = BLOCKS_IN_MEMORY * min(block, n_frames) * frame_bytes
    return Budget(n_frames, raw, disk, memory, SECONDS_PER_RAW_GB * raw / 1e9)


def available_memory() -> int:
    """Bytes the kernel can give without swapping (MemAvailable), or free pages where /proc is absent."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_budget(budget: Budget, path: Path, block: int) -> None:
    """Refuse, in one line, a simulation that cannot fit the free disk or the free memory."""
    free = shutil.disk_usage(path.absolute().parent).free
    if budget.disk_bytes > free:
        raise ConfigError(f"{path}: needs ~{budget.disk_bytes / 1e9:.2f} GB ({budget.describe()}) but "
                          f"{free / 1e9:.2f} GB are free there; use a smaller --ny/--nx/--angles/--roi")
    avail = available_memory()
    if budget.memory_bytes > avail:
        raise ConfigError(f"--block {block}: needs ~{budget.memory_bytes / 1e9:.2f} GB of memory but "
                          f"{avail / 1e9:.2f} GB are available; use a smaller --block")


def simulate(path: Path, *, ny: int = 60, nx: int = 60, angles: int = 30, eta_step: float | None = None,
             eta_center: float | None = None, mode: str = "paper", x_mean: float = 1.0, cycles: float = 0.0,
             seed: int = 0, order: str = "eta-outer", roi: tuple[int, int, int, int] | None = None,
             dtype: str = "uint32", block: int = 256, entry: str = "entry", force: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Render one map to ``path`` (atomically: a killed run leaves no file); returns the truth dict."""
    import numpy as np

    from opmon.simulators.crystal import ParticleModel
    from opmon.simulators.instrument import SxdmSetup
    from opmon.simulators.render import FrameRenderer

    if dtype not in ("uint32", "uint16"):
        raise ConfigError(f"--dtype {dtype!r}: expected uint32 or uint16")
    if block < 1:
        raise ConfigError(f"--block {block}: must be >= 1")
    for name, value in (("--ny", ny), ("--nx", nx), ("--angles", angles)):
        if value < 1:
            raise ConfigError(f"{name} {value}: must be >= 1")
    if not entry or "/" in entry or entry == ".":
        raise ConfigError(f"--entry {entry!r}: must be a plain group name")
    check_outputs([path], [], force=force)
    kwargs: dict[str, Any] = dict(map_shape=(ny, nx), n_angles=angles, roi=roi)
    if eta_step is not None:
        kwargs["eta_step"] = eta_step
    if eta_center is not None:
        kwargs["eta_center"] = eta_center
    setup = SxdmSetup(**kwargs)
    n = ny * nx * angles
    budget = estimate(n, setup.frame_shape, np.dtype(dtype).itemsize, block, ny * nx)
    check_budget(budget, path, block)
    if progress:
        print(f"opmon simulate: {budget.describe()}", file=sys.stderr)
    particle = ParticleModel(setup, seed=seed, mode=mode, x_mean=x_mean, cycles=cycles)
    renderer = FrameRenderer(setup, particle, seed=seed, dtype=np.dtype(dtype))
    margin = particle.rocking_margin()
    if margin < 4.0:
        log.warning("rocking scan holds some peaks only %.1f sigma inside its ends: centres will be biased", margin)
    midx, etas = setup.scan(order)
    x_um, y_um = setup.map_positions_um(midx)
    truth = particle.truth()
    with interrupt.interruptible():
        try:
            with atomic_path(path) as tmp:
                _write(tmp, entry, setup, renderer, truth, midx, etas, x_um, y_um, block, progress, path.name,
                       dict(mode=mode, x_mean=x_mean, cycles=cycles, seed=seed, order=order, eta_step=setup.eta_step,
                            eta_center=setup.eta_center, peak_sigma_q=setup.peak_sigma_q, peak_counts=setup.peak_counts,
                            background_rate=setup.background_rate, rocking_margin_sigma=margin))
        except OSError as exc:  # e.g. the disk filled up after all: the temporary file is already gone
            raise ConfigError(f"{path}: cannot write ({exc.strerror or str(exc).split('(')[0].strip()})") from exc
    return truth


def _write(tmp: Path, entry: str, setup: Any, renderer: Any, truth: dict[str, Any], midx: np.ndarray,
           etas: np.ndarray, x_um: np.ndarray, y_um: np.ndarray, block: int, progress: bool, label: str,
           attrs: dict[str, Any]) -> None:
    """Render block by block (the next block in a worker thread) into the file at `tmp`."""
    import h5py
    import numpy as np
    from tqdm import tqdm

    from opmon.streaming.archive.raw import RawMapWriter

    n = midx.size
    with h5py.File(tmp, "w") as f, ThreadPoolExecutor(1) as pool:
        group = f.require_group(entry)
        writer = RawMapWriter(group, frame_shape=setup.frame_shape, dtype=renderer.dtype, energy_ev=setup.energy_ev,
                              distance_m=setup.distance_m, pixel_size_m=(setup.pixel_size_m, setup.pixel_size_m),
                              beam_center=setup.frame_beam_center, map_shape=setup.map_shape,
                              detector_mask=renderer.detector_mask, expected_frames=n)
        tgroup = group.create_group("truth")
        write_truth(tgroup, truth)
        for key, value in attrs.items():
            tgroup.attrs[key] = value
        bufs = [np.empty((min(block, n),) + setup.frame_shape, dtype=renderer.dtype) for _ in range(2)]

        def render(i: int) -> tuple[int, np.ndarray]:
            start = i * block
            stop = min(start + block, n)
            out = bufs[i % 2][: stop - start]
            for a in range(start, stop, WRITE_SLICE):  # in slices, so Ctrl-C abandons a block quickly
                if interrupt.requested():
                    break
                b = min(a + WRITE_SLICE, stop)
                renderer.frames(midx[a:b], etas[a:b], setup.phi, setup.nu, setup.delta, out=out[a - start:b - start])
            return start, out

        n_blocks = (n + block - 1) // block
        pending = pool.submit(render, 0)
        with tqdm(total=n, unit="frame", disable=not progress, desc=label) as bar:
            for i in range(n_blocks):
                while True:
                    interrupt.check()
                    try:
                        start, frames = pending.result(timeout=0.1)
                        break
                    except FutureTimeout:
                        continue
                interrupt.check()
                if i + 1 < n_blocks:
                    pending = pool.submit(render, i + 1)
                for a in range(0, frames.shape[0], WRITE_SLICE):
                    interrupt.check()
                    s, e = start + a, start + min(a + WRITE_SLICE, frames.shape[0])
                    writer.append(frames[a:a + WRITE_SLICE], midx[s:e], etas[s:e], setup.phi, setup.nu, setup.delta,
                                  x_um=x_um[s:e], y_um=y_um[s:e])
                    bar.update(e - s)


def run(args: argparse.Namespace) -> int:
    with interrupt.exit_promptly("simulate"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    simulate(Path(args.output), ny=args.ny, nx=args.nx, angles=args.angles, eta_step=args.eta_step,
             eta_center=args.eta_center, mode=args.mode, x_mean=args.x_mean, cycles=args.cycles, seed=args.seed,
             order=args.order, roi=tuple(args.roi) if args.roi else None, dtype=args.dtype, block=args.block,
             entry=args.entry, force=args.force, progress=not args.quiet)
    print(f"simulated map written to {args.output}")
    return 0


# Copies of opmon.simulators.crystal.MODES and instrument.ORDERS (a test keeps them equal), so
# that building the command line does not import numba for every opmon command.
MODES = ("paper", "nucleated", "core-shell", "uniform", "two-phase-nucleated", "two-phase-core-shell")
ORDERS = ("eta-outer", "point-outer")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="write a simulated raw SXDM map with its ground truth", description=__doc__)
    p.add_argument("-o", "--output", required=True, help="raw HDF5 file to write")
    p.add_argument("--ny", type=int, default=60, help="map rows (default 60)")
    p.add_argument("--nx", type=int, default=60, help="map columns (default 60)")
    p.add_argument("--angles", type=int, default=30, help="rocking angles (default 30)")
    p.add_argument("--eta-step", type=float, default=None, help="rocking step in deg (default 0.04)")
    p.add_argument("--eta-center", type=float, default=None, help="centre of the rocking scan in deg (default 19)")
    p.add_argument("--mode", choices=MODES, default="paper", help="phase-transition model (default paper)")
    p.add_argument("--x-mean", type=float, default=1.0, help="mean lithium content x in [0, 1] (default 1)")
    p.add_argument("--cycles", type=float, default=0.0, help="charge-discharge cycles before this map")
    p.add_argument("--seed", type=int, default=0, help="seed of particle and noise")
    p.add_argument("--order", choices=ORDERS, default="eta-outer", help="frame order (default eta-outer)")
    p.add_argument("--roi", type=int, nargs=4, metavar=("R0", "R1", "C0", "C1"), default=None,
                   help="render only detector rows R0:R1 and columns C0:C1")
    p.add_argument("--dtype", choices=("uint32", "uint16"), default="uint32", help="frame type (uint16 clips)")
    p.add_argument("--block", type=int, default=256, help="frames rendered per block")
    p.add_argument("--entry", default="entry", help="HDF5 entry name (default entry)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file (atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
