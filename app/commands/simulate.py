"""`opmon simulate -o RAW.h5`: a simulated SXDM map in the raw layout, with its ground truth.

Frames are rendered in blocks (never the whole stack) by `opmon.simulators.render` and
written through `opmon.formats.RawMapWriter`; the next block renders in a worker thread
(numba releases the GIL) while the current one is compressed and written. The truth maps
of the particle go to ``/entry/truth/<name>`` with the names of FORMATS.md plus
``lithium``, ``support`` and ``sigma``; the simulation parameters are attributes of
``/entry/truth``.
"""
from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from opmon.errors import ConfigError

if TYPE_CHECKING:
    import h5py

log = logging.getLogger(__name__)

UNITS = {"d_spacing": "angstrom", "tilt_altitude": "deg", "tilt_azimuth": "deg", "intensity": "counts",
         "peak_width": "1/angstrom", "sigma": "1/angstrom", "q": "1/angstrom", "mean_q": "1/angstrom"}


def write_truth(group: h5py.Group, truth: dict[str, Any]) -> None:
    """Write truth maps into ``group`` (one dataset per name, with units)."""
    group.attrs["NX_class"] = "NXcollection"
    for name, value in truth.items():
        ds = group.create_dataset(name, data=np.asarray(value))
        if name in UNITS:
            ds.attrs["units"] = UNITS[name]


def simulate(path: Path, *, ny: int = 60, nx: int = 60, angles: int = 30, eta_step: float | None = None,
             eta_center: float | None = None, mode: str = "paper", x_mean: float = 1.0, cycles: float = 0.0,
             seed: int = 0, order: str = "eta-outer", roi: tuple[int, int, int, int] | None = None,
             dtype: str = "uint32", block: int = 256, entry: str = "entry", force: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Render one map to ``path``; returns the truth dict that was written."""
    import h5py
    from tqdm import tqdm

    from opmon.formats import RawMapWriter
    from opmon.simulators.crystal import ParticleModel
    from opmon.simulators.render import FrameRenderer
    from opmon.simulators.setup import SxdmSetup

    if dtype not in ("uint32", "uint16"):
        raise ConfigError(f"--dtype {dtype!r}: expected uint32 or uint16")
    if block < 1:
        raise ConfigError(f"--block {block}: must be >= 1")
    if path.exists() and not force:
        raise ConfigError(f"{path}: exists (use --force to overwrite)")
    kwargs: dict[str, Any] = dict(map_shape=(ny, nx), n_angles=angles, roi=roi)
    if eta_step is not None:
        kwargs["eta_step"] = eta_step
    if eta_center is not None:
        kwargs["eta_center"] = eta_center
    setup = SxdmSetup(**kwargs)
    particle = ParticleModel(setup, seed=seed, mode=mode, x_mean=x_mean, cycles=cycles)
    renderer = FrameRenderer(setup, particle, seed=seed, dtype=np.dtype(dtype))
    margin = particle.rocking_margin()
    if margin < 4.0:
        log.warning("rocking scan holds some peaks only %.1f sigma inside its ends: centres will be biased", margin)
    midx, etas = setup.scan(order)
    x_um, y_um = setup.map_positions_um(midx)
    n = midx.size
    truth = particle.truth()
    with h5py.File(path, "w") as f, ThreadPoolExecutor(1) as pool:
        group = f.require_group(entry)
        writer = RawMapWriter(group, frame_shape=setup.frame_shape, dtype=renderer.dtype, energy_ev=setup.energy_ev,
                              distance_m=setup.distance_m, pixel_size_m=(setup.pixel_size_m, setup.pixel_size_m),
                              beam_center=setup.frame_beam_center, map_shape=setup.map_shape,
                              detector_mask=renderer.detector_mask, expected_frames=n)
        tgroup = group.create_group("truth")
        write_truth(tgroup, truth)
        for key, value in dict(mode=mode, x_mean=x_mean, cycles=cycles, seed=seed, order=order,
                               eta_step=setup.eta_step, eta_center=setup.eta_center,
                               peak_sigma_q=setup.peak_sigma_q, peak_counts=setup.peak_counts,
                               background_rate=setup.background_rate, rocking_margin_sigma=margin).items():
            tgroup.attrs[key] = value
        bufs = [np.empty((min(block, n),) + setup.frame_shape, dtype=renderer.dtype) for _ in range(2)]

        def render(i: int) -> tuple[int, np.ndarray]:
            start = i * block
            stop = min(start + block, n)
            return start, renderer.frames(midx[start:stop], etas[start:stop], setup.phi, setup.nu, setup.delta,
                                          out=bufs[i % 2][: stop - start])

        n_blocks = (n + block - 1) // block
        pending = pool.submit(render, 0)
        with tqdm(total=n, unit="frame", disable=not progress, desc=path.name) as bar:
            for i in range(n_blocks):
                start, frames = pending.result()
                if i + 1 < n_blocks:
                    pending = pool.submit(render, i + 1)
                stop = start + frames.shape[0]
                writer.append(frames, midx[start:stop], etas[start:stop], setup.phi, setup.nu, setup.delta,
                              x_um=x_um[start:stop], y_um=y_um[start:stop])
                bar.update(frames.shape[0])
    return truth


def run(args: argparse.Namespace) -> int:
    simulate(Path(args.output), ny=args.ny, nx=args.nx, angles=args.angles, eta_step=args.eta_step,
             eta_center=args.eta_center, mode=args.mode, x_mean=args.x_mean, cycles=args.cycles, seed=args.seed,
             order=args.order, roi=tuple(args.roi) if args.roi else None, dtype=args.dtype, block=args.block,
             entry=args.entry, force=args.force, progress=not args.quiet)
    print(f"simulated map written to {args.output}")
    return 0


# Copies of opmon.simulators.crystal.MODES and setup.ORDERS (a test keeps them equal), so
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
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
