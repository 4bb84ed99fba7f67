"""XSOCS master files (FORMATS.md "XSOCS"): one entry per eta, read as one map.

Per entry: frames ``instrument/detector/data`` (linked into the BLISS file, which may link on
to Lima's files), ``beam_energy`` (eV), direct beam ``center_chan_dim0`` (row) and
``center_chan_dim1`` (column) in full-detector pixels (``image_roi_offset`` is subtracted, as
XSOCS's QSpaceConverter does), angles ``instrument/positioners/{eta, phi, nu, del}``, grid
``scan/motor_0..1{,_start,_end,_steps}`` (steps = points), positions per point.

XSOCS has no detector distance: it hands ``chan_per_deg`` to xrayutilities'
``Ang2Q.init_area``, which takes pixel / distance = 2·tan(0.5°) / chan_per_deg. opmon does the
same: distance = chan_per_deg_dim1 × x_pixel_size / (2·tan 0.5°), with the pixel size from
``--geometry`` or, absent, the 55 µm Maxipix pitch (q depends only on pixel / distance, so the
choice does not move any map), and y_pixel_size from chan_per_deg_dim0. The output's metadata
says so. (FORMATS.md writes tan(1°): 7.6e-5 relative less than 2·tan(0.5°).)
"""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from opmon.streaming.archive.sources import hdf5_values as hv
from opmon.streaming.archive.sources.base import Source, SourceOptions
from opmon.streaming.archive.sources.scans import ScanInfo, Survey, build_source, wanted
from opmon.streaming.archive.sources.geometry import GeometryValues
from opmon.streaming.archive.sources.grid import Axis, Grid, is_map_title, parse_title
from opmon.streaming.archive.sources.links import follow

KIND = "xsocs"
ANGLES = {"eta": "eta", "phi": "phi", "nu": "nu", "delta": "del"}
DETECTOR = "instrument/detector"
DEFAULT_PIXEL_M = 55e-6  # Maxipix, ID01's detector
TWO_TAN_HALF_DEG = 2.0 * math.tan(math.radians(0.5))  # xrayutilities: pwidth / distance = this / chan_per_deg
CONVERSION = ("distance = chan_per_deg x pixel size / (2 tan 0.5 deg), as XSOCS (xrayutilities Ang2Q.init_area "
              "with chpdeg)")


def looks_like(f: h5py.File) -> bool:
    """Entries holding XSOCS's detector calibration (channels per degree)."""
    for name in list(f)[:3]:
        g = f.get(name)
        if isinstance(g, h5py.Group) and f"{DETECTOR}/chan_per_deg_dim0" in g:
            return True
    return False


def _entries(f: h5py.File) -> list[str]:
    names = [n for n in f if isinstance(f.get(n), h5py.Group) and DETECTOR in f[n]]
    return sorted(names, key=hv.scan_key)


def _grid(g: h5py.Group, title: str) -> Grid | None:
    m0, m1 = hv.text(g, "scan/motor_0"), hv.text(g, "scan/motor_1")
    nums = [hv.number(g, f"scan/motor_{i}_{k}") for i in (0, 1) for k in ("start", "end", "steps")]
    if m0 and m1 and all(v is not None for v in nums):
        s0, e0, n0, s1, e1, n1 = (float(v) for v in nums)  # type: ignore[arg-type]
        return Grid(Axis(m0, s0, e0, int(n0)), Axis(m1, s1, e1, int(n1)))
    return parse_title(title)


def _positions(g: h5py.Group, motor: str) -> np.ndarray | None:
    """Positions of `motor` per point: positioners/<motor>_position, else measurement/adc<last letter> (XSOCS's rule)."""
    named = hv.values(g, f"instrument/positioners/{motor}_position")
    if named is not None and named.ndim == 1:
        return named
    return hv.values(g, f"measurement/adc{motor[-1].upper()}")


def survey(f: h5py.File, path: Path, opts: SourceOptions) -> Survey:
    """Every entry's metadata, taken or skipped (nothing raises): what opmon sees."""
    scans = []
    for name in _entries(f):
        g = f[name]
        info = ScanInfo(name, hv.text(g, "title"), g, detector=DETECTOR)
        info.grid = _grid(g, info.title)
        info.frames = follow(g, f"{DETECTOR}/data")
        info.angles = {key: hv.values(g, f"instrument/positioners/{motor}") for key, motor in ANGLES.items()}
        if info.grid:
            info.positions = {a.motor: _positions(g, a.motor) for a in (info.grid.fast, info.grid.slow)}
        if opts.monitor:
            info.monitor = hv.values(g, f"measurement/{opts.monitor}")
        if info.grid is None and not is_map_title(info.title):
            info.why = "not a map (no scan/motor_0..1, title is not sxdm/kmap)"
        elif not wanted(name, opts.scans):
            info.why = "not chosen (--scans)"
        else:
            info.taken = True
        scans.append(info)
    chosen = [s for s in scans if s.taken] or scans
    geometry = entry_geometry(f[chosen[0].name], chosen[0].name, opts) if chosen else GeometryValues()
    geometry.override(opts.geometry, opts.geometry_path)
    counters = []
    if chosen and isinstance(f[chosen[0].name].get("measurement"), h5py.Group):
        counters = [c for c in f[chosen[0].name]["measurement"] if c.startswith(("mon", "ct_mon", "exp"))]
    return Survey(path, "", scans, DETECTOR, None, geometry, None, None, counters)


def entry_geometry(g: h5py.Group, name: str, opts: SourceOptions) -> GeometryValues:
    """Energy, direct beam and distance of one entry in the raw layout's terms, with their origins."""
    geo = GeometryValues()
    base = f"{name}/{DETECTOR}"
    energy = hv.number(g, f"{DETECTOR}/beam_energy")
    if energy and energy > 0:
        geo.found("incident_energy", energy, f"{base}/beam_energy")
    else:
        geo.missing["incident_energy"] = f"{base}/beam_energy"
    offset = hv.values(g, f"{DETECTOR}/image_roi_offset")
    off = (0.0, 0.0) if offset is None or offset.size != 2 else (float(offset[0]), float(offset[1]))
    for key, dim, o in (("beam_center_y", 0, off[0]), ("beam_center_x", 1, off[1])):
        value = hv.number(g, f"{DETECTOR}/center_chan_dim{dim}")
        if value is None:
            geo.missing[key] = f"{base}/center_chan_dim{dim}"
        else:
            geo.found(key, value - o, f"{base}/center_chan_dim{dim}" + (f" - image_roi_offset {o:g}" if o else ""))
    cpd = [hv.number(g, f"{DETECTOR}/chan_per_deg_dim{d}") for d in (0, 1)]
    if not all(c and c > 0 for c in cpd):
        for key in ("distance", "x_pixel_size", "y_pixel_size"):
            geo.missing[key] = f"{base}/chan_per_deg_dim0/1"
        return geo
    cpd0, cpd1 = float(cpd[0]), float(cpd[1])  # type: ignore[arg-type]
    given = opts.geometry
    if "distance" in given:
        distance, d_from = given["distance"], f"--geometry {opts.geometry_path}"
    else:
        px = given.get("x_pixel_size", DEFAULT_PIXEL_M)
        px_from = f"--geometry {opts.geometry_path}" if "x_pixel_size" in given else "the 55 um Maxipix pitch (assumed)"
        distance = cpd1 * px / TWO_TAN_HALF_DEG
        d_from = f"{base}/chan_per_deg_dim1 = {cpd1:.6g} and x_pixel_size from {px_from}: {CONVERSION}"
    geo.found("distance", distance, d_from)
    geo.found("x_pixel_size", distance * TWO_TAN_HALF_DEG / cpd1, f"{base}/chan_per_deg_dim1 and the distance")
    geo.found("y_pixel_size", distance * TWO_TAN_HALF_DEG / cpd0, f"{base}/chan_per_deg_dim0 and the distance")
    return geo


def open_xsocs(f: h5py.File, path: Path, opts: SourceOptions) -> Source:
    """One map from every chosen entry; errors as `bliss.open_bliss`."""
    sv = survey(f, path, opts)
    src = build_source(f, sv, opts, KIND, "XSOCS master", ANGLES, "instrument/positioners",
                       lambda scan: entry_geometry(f[scan.name], scan.name, SourceOptions()))
    src.maps[0].provenance["distance_conversion"] = CONVERSION
    return src
