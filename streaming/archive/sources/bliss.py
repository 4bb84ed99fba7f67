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

from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import RawFileError
from opmon.streaming.archive.sources import hdf5_values as hv
from opmon.streaming.archive.sources.base import Source, SourceOptions
from opmon.streaming.archive.sources.geometry import GeometryValues
from opmon.streaming.archive.sources.grid import is_map_title, parse_title
from opmon.streaming.archive.sources.links import Found, follow
from opmon.streaming.archive.sources.scans import ScanInfo, Survey, build_source, wanted

KIND = "bliss"
ANGLES = {"eta": "eta", "phi": "phi", "nu": "nu", "delta": "delta"}
DETECTOR_KEYS = {"beam_center_x": "beam_center_x", "beam_center_y": "beam_center_y", "distance": "distance",
                 "x_pixel_size": "x_pixel_size", "y_pixel_size": "y_pixel_size"}
HC_EV_M = 12398.419843320026e-10  # h·c in eV·m (CODATA 2018)


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
        elif not wanted(name, opts.scans):
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
