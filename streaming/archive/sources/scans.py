"""One map from a series of map scans (one per eta): what BLISS and XSOCS files have in common.

A `Survey` lists every scan (`ScanInfo`: frames, grid, angles, positions, monitor) with
whether it is taken and why not; `build_source` checks the taken scans against each other
(frame shape, grid, calibration) and concatenates their per-frame metadata into one
`SourceMap` whose segments are the scans' frame datasets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import RawFileError
from opmon.streaming.archive.raw import RawMeta
from opmon.streaming.archive.sources import hdf5_values as hv
from opmon.streaming.archive.sources.base import FrameSegment, Source, SourceMap, SourceOptions, count_dtype
from opmon.streaming.archive.sources.geometry import GeometryValues
from opmon.streaming.archive.sources.grid import Grid
from opmon.streaming.archive.sources.links import Found, source_files


@dataclass
class ScanInfo:
    """What one scan holds, read from metadata only."""

    name: str
    title: str
    group: h5py.Group | None = None  # the scan's group (in its own file when several are read)
    taken: bool = False
    why: str = ""  # why it is skipped
    detector: str | None = None
    frames: Found | None = None
    grid: Grid | None = None
    dims: tuple[int, int] | None = None  # technique (dim0 = fast points, dim1 = slow points)
    angles: dict[str, npt.NDArray[np.float64] | None] = field(default_factory=dict)
    positions: dict[str, npt.NDArray[np.float64] | None] = field(default_factory=dict)
    monitor: npt.NDArray[np.float64] | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.dataset.shape[0]) if self.frames and self.frames.dataset is not None else 0

    @property
    def where(self) -> str:
        """file:/N.1 of the scan, for messages."""
        file = self.group.file.filename if self.group is not None else "?"
        return f"{file}:/{self.name.rpartition(':')[2]}"

    @property
    def map_shape(self) -> tuple[int, int] | None:
        if self.dims is not None:
            return (self.dims[1], self.dims[0])
        return self.grid.shape if self.grid else None


@dataclass
class Survey:
    """Every scan of a BLISS file (taken and skipped), the detector and the geometry found."""

    path: Path
    creator: str
    scans: list[ScanInfo]
    detector: str | None
    detector_problem: str | None
    geometry: GeometryValues
    mask: npt.NDArray[np.uint8] | None = None
    mask_origin: str | None = None
    counters: list[str] = field(default_factory=list)

    @property
    def taken(self) -> list[ScanInfo]:
        return [s for s in self.scans if s.taken]


def wanted(name: str, scans: list[str] | None) -> bool:
    """Whether scan `name` ("N.1", or "file.h5:N.1" when several files are read) is among those chosen."""
    if scans is None:
        return True
    bare = name.rpartition(":")[2]
    return name in scans or bare in scans or bare.split(".")[0] in scans


def _per_frame(arr: npt.NDArray[np.float64] | None, n: int, where: str) -> npt.NDArray[np.float64]:
    if arr is None:
        raise RawFileError(f"{where}: missing")
    if arr.ndim == 0 or arr.size == 1:
        return np.full(n, float(arr.reshape(-1)[0]))
    if arr.shape != (n,):
        raise RawFileError(f"inconsistent scan: {where} holds {arr.size} values for {n} frames")
    if not np.isfinite(arr).all():
        raise RawFileError(f"{where}: non-finite value at frame {int(np.argmax(~np.isfinite(arr)))}")
    return arr


def no_frames_error(sv: Survey) -> RawFileError:
    """The one line when there is nothing to process: no map scan, or its frames are missing."""
    skipped = "; ".join(f"{s.name} {s.title!r}: {s.why}" for s in sv.scans if not s.taken) or "the file holds no scans"
    lost = [s.frames.missing for s in sv.scans if s.frames and s.frames.missing]
    extra = f"; the frames are missing too: {lost[0]}" if lost else ""
    return RawFileError(f"{sv.path}: no frames to process: no SXDM/KMAP map scan ({skipped}){extra}")


def build_source(f: h5py.File, sv: Survey, opts: SourceOptions, kind: str, fmt: str, angles: dict[str, str],
                 positions_in: str, scan_geometry: Any) -> Source:
    """One map from the chosen scans of a survey (BLISS or XSOCS), every check done before any frame is read."""
    path = sv.path
    if opts.scans:
        names = {s.name for s in sv.scans} | {s.name.rpartition(":")[2] for s in sv.scans}
        for want in opts.scans:
            if want not in names and f"{want}.1" not in names:
                raise RawFileError(f"{path}: --scans {want}: no such scan; scans: {', '.join(sorted(names, key=hv.scan_key))}")
        for s in sv.scans:
            if wanted(s.name, opts.scans) and not s.taken:
                raise RawFileError(f"{path}: --scans {s.name}: {s.why} (title {s.title!r})")
    taken = sv.taken
    if not taken:
        raise no_frames_error(sv)
    if sv.detector_problem:
        raise RawFileError(f"{path}: {sv.detector_problem}")
    for s in taken:
        assert s.frames is not None
        if s.frames.missing:
            raise RawFileError(f"{s.where.rpartition(':/')[0]}: no frames: {s.frames.missing}")
    first = taken[0]
    shape = first.map_shape
    if shape is None:
        raise RawFileError(f"{path}: {first.name}: no map grid (title {first.title!r} unreadable, no technique/dim0, dim1)")
    if first.dims and first.grid and first.grid.shape != shape:
        raise RawFileError(f"inconsistent scan {first.name}: technique/dim0, dim1 = {first.dims} but the title says "
                           f"{first.grid.fast.points} x {first.grid.slow.points} points")
    data0 = first.frames.dataset
    dtype = count_dtype(data0.dtype, f"{first.where.rpartition(':/')[0]}:/{first.frames.path}")
    for s in taken[1:]:
        ds = s.frames.dataset
        problem = None
        if ds.shape[1:] != data0.shape[1:] or ds.dtype != data0.dtype:
            problem = f"frames {ds.shape[1:]} {ds.dtype} differ from {first.name}'s {data0.shape[1:]} {data0.dtype}"
        elif s.map_shape != shape or (s.grid and first.grid and not s.grid.same_as(first.grid)):
            problem = f"map grid {s.map_shape} ({s.title!r}) differs from {first.name}'s {shape} ({first.title!r})"
        if problem:
            raise RawFileError(f"{path}: inconsistent scans: {s.name}: {problem}")
    _check_same_geometry(taken, sv, opts, scan_geometry)
    sv.geometry.require(str(path))
    rows, cols = int(data0.shape[1]), int(data0.shape[2])
    if sv.mask is not None and sv.mask.shape != (rows, cols):
        raise RawFileError(f"{path}: {sv.mask_origin}: shape {sv.mask.shape}, frames are {(rows, cols)}")
    columns: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in ("map_index", *angles, "monitor")}
    segments, first_frame = [], 0
    for s in taken:
        n = s.n_frames
        where = s.where
        columns["map_index"].append(_map_index(s, first, n, where, positions_in))
        for key, motor in angles.items():
            columns[key].append(_per_frame(s.angles[key], n, f"{where}/instrument/positioners/{motor}"))
        if opts.monitor:
            columns["monitor"].append(_per_frame(s.monitor, n, f"{where}/measurement/{opts.monitor}"))
        segments.append(FrameSegment(s.frames.dataset, first_frame, f"{s.where.rpartition(':/')[0]}:/{s.frames.path}"))
        first_frame += n
    geo = sv.geometry.values
    meta = RawMeta(energy_ev=geo["incident_energy"], distance_m=geo["distance"],
                   pixel_size_m=(geo["y_pixel_size"], geo["x_pixel_size"]),
                   beam_center=(geo["beam_center_y"], geo["beam_center_x"]),
                   eta=np.concatenate(columns["eta"]), phi=np.concatenate(columns["phi"]),
                   nu=np.concatenate(columns["nu"]), delta=np.concatenate(columns["delta"]), map_shape=shape,
                   map_index=np.concatenate(columns["map_index"]), frame_shape=(rows, cols), frame_dtype=dtype,
                   detector_mask=sv.mask)
    provenance = {"format": fmt, "scans": [s.name for s in taken], "detector": sv.detector,
                  "skipped_scans": {s.name: s.why for s in sv.scans if not s.taken},
                  "geometry": sv.geometry.record(), "mask": sv.mask_origin,
                  "map_index": "piezo positions binned to the grid" if first.grid and all(
                      v is not None for v in first.positions.values()) else "frame order"}
    monitor = np.concatenate(columns["monitor"]) if opts.monitor else None
    label = f"{path} (scans {taken[0].name}..{taken[-1].name}, {sv.detector})"
    inputs = [path]
    for s in taken:
        inputs += [p for p in source_files(s.frames.dataset) if p not in inputs and p != path.absolute()]
    return Source(path, kind, f, [SourceMap("entry", label, meta, segments, monitor, provenance, 0)], inputs)


def _map_index(s: ScanInfo, first: ScanInfo, n: int, where: str, positions_in: str) -> npt.NDArray[np.int64]:
    """Map pixel of each frame: positions binned to the first scan's grid, or frame order without positions."""
    grid = first.grid
    if grid is not None and all(s.positions.get(a.motor) is not None for a in (grid.fast, grid.slow)):
        fast, slow = s.positions[grid.fast.motor], s.positions[grid.slow.motor]
        for motor, arr in ((grid.fast.motor, fast), (grid.slow.motor, slow)):
            if arr.shape != (n,):
                raise RawFileError(f"inconsistent scan: {where}/{positions_in}/{motor}_position holds {arr.size} "
                                   f"values for {n} frames")
        return grid.index(fast, slow, f"{where}/{positions_in}")
    shape = s.map_shape or first.map_shape
    assert shape is not None
    if n > shape[0] * shape[1]:
        raise RawFileError(f"{where}: {n} frames for a {shape[0]} x {shape[1]} map and no piezo positions to place them")
    return np.arange(n, dtype=np.int64)


def _check_same_geometry(taken: list[ScanInfo], sv: Survey, opts: SourceOptions, scan_geometry: Any) -> None:
    """Scans whose detector calibration or energy differ cannot make one map (unless --geometry fixes the key)."""
    first = sv.geometry
    for s in taken[1:]:
        geo = scan_geometry(s)
        for key, value in geo.values.items():
            if key in opts.geometry or key not in first.values:
                continue
            if not np.isclose(value, first.values[key], rtol=1e-9, atol=0.0):
                raise RawFileError(f"{sv.path}: inconsistent scans: {geo.origin[key]} = {value!r} differs from "
                                   f"{first.origin[key]} = {first.values[key]!r} (give {key} in --geometry to use one value)")
