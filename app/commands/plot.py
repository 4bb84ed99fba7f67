"""`opmon plot MAPS -o PNG`: the one-page summary figure of a maps file."""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py

from opmon.errors import RawFileError


def run(args: argparse.Namespace) -> int:
    from opmon.processors.figure import plot_maps
    from opmon.processors.mapfile import read_maps
    path = Path(args.maps)
    if not path.exists():
        raise RawFileError(f"{path}: no such file")
    with h5py.File(path, "r") as f:
        names = [args.entry] if args.entry else [n for n in f if isinstance(f[n], h5py.Group) and "maps" in f[n]]
        if not names:
            raise RawFileError(f"{path}: no entry holds a maps group")
        for name in names:
            if name not in f:
                raise RawFileError(f"{path}: no entry {name!r}")
            png = Path(args.output or path.with_suffix(".png"))
            if len(names) > 1:
                png = png.with_name(f"{png.stem}_{name}{png.suffix}")
            plot_maps(read_maps(f[name]), png, title=f"{path.name}:{name}")
            print(f"figure written to {png}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="write the summary PNG of a maps file", description=__doc__)
    p.add_argument("maps", help="maps HDF5 file written by opmon process or the live processor")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: MAPS with .png)")
    p.add_argument("--entry", default=None, help="entry to plot (default: all)")
    p.set_defaults(func=run)
