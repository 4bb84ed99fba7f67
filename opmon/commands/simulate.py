"""`opmon simulate -o RAW.h5`: a simulated SXDM map in the raw layout, with its ground truth.

Frames are rendered in blocks (never the whole stack) by `opmon.simulators.render` and
written through `opmon.streaming.archive.raw.RawMapWriter`; the next block renders in a worker thread
(numba releases the GIL) while the current one is compressed and written. The truth maps
of the particle go to ``/entry/truth/<name>`` with the names of FORMATS.md plus:

* ``lithium`` (local x), ``support`` (1 = particle), ``sigma`` (Gaussian σ_p, 1/Å);
* ``d_parent``, ``d_product`` (Å): the phase consumed and the phase forming on the current
  plateau (NaN: none), ``product_fraction``: the forming phase's share of the beam column;
* ``imaged_fraction``: the share of the column whose reflection the detector window sees
  (``--window one-phase``), ``seen`` (1 = some intensity reaches the detector);
* ``d_spacing`` is 2π/|q| of the intensity-weighted mean Q of the seen peaks (a two-peak
  pixel's d is what an ideal centre of mass measures); ``peak_width`` the second-moment
  radius of the peak shape actually rendered;
* with ``--effects``: ``incident_scale`` (N,) relative beam intensity per frame (the
  monitor, ``/entry/instrument/monitor/data``, records it with noise); ``drift`` (n_angles,
  2) the sample's (dy, dx) shift in map pixels during each eta scan, in the truth maps' frame:
  where the particle sat on average, weighted by each scan's expected Σ I (the first scans of
  a rocking curve may see nothing, so no registration could find the first scan's frame); ``unmasked_hot_pixels`` (k, 2) hot pixels
  (row, col of the written frames) missing from the detector mask; ``chip_gap_rows``,
  ``chip_gap_cols`` (frame coordinates); ``powder_spots`` (k, 9) as
  `opmon.simulators.scene.powder_spots` describes, ``powder_spot_d`` (k,) the d of each spot's
  grain (Å: the grains are at their own state of charge, `opmon.simulators.grains`, so a spot's
  2θ is not the particle's); ``peak_shape`` (3, 3), the relative
  covariance S of every peak (covariance σ_p² S).

The simulation parameters (mode, window, effects, scan, flux) are attributes of ``/entry/truth``.
"Paper" mode (the default) is the paper's scan: a 0.016° rocking step centred on the imaged
phase, the detector window on one phase; other modes keep the compact 0.04° scan at 19°.
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

UNITS = {"d_parent": "angstrom", "powder_spot_d": "angstrom", "d_product": "angstrom", "drift": "map pixel", "drift_weights": "counts", "d_spacing": "angstrom", "tilt_altitude": "deg", "tilt_azimuth": "deg", "intensity": "counts",
         "peak_width": "1/angstrom", "sigma": "1/angstrom", "q": "1/angstrom", "mean_q": "1/angstrom"}


def write_truth(group: h5py.Group, truth: dict[str, Any]) -> None:
    """Write truth maps into ``group`` (one dataset per name, with units)."""
    import numpy as np
    group.attrs["NX_class"] = "NXcollection"
    for name, value in truth.items():
        ds = group.create_dataset(name, data=np.asarray(value))
        if name in UNITS:
            ds.attrs["units"] = UNITS[name]


POWDER_GRAINS = 40  # grains of the electrode lit near the particle (--effects powder-arcs), one spot each

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
             progress: bool = True, window: str = "auto", effects: str = "none",
             peak_counts: float | None = None) -> dict[str, Any]:
    """Render one map to ``path`` (atomically: a killed run leaves no file); returns the truth dict."""
    import numpy as np

    from opmon.simulators import peak_shape, scene
    from opmon.simulators.crystal import ParticleModel
    from opmon.simulators.drift import centred_on, drift_path
    from opmon.simulators.effects import parse_effects
    from opmon.simulators.grains import grain_spacings
    from opmon.simulators.instrument import SxdmSetup, maxipix_2x2
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
    if window not in ("auto", "all", "one-phase"):
        raise ConfigError(f"--window {window!r}: expected auto, all or one-phase")
    fx = parse_effects(effects)
    if fx.drift_px and order != "eta-outer":
        raise ConfigError("--effects drift: needs --order eta-outer (the sample drifts between eta scans)")
    check_outputs([path], [], force=force)
    paper = mode == "paper"
    window = ("one-phase" if paper else "all") if window == "auto" else window
    kwargs: dict[str, Any] = dict(map_shape=(ny, nx), n_angles=angles, roi=roi)
    if peak_counts is not None:  # a low-signal map: fewer Bragg photons per map pixel, same background
        if not (np.isfinite(peak_counts) and peak_counts > 0):
            raise ConfigError(f"--peak-counts {peak_counts!r}: must be a positive number of counts")
        kwargs["peak_counts"] = float(peak_counts)
    kwargs["eta_step"] = eta_step if eta_step is not None else (PAPER_ETA_STEP if paper else 0.04)
    if fx.gradient:  # a real background: 10x the compact one, with a gradient
        kwargs["background_rate"] = 10 * SxdmSetup.background_rate
    make_setup = maxipix_2x2 if fx.maxipix else SxdmSetup
    setup = make_setup(**kwargs)
    particle = ParticleModel(setup, seed=seed, mode=mode, x_mean=x_mean, cycles=cycles, window=window,
                             mixed_fronts=fx.mixed_fronts)
    if eta_center is None and paper:  # the paper's scan is centred on the imaged phase
        centre = float(particle.bragg_eta()) if np.isfinite(particle.truth()["mean_q"]).all() else setup.eta_center
        eta_center = round(centre, 4)
    if eta_center is not None:
        kwargs["eta_center"] = eta_center
        setup = make_setup(**kwargs)
        particle = ParticleModel(setup, seed=seed, mode=mode, x_mean=x_mean, cycles=cycles, window=window,
                                 mixed_fronts=fx.mixed_fronts)
    n = ny * nx * angles
    budget = estimate(n, setup.frame_shape, np.dtype(dtype).itemsize, block, ny * nx)
    check_budget(budget, path, block)
    if progress:
        print(f"opmon simulate: {budget.describe()}", file=sys.stderr)
    shape = peak_shape.FOCUSED_RING if fx.ring else peak_shape.FOCUSED if fx.focused_beam else peak_shape.COMPACT
    truth = particle.truth()
    spots = None
    if fx.powder_arcs:  # the electrode's other grains, each at its own state of charge
        spots = scene.powder_spots(setup, grain_spacings(mode, x_mean, POWDER_GRAINS, seed), seed, POWDER_GRAINS)
    renderer = FrameRenderer(setup, particle, seed=seed, dtype=np.dtype(dtype), shape=shape, spots=spots,
                             gradient=(0.8, -0.5) if fx.gradient else (0.0, 0.0), unmasked_hot=fx.hot_unmasked)
    margin = particle.rocking_margin() / shape.largest_width
    if margin < 4.0:
        log.warning("rocking scan holds some peaks only %.1f sigma inside its ends: centres will be biased", margin)
    midx, etas = setup.scan(order)
    x_um, y_um = setup.map_positions_um(midx)
    scales = scene.incident_scale(midx.size, fx.beam_drop)
    drift = drift_path(setup.n_angles, fx.drift_px, seed)
    scan_weights = particle.scan_weights(setup.eta_values())
    if fx.drift_px:   # the truth maps' frame: where the particle sat on average, weighted by what each scan sees
        scan_weights = renderer.scan_counts(setup.eta_values())   # with the peak's real shape (broad: wider rocking)
        drift = centred_on(drift, scan_weights)
    r0, _, c0, _ = setup.roi_window
    truth["peak_width"] = shape.width_factor() * truth["sigma"]
    extra: dict[str, Any] = {}
    if fx.beam_drop:
        extra["incident_scale"] = scales
    if fx.drift_px:
        extra["drift"] = drift
        extra["drift_weights"] = scan_weights   # how much each eta scan sees: what a drift error there costs
    if fx.hot_unmasked:
        extra["unmasked_hot_pixels"] = renderer.unmasked_hot - np.array([r0, c0])
    if fx.maxipix:
        extra["chip_gap_rows"] = np.array([r - r0 for r in setup.gap_rows])
        extra["chip_gap_cols"] = np.array([c - c0 for c in setup.gap_cols])
    if spots is not None:
        extra["powder_spots"] = spots[:, :9]
        extra["powder_spot_d"] = spots[:, 9]
    if not shape.isotropic:
        extra["peak_shape"] = shape.matrix
    truth.update(extra)
    with interrupt.interruptible():
        try:
            with atomic_path(path) as tmp:
                _write(tmp, entry, setup, renderer, truth, midx, etas, x_um, y_um, block, progress, path.name,
                       scales, drift if fx.drift_px else None, scene.monitor_counts(scales, seed) if fx.beam_drop else None,
                       dict(mode=mode, window=window, effects=",".join(fx.names()) or "none", x_mean=x_mean, cycles=cycles, seed=seed, order=order, eta_step=setup.eta_step,
                            eta_center=setup.eta_center, peak_sigma_q=setup.peak_sigma_q, peak_counts=setup.peak_counts,
                            background_rate=setup.background_rate, rocking_margin_sigma=margin))
        except OSError as exc:  # e.g. the disk filled up after all: the temporary file is already gone
            raise ConfigError(f"{path}: cannot write ({exc.strerror or str(exc).split('(')[0].strip()})") from exc
    return truth


def _write(tmp: Path, entry: str, setup: Any, renderer: Any, truth: dict[str, Any], midx: np.ndarray,
           etas: np.ndarray, x_um: np.ndarray, y_um: np.ndarray, block: int, progress: bool, label: str,
           scales: np.ndarray, drift: np.ndarray | None, monitor: np.ndarray | None, attrs: dict[str, Any]) -> None:
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
        if monitor is not None:  # FORMATS.md: incident-beam monitor per frame
            mon = group.require_group("instrument").create_group("monitor")
            mon.attrs["NX_class"] = "NXmonitor"
            mon.create_dataset("data", data=monitor).attrs["units"] = "counts"
        tgroup = group.create_group("truth")
        write_truth(tgroup, truth)
        for key, value in attrs.items():
            tgroup.attrs[key] = value
        bufs = [np.empty((min(block, n),) + setup.frame_shape, dtype=renderer.dtype) for _ in range(2)]

        def render(i: int) -> tuple[int, np.ndarray]:
            start = i * block
            stop = min(start + block, n)
            out = bufs[i % 2][: stop - start]
            a = start
            while a < stop:  # in slices, so Ctrl-C abandons a block quickly
                if interrupt.requested():
                    break
                b = min(a + WRITE_SLICE, stop)
                if drift is not None:  # one eta scan at a time: the sample sits still within it
                    scan = a // setup.n_points
                    b = min(b, (scan + 1) * setup.n_points)
                    renderer.set_drift(*drift[scan])
                renderer.frames(midx[a:b], etas[a:b], setup.phi, setup.nu, setup.delta, out=out[a - start:b - start],
                                scales=scales[a:b])
                a = b
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
             entry=args.entry, force=args.force, progress=not args.quiet, window=args.window, effects=args.effects,
             peak_counts=args.peak_counts)
    print(f"simulated map written to {args.output}")
    return 0


# Copies of opmon.simulators.crystal.MODES and instrument.ORDERS (a test keeps them equal), so
# that building the command line does not import numba for every opmon command.
MODES = ("paper", "nucleated", "core-shell", "uniform", "two-phase-nucleated", "two-phase-core-shell")
ORDERS = ("eta-outer", "point-outer")
EFFECTS = ("focused-beam", "ring", "mixed-fronts", "powder-arcs", "gradient", "beam-drop", "drift", "maxipix",
           "hot-unmasked")
PAPER_ETA_STEP = 0.016  # deg, the paper's rocking step (seed 000)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="write a simulated raw SXDM map with its ground truth", description=__doc__)
    p.add_argument("-o", "--output", required=True, help="raw HDF5 file to write")
    p.add_argument("--ny", type=int, default=60, help="map rows (default 60)")
    p.add_argument("--nx", type=int, default=60, help="map columns (default 60)")
    p.add_argument("--angles", type=int, default=30, help="rocking angles (default 30)")
    p.add_argument("--eta-step", type=float, default=None,
                   help="rocking step in deg (default 0.016 in paper mode, the paper's; else 0.04)")
    p.add_argument("--eta-center", type=float, default=None,
                   help="centre of the rocking scan in deg (default: on the imaged phase in paper mode, else 19)")
    p.add_argument("--window", choices=("auto", "all", "one-phase"), default="auto",
                   help="phases the detector sees: one-phase = only the one consumed on this plateau, as in the "
                        "paper (auto: one-phase in paper mode, else all)")
    p.add_argument("--effects", default="none", metavar="LIST",
                   help=f"what real data has: none (default), all, or a comma list of {', '.join(EFFECTS)}")
    p.add_argument("--mode", choices=MODES, default="paper", help="phase-transition model (default paper)")
    p.add_argument("--x-mean", type=float, default=1.0, help="mean lithium content x in [0, 1] (default 1)")
    p.add_argument("--cycles", type=float, default=0.0, help="charge-discharge cycles before this map")
    p.add_argument("--seed", type=int, default=0, help="seed of particle and noise")
    p.add_argument("--order", choices=ORDERS, default="eta-outer", help="frame order (default eta-outer)")
    p.add_argument("--roi", type=int, nargs=4, metavar=("R0", "R1", "C0", "C1"), default=None,
                   help="render only detector rows R0:R1 and columns C0:C1")
    p.add_argument("--peak-counts", type=float, default=None, metavar="N",
                   help="Bragg counts summed over the frames of the brightest map pixel (default 2e4; e.g. 1e3 "
                        "for a low-signal map)")
    p.add_argument("--dtype", choices=("uint32", "uint16"), default="uint32", help="frame type (uint16 clips)")
    p.add_argument("--block", type=int, default=256, help="frames rendered per block")
    p.add_argument("--entry", default="entry", help="HDF5 entry name (default entry)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file (atomically)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
