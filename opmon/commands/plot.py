"""`opmon plot MAPS -o PNG`: the one-page summary figure of a maps file; `opmon plot RUN --series`:
the run's curve (integrated intensity and mean d of each map against the charge passed)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from opmon import interrupt
from opmon.errors import RawFileError
from opmon.figure_paths import figure_paths
from opmon.streaming.archive.layout import MAPS
from opmon.streaming.archive.safe_writes import check_outputs

if TYPE_CHECKING:     # h5py, matplotlib: imported when a figure is made, not for `opmon --help`
    import h5py


def _open(path: Path) -> h5py.File:
    from opmon.streaming.archive.raw import open_hdf5
    return open_hdf5(path, "maps HDF5 file", swmr=False)


def run(args: argparse.Namespace) -> int:
    with interrupt.exit_promptly("plot"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.series:
        return _series(args)
    import h5py

    from opmon.processors.figure import plot_maps
    from opmon.processors.figure_context import map_context
    from opmon.processors.maps import read_map_result
    path = Path(args.maps)
    with interrupt.interruptible(), _open(path) as f:
        try:
            if args.entry:
                if args.entry not in f:
                    raise RawFileError(f"{path}: no entry {args.entry!r}")
                names = [args.entry]
            else:
                names = [n for n in f if isinstance(f.get(n), h5py.Group) and MAPS in f[n]]
            if not names:
                raise RawFileError(f"{path}: no entry holds a maps group")
            results = {name: read_map_result(f[name]) for name in names}  # every map read and checked first
            contexts = {name: map_context(f[name], f"{path.name}:{name}") for name in names}
        except OSError as exc:
            raise RawFileError(f"{path}: damaged or truncated HDF5 file ({str(exc).split('(')[0].strip()})") from exc
        pngs = figure_paths(Path(args.output or path.with_suffix(".png")), names)
        check_outputs(pngs.values(), [path], force=args.force)
        for name, png in pngs.items():
            interrupt.check()
            plot_maps(results[name], png, contexts[name])
            print(f"figure written to {png}")
    return 0


def _series(args: argparse.Namespace) -> int:
    from opmon.processors.figure import plot_series
    from opmon.processors.series import run_series
    path = Path(args.maps).resolve()
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / "run.h5").is_file():
        raise RawFileError(f"{path}: --series needs an archived run (its directory or its run.h5)")
    png = Path(args.output or run_dir / "series.png")
    if png.suffix.lower() != ".png":
        raise RawFileError(f"{png}: the figure needs a file name ending in .png")
    check_outputs([png], [run_dir / "run.h5"], force=args.force)
    with interrupt.interruptible():
        try:
            points = run_series(run_dir)
        except (OSError, KeyError) as exc:
            raise RawFileError(f"{run_dir}: archived maps not readable ({exc})") from exc
        if not points:
            raise RawFileError(f"{run_dir}: no map of this run has final maps yet")
        plot_series(points, png, title=f"run {run_dir.name}")
    for p in points:
        charge = f"{p.charge_mah:.4f} mA h" if p.charge_mah is not None else "charge unknown"
        print(f"map {p.number}: {charge}, integrated intensity {p.integrated_intensity:.4g} counts, "
              f"{p.valid_fraction:.0%} of pixels valid")
    print(f"figure written to {png}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="write the summary PNG of a maps file", description=__doc__)
    p.add_argument("maps", help="maps HDF5 file written by opmon process or the live processor (with --series: a run)")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: MAPS with .png)")
    p.add_argument("--entry", default=None, help="entry to plot (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG (never the maps file)")
    p.add_argument("--series", action="store_true",
                   help="MAPS is an archived run (directory or run.h5): plot each map's integrated intensity and "
                        "mean d against the charge passed (default output RUN/series.png)")
    p.set_defaults(func=run)
