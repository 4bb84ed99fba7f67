"""The command-line options that choose and describe a source of frames, shared by `opmon process`,
`opmon replay` and `opmon inspect` so the three accept the same words.

(Not in `opmon/commands/`: every module there is a subcommand.)
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:     # h5py and numpy come with the sources module: imported when a file is opened
    from opmon.streaming.archive.sources import SourceOptions

#: Copy of opmon.streaming.archive.sources.KINDS (a test keeps them equal), so building the
#: command line does not import h5py.
KINDS = ("auto", "raw", "bliss", "xsocs")


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """--source, --scans, --detector, --monitor, --geometry."""
    p.add_argument("--source", choices=KINDS, default="auto",
                   help="file layout: opmon raw (FORMATS.md), ID01 BLISS, XSOCS master (default: sniffed)")
    p.add_argument("--scans", nargs="+", metavar="SCAN",
                   help="BLISS/XSOCS: scans to use, as N.1, N or ranges A-B (default: every SXDM/KMAP scan)")
    p.add_argument("--detector", help="BLISS: detector dataset (default: the only 3-D one)")
    p.add_argument("--monitor", help="BLISS/XSOCS: counter in measurement/ carried as the monitor (e.g. mon1)")
    p.add_argument("--geometry", metavar="FILE.toml",
                   help="geometry the file lacks or mis-states (keys of FORMATS.md; overrides the file)")


def parse_scans(values: list[str] | None) -> list[str] | None:
    """Scan names from "N.1", "N" and "A-B" (inclusive ranges of scan numbers)."""
    from opmon.errors import OpmonError
    if not values:
        return None
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, _, hi = part.partition("-")
                try:
                    a, b = int(lo), int(hi)
                except ValueError as exc:
                    raise OpmonError(f"--scans {part!r}: a range is A-B with scan numbers, e.g. 1-31") from exc
                if b < a:
                    raise OpmonError(f"--scans {part!r}: empty range")
                out += [f"{n}.1" for n in range(a, b + 1)]
            else:
                out.append(part if "." in part else f"{part}.1")
    return out


def source_options(args: argparse.Namespace) -> SourceOptions:
    """The parsed options as the sources module wants them (the geometry file read and checked)."""
    from opmon.streaming.archive.sources import SourceOptions
    from opmon.streaming.archive.sources.geometry import read_geometry_file
    geometry = read_geometry_file(args.geometry) if args.geometry else {}
    return SourceOptions(scans=parse_scans(args.scans), detector=args.detector, monitor=args.monitor,
                         geometry=geometry, geometry_path=args.geometry, entry=getattr(args, "entry", None))
