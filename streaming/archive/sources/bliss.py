"""ID01 BLISS files (FORMATS.md "ID01 BLISS"): a 5-D SXDM as one map scan per eta, read as one map.

Each scan ``N.1`` whose title is a map (``sxdm(``, ``asxdm(``, ``kmap``) or that has
``technique/dim0, dim1`` adds its frames to the same map: frames from ``measurement/<det>``
(or ``instrument/<det>/image``, older files ``data``), usually a virtual dataset onto Lima's
files; map pixel of each frame from the measured piezo positions ``measurement/<motor>_position``
binned to the grid of the first scan; angles from ``instrument/positioners``; geometry from the
detector's metadata and the monochromator, overridden by ``--geometry``. `survey` reads only
metadata and never fails (it is what `opmon inspect` prints); `open_bliss` turns a survey into a
`Source` or raises one line naming the problem.
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
from opmon.streaming.archive.sources.grid import Grid, is_map_title, parse_title
from opmon.streaming.archive.sources.links import Found, follow, source_files

KIND = "bliss"
ANGLES = {"eta": "eta", "phi": "phi", "nu": "nu", "delta": "delta"}
DETECTOR_KEYS = {"beam_center_x": "beam_center_x", "beam_center_y": "beam_center_y", "distance": "distance",
                 "x_pixel_size": "x_pixel_size", "y_pixel_size": "y_pixel_size"}
HC_EV_M = 12398.419843320026e-10  # h·c in eV·m (CODATA 2018)


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


def looks_like(f: h5py.File) -> bool:
    """A BLISS file: written by Bliss, or top-level scans N.M holding measurement and title."""
    if str(f.attrs.get("creator", "")).lower().startswith("bliss"):
        return True
    names = hv.scan_names(f)
    return bool(names) and all(isinstance(f.get(n), h5py.Group) and "title" in f[n] for n in names[:3])


def _detectors(scan: h5py.Group) -> list[str]:
    """Names of 3-D datasets in measurement/ (and NXdetector groups with a 3-D image) of a scan."""
    found: list[str] = []
    meas = scan.get("measurement")
    if isinstance(meas, h5py.Group):
        for name in meas:
            ds = meas.get(name)
            if isinstance(ds, h5py.Dataset) and ds.ndim == 3:
                found.append(name)
    inst = scan.get("instrument")
    if isinstance(inst, h5py.Group):
        for name in inst:
            grp = inst.get(name)
            if isinstance(grp, h5py.Group) and name not in found:
                ds = grp.get("image", grp.get("data"))
                if isinstance(ds, h5py.Dataset) and ds.ndim == 3:
                    found.append(name)
    return found


def frames_of(scan: h5py.Group, det: str) -> Found:
    """The frames of detector `det` in `scan`: measurement/<det>, else instrument/<det>/image, else .../data."""
    tried = []
    for path in (f"measurement/{det}", f"instrument/{det}/image", f"instrument/{det}/data"):
        if scan.get(path, getlink=True) is None and not _parent_has(scan, path):
            continue
        found = follow(scan, path)
        if found.dataset is not None or found.missing:
            if found.dataset is not None and found.dataset.ndim != 3:
                tried.append(f"{found.path} has shape {found.dataset.shape}")
                continue
            return found
    return Found(None, f"{scan.name.strip('/')}/measurement/{det}",
                 f"{scan.name.strip('/')}: no frames of detector {det!r}" + (f" ({'; '.join(tried)})" if tried else ""))


def _parent_has(scan: h5py.Group, path: str) -> bool:
    parent, _, name = path.rpartition("/")
    grp = scan.get(parent)
    return isinstance(grp, h5py.Group) and grp.get(name, getlink=True) is not None


def _scan_info(f: h5py.File, name: str, opts: SourceOptions, det: str | None) -> ScanInfo:
    g = f[name]
    info = ScanInfo(name, hv.text(g, "title"), g)
    d0, d1 = hv.number(g, "technique/dim0"), hv.number(g, "technique/dim1")
    info.dims = (int(d0), int(d1)) if d0 and d1 else None
    info.grid = parse_title(info.title)
    if det:
        info.detector = det
        info.frames = frames_of(g, det)
    for key, motor in ANGLES.items():
        info.angles[key] = hv.values(g, f"instrument/positioners/{motor}")
    if info.grid:
        for axis in (info.grid.fast, info.grid.slow):
            info.positions[axis.motor] = hv.values(g, f"measurement/{axis.motor}_position")
    if opts.monitor:
        info.monitor = hv.values(g, f"measurement/{opts.monitor}")
    return info


def _choose_detector(f: h5py.File, names: list[str], opts: SourceOptions) -> tuple[str | None, str | None]:
    """(detector, problem): the named one, or the only 3-D dataset of the scans."""
    seen: list[str] = []
    for name in names:
        for det in _detectors(f[name]):
            if det not in seen:
                seen.append(det)
    if opts.detector:
        return opts.detector, None
    if not seen:
        return None, "missing detector: no 3-D frame dataset in measurement/ or instrument/<det>/image of any scan"
    if len(seen) > 1:
        return seen[0], f"several detectors ({', '.join(seen)}): choose one with --detector"
    return seen[0], None


def _wanted(name: str, scans: list[str] | None) -> bool:
    """Whether scan `name` ("N.1", or "file.h5:N.1" when several files are read) is among those chosen."""
    if scans is None:
        return True
    bare = name.rpartition(":")[2]
    return name in scans or bare in scans or bare.split(".")[0] in scans


def survey(f: h5py.File, path: Path, opts: SourceOptions) -> Survey:
    """Read every scan's metadata (nothing raises): what opmon sees in the file."""
    names = hv.scan_names(f)
    main = [n for n in names if n.endswith(".1")]
    det, problem = _choose_detector(f, main, opts)
    scans = []
    for name in names:
        info = _scan_info(f, name, opts, det) if name.endswith(".1") else ScanInfo(name, hv.text(f[name], "title"), f[name])
        if not name.endswith(".1"):
            info.why = "sub-scan (N.2...), not a map"
        elif not (is_map_title(info.title) or info.dims):
            info.why = "not a map scan (title is not sxdm/kmap, no technique/dim0, dim1)"
        elif not _wanted(name, opts.scans):
            info.why = "not chosen (--scans)"
        else:
            info.taken = True
        scans.append(info)
    geometry, mask, origin = _geometry([s for s in scans if s.taken] or [s for s in scans if s.frames], det, opts)
    counters = []
    first = next((s.name for s in scans if s.taken), main[0] if main else None)
    if first and isinstance(f[first].get("measurement"), h5py.Group):
        meas = f[first]["measurement"]
        counters = [c for c in ("mon1", "mon2", "exp1", "mon", "mon0", "mon3", "mon4") if c in meas]
    creator = f"{f.attrs.get('creator', '')} {f.attrs.get('creator_version', '')}".strip()
    return Survey(path, creator, scans, det, problem, geometry, mask, origin, counters)


def _geometry(scans: list[ScanInfo], det: str | None,
              opts: SourceOptions) -> tuple[GeometryValues, npt.NDArray[np.uint8] | None, str | None]:
    geo = GeometryValues()
    mask, origin = None, None
    if scans and det:
        g = scans[0].group
        assert g is not None
        base = f"{scans[0].name}/instrument/{det}"
        for key, name in DETECTOR_KEYS.items():
            value = hv.number(g, f"instrument/{det}/{name}")
            if value is not None and (value > 0 or key.startswith("beam_center")):
                geo.found(key, value, f"{base}/{name}")
            else:
                geo.missing[key] = f"{base}/{name}"
        energy = hv.number(g, "instrument/monochromator/Energy")
        wavelength = hv.number(g, "instrument/monochromator/WaveLength")
        if energy and energy > 0:
            units = str(g["instrument/monochromator/Energy"].attrs.get("units", "eV"))
            geo.found("incident_energy", energy * (1000.0 if units.lower() == "kev" else 1.0),
                      f"{scans[0].name}/instrument/monochromator/Energy")
        elif wavelength and wavelength > 0:
            geo.found("incident_energy", HC_EV_M / wavelength, f"{scans[0].name}/instrument/monochromator/WaveLength")
        else:
            geo.missing["incident_energy"] = f"{scans[0].name}/instrument/monochromator/Energy or WaveLength"
        pm = g.get(f"instrument/{det}/pixel_mask")
        if isinstance(pm, h5py.Dataset) and pm.ndim == 2:
            mask, origin = (np.asarray(pm[()]) != 0).astype(np.uint8), f"{base}/pixel_mask"
    geo.override(opts.geometry, opts.geometry_path)
    return geo, mask, origin


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


def open_bliss(f: h5py.File, path: Path, opts: SourceOptions, more: list[tuple[h5py.File, Path]] | None = None) -> Source:
    """The map of every chosen SXDM scan of one file (or of several: `more`), checked before any frame is read.

    Raises
    ------
    RawFileError
        one line: missing detector, no frames (missing virtual-dataset source), inconsistent
        scans, positions that do not fit the grid, missing geometry.
    """
    sv = survey(f, path, opts)
    for other, other_path in more or []:
        sv = _merged(sv, survey(other, other_path, opts), first=sv.path, other=other_path)
    src = build_source(f, sv, opts, KIND, "ID01 BLISS", ANGLES, "measurement",
                       lambda scan: _geometry([scan], sv.detector, SourceOptions())[0])
    src.extra_files = [other for other, _ in more or []]
    return src


def _merged(sv: Survey, nxt: Survey, first: Path, other: Path) -> Survey:
    """Two files' surveys as one: scans named file:N.1, one detector for all (else inconsistent)."""
    for s in sv.scans:
        if ":" not in s.name:
            s.name = f"{first.name}:{s.name}"
    for s in nxt.scans:
        s.name = f"{other.name}:{s.name}"
    if nxt.detector != sv.detector and nxt.taken and sv.taken:
        raise RawFileError(f"{other}: inconsistent files: detector {nxt.detector} where {first} has {sv.detector}")
    sv.scans += nxt.scans
    sv.detector_problem = sv.detector_problem or nxt.detector_problem
    return sv


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
            if _wanted(s.name, opts.scans) and not s.taken:
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
