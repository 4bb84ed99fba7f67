"""Sources of frames behind one interface: opmon's raw layout, ID01 BLISS files, XSOCS masters.

`open_source` sniffs the layout (or takes ``kind``), checks everything that can be checked
before a frame is read, and returns a `Source` whose maps yield chunk-aligned blocks of frames
with their map index, angles and monitor. `opmon process`, `opmon replay` (and through it the
live chain) and `opmon inspect` use it alike.
"""
from __future__ import annotations

from pathlib import Path

import h5py

from opmon.errors import RawFileError
from opmon.streaming.archive.raw import open_hdf5
from opmon.streaming.archive.sources import bliss, raw_layout, xsocs
from opmon.streaming.archive.sources.base import Block, FrameSegment, Source, SourceMap, SourceOptions

__all__ = ["KINDS", "Block", "FrameSegment", "Source", "SourceMap", "SourceOptions", "open_source", "sniff"]

#: --source choices; "auto" sniffs the file.
KINDS = ("auto", raw_layout.KIND, bliss.KIND, xsocs.KIND)
NAMES = {raw_layout.KIND: "opmon raw layout (FORMATS.md)", bliss.KIND: "ID01 BLISS", xsocs.KIND: "XSOCS master"}


def sniff(f: h5py.File) -> str:
    """Which layout `f` is in: XSOCS (channels per degree), opmon raw (map_index), BLISS (scans N.M), else raw."""
    if xsocs.looks_like(f):
        return xsocs.KIND
    if raw_layout.looks_like(f):
        return raw_layout.KIND
    if bliss.looks_like(f):
        return bliss.KIND
    return raw_layout.KIND  # its reader names what is missing


def open_file(path: str | Path) -> h5py.File:
    """Open a beamline or raw file read-only, or say in one line why not."""
    return open_hdf5(path, "raw SXDM, ID01 BLISS or XSOCS HDF5 file")


def open_source(path: str | Path | list[str | Path], kind: str = "auto", options: SourceOptions | None = None) -> Source:
    """Open `path` as a source of frames, every map checked before any frame is read.

    Parameters
    ----------
    path
        one file, or several ID01 BLISS files whose map scans make one map together.
    kind
        "auto" (sniff), "raw", "bliss" or "xsocs".
    options
        scans, detector, monitor, geometry overrides; the raw layout's entry.

    Raises
    ------
    RawFileError
        one line naming the file and what is missing, inconsistent or malformed.
    """
    if kind not in KINDS:
        raise RawFileError(f"--source {kind!r}: expected one of {', '.join(KINDS)}")
    options = options or SourceOptions()
    paths = [Path(q) for q in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if len(paths) > 1:
        return _open_several(paths, kind, options)
    p = paths[0]
    f = open_file(p)
    try:
        kind = sniff(f) if kind == "auto" else kind
        if kind == raw_layout.KIND:
            if options.scans or options.detector or options.monitor:
                raise RawFileError(f"{p}: --scans, --detector and --monitor apply to ID01 BLISS and XSOCS files; "
                                   f"this is opmon's raw layout (choose maps with --entry)")
            return raw_layout.open_raw(f, p, options.entry, options.geometry, options.geometry_path)
        if options.entry:
            raise RawFileError(f"{p}: --entry applies to opmon's raw layout; choose {NAMES[kind]} scans with --scans")
        opener = bliss.open_bliss if kind == bliss.KIND else xsocs.open_xsocs
        return opener(f, p, options)
    except OSError as exc:  # a truncated or damaged file fails while its metadata are read
        f.close()
        raise RawFileError(f"{p}: damaged or truncated HDF5 file ({str(exc).split('(')[0].strip()})") from exc
    except BaseException:
        f.close()
        raise


def _open_several(paths: list[Path], kind: str, options: SourceOptions) -> Source:
    """Several BLISS files (a dataset split over files) as one map; every other layout is one file at a time."""
    files: list[h5py.File] = []
    try:
        for p in paths:
            files.append(open_file(p))
            found = sniff(files[-1]) if kind == "auto" else kind
            if found != bliss.KIND:
                raise RawFileError(f"{p}: {NAMES[found]}: only ID01 BLISS files can be read together; give one file")
        return bliss.open_bliss(files[0], paths[0], options, list(zip(files[1:], paths[1:])))
    except OSError as exc:
        for f in files:
            f.close()
        raise RawFileError(f"{paths[len(files) - 1]}: damaged or truncated HDF5 file ({str(exc).split('(')[0].strip()})") from exc
    except BaseException:
        for f in files:
            f.close()
        raise
