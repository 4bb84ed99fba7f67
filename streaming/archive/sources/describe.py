"""What opmon sees in a file, in words, before any processing (`opmon inspect`)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from opmon.errors import OpmonError
from opmon.streaming.archive.sources import NAMES, bliss, raw_layout, sniff, xsocs
from opmon.streaming.archive.sources import hdf5_values as hv
from opmon.streaming.archive.sources.base import SourceOptions
from opmon.streaming.archive.sources.geometry import KEYS
from opmon.streaming.archive.sources.links import follow
from opmon.streaming.archive.sources.scans import ScanInfo

UNITS = {"incident_energy": "eV", "distance": "m", "x_pixel_size": "m", "y_pixel_size": "m",
         "beam_center_x": "pixel", "beam_center_y": "pixel"}


def describe_file(f: h5py.File, path: Path, kind: str = "auto", options: SourceOptions | None = None) -> list[str]:
    """Lines saying the layout, scans taken and skipped (why), detector, frames, angles, grid, geometry."""
    options = options or SourceOptions()
    kind = sniff(f) if kind == "auto" else kind
    head = f"{path}: {NAMES[kind]}"
    if kind == raw_layout.KIND:
        return [head, *_describe_raw(f, path, options)]
    sv = (bliss.survey if kind == bliss.KIND else xsocs.survey)(f, path, options)
    lines = [head + (f" (written by {sv.creator})" if sv.creator else "") + f", {len(sv.scans)} scan(s)"]
    taken = sv.taken
    lines.append(f"scans taken ({len(taken)}): " + (_names(taken) if taken else "none"))
    skipped = [s for s in sv.scans if not s.taken]
    lines.append(f"scans skipped ({len(skipped)})" + (":" if skipped else ": none"))
    lines += [f"  {s.name} {s.title!r}: {s.why}" for s in skipped]
    if sv.detector_problem:
        lines.append(f"detector: {sv.detector_problem}")
    shown = taken or [s for s in sv.scans if s.frames is not None]
    if sv.detector and shown:
        first = shown[0]
        ds = first.frames.dataset if first.frames else None
        what = f"frames {ds.shape} {ds.dtype} at {first.frames.path}" if ds is not None else "frames not found"
        if ds is not None and ds.is_virtual:
            what += f" (virtual dataset onto {', '.join(sorted({vs.file_name for vs in ds.virtual_sources()}))})"
        lines.append(f"detector: {sv.detector}, {what}")
        missing = [s.frames.missing for s in shown if s.frames and s.frames.missing]
        lines.append(f"missing frame source: {missing[0]}" + (f" (and {len(missing) - 1} more scans)" if len(missing) > 1 else "")
                     if missing else "frame sources: all present")
        lines.append("angles (" + first.name + "): " + ", ".join(f"{k} {hv.describe(v)}" for k, v in first.angles.items()))
        grid, dims = first.grid, first.dims
        if grid:
            lines.append(f"map grid: {grid.shape[0]} x {grid.shape[1]} (slow {grid.slow.motor} {grid.slow.start:g}..{grid.slow.end:g}, "
                         f"fast {grid.fast.motor} {grid.fast.start:g}..{grid.fast.end:g})"
                         + (f", technique dim0 {dims[0]}, dim1 {dims[1]}" if dims else ""))
            pos = ", ".join(f"{m}: {hv.describe(v) if v is not None else 'missing (frame order used)'}"
                            for m, v in first.positions.items())
            lines.append(f"positions ({first.name}): {pos}")
        else:
            lines.append("map grid: none" + (" (no map scan)" if not taken else ""))
    lines += _geometry_lines(sv.geometry)
    if sv.mask is not None:
        lines.append(f"detector mask: {sv.mask_origin}, {int(sv.mask.sum())} bad pixels")
    if kind == xsocs.KIND:
        lines.append(f"distance conversion: {xsocs.CONVERSION}")
    lines.append("monitors: " + (", ".join(sv.counters) if sv.counters else "none found") +
                 (f" (using {options.monitor})" if options.monitor else " (none used; choose with --monitor)"))
    return lines


def _names(scans: list[ScanInfo]) -> str:
    names = [s.name for s in scans]
    return ", ".join(names) if len(names) <= 6 else f"{names[0]} .. {names[-1]} ({', '.join(names[:3])}, ...)"


def _geometry_lines(geo: object) -> list[str]:
    lines = []
    for key in KEYS:
        if key in geo.values:  # type: ignore[attr-defined]
            lines.append(f"geometry {key} = {geo.values[key]:.8g} {UNITS[key]} (from {geo.origin[key]})")  # type: ignore[attr-defined]
        else:
            lines.append(f"geometry {key}: MISSING (looked in {geo.missing.get(key, 'the file')}; give it with --geometry)")  # type: ignore[attr-defined]
    return lines


def _describe_raw(f: h5py.File, path: Path, options: SourceOptions) -> list[str]:
    try:
        src = raw_layout.open_raw(f, path, options.entry)
    except OpmonError as exc:
        found = follow(f[next(iter(f))], "instrument/detector/data") if len(f) else None
        return [f"not readable as a raw map: {exc}"] + ([f"missing frame source: {found.missing}"] if found and found.missing else [])
    lines = []
    for m in src.maps:
        meta = m.meta
        lines.append(f"entry {m.name}: {meta.n_frames} frames {meta.frame_shape} {meta.frame_dtype}, map grid "
                     f"{meta.map_shape[0]} x {meta.map_shape[1]}, eta {hv.describe(meta.eta)}, phi {hv.describe(meta.phi)}, "
                     f"nu {hv.describe(meta.nu)}, delta {hv.describe(meta.delta)}"
                     + (", monitor" if m.monitor is not None else ""))
        lines.append(f"  geometry: energy {meta.energy_ev:g} eV, distance {meta.distance_m:g} m, pixel {meta.pixel_size_m} m, "
                     f"beam centre (row, col) {meta.beam_center}"
                     + (f", mask {int(np.asarray(meta.detector_mask).sum())} bad pixels" if meta.detector_mask is not None else ""))
    return lines
