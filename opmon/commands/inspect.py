"""`opmon inspect FILE`: what opmon sees in a file before any processing.

The layout (opmon raw, ID01 BLISS, XSOCS master), the scans it would take and those it skips
(and why), the detector and its frames, frame sources that are missing (a virtual dataset or
link onto a file that is not there), angles, the map grid and positions, and each geometry
value with where it came from, or that it is missing. Only metadata are read.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from opmon.source_options import add_source_arguments, source_options


def run(args: argparse.Namespace) -> int:
    from opmon.streaming.archive.sources import open_file
    from opmon.streaming.archive.sources.describe import describe_file

    options = source_options(args)
    path = Path(args.file)
    with open_file(path) as f:
        try:
            lines = describe_file(f, path, args.source, options)
        except OSError as exc:
            from opmon.errors import RawFileError
            raise RawFileError(f"{path}: damaged or truncated HDF5 file ({str(exc).split('(')[0].strip()})") from exc
    print("\n".join(lines))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="say what opmon sees in a raw, ID01 BLISS or XSOCS file", description=__doc__)
    p.add_argument("file", metavar="FILE", help="HDF5 file: opmon raw map or run.h5, ID01 BLISS file, XSOCS master")
    p.add_argument("--entry", default=None, help="raw layout: the entry to describe")
    add_source_arguments(p)
    p.set_defaults(func=run)
