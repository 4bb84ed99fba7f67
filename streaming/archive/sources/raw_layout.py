"""opmon's own raw layout (FORMATS.md "Raw SXDM map"): one map per entry, frames in one dataset.

What the simulator writes, the archiver keeps and a run's run.h5 links; its bitshuffle/LZ4
frames are read through the bounds-checked decoder (`FrameReader`), so a corrupt chunk is an
error naming the frame, never a crash.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from opmon.errors import RawFileError
from opmon.streaming.archive.layout import ATTR_MAP_NUMBER, DATA
from opmon.streaming.archive.raw import entry_label, linked_files, map_entries, read_raw_meta
from opmon.streaming.archive.sources.base import FrameSegment, Source, SourceMap

KIND = "raw"
MONITOR = "instrument/monitor/data"


def looks_like(f: h5py.File) -> bool:
    """Any top-level group holding the raw layout's frames and map index."""
    return any(isinstance(f.get(name), h5py.Group) and DATA in f[name] and "scan/map_index" in f[name] for name in f)


def entry_map(entry: h5py.Group, shown: str | Path | None = None, number: int | None = None) -> SourceMap:
    """One raw map entry as a `SourceMap` (metadata read and checked)."""
    meta = read_raw_meta(entry)
    label = entry_label(entry, shown)
    monitor = None
    if MONITOR in entry:
        monitor = np.asarray(entry[MONITOR][()], dtype=np.float64).reshape(-1)
        if monitor.shape != (meta.n_frames,):
            raise RawFileError(f"{entry.name}/{MONITOR}: length {monitor.shape[0]}, expected {meta.n_frames} (one per frame)")
    name = entry.name.strip("/").split("/")[-1]
    return SourceMap(name, label, meta, [FrameSegment(entry[DATA], 0, label)], monitor,
                     {"format": "opmon raw (FORMATS.md)", "entry": name},
                     int(entry.attrs.get(ATTR_MAP_NUMBER, number if number is not None else 0)))


def open_raw(f: h5py.File, path: Path, entry: str | None = None, geometry: dict[str, float] | None = None,
             geometry_path: str | None = None) -> Source:
    """Every map entry of a raw file or run.h5 (or the named one); `geometry` keys override the file's."""
    names = map_entries(f, entry)
    maps = [entry_map(f[name], path, number) for number, name in enumerate(names)]
    for smap in maps if geometry else []:
        _override(smap, geometry or {}, geometry_path)
    return Source(path, KIND, f, maps, [path, *linked_files(f)])


def _override(smap: SourceMap, geometry: dict[str, float], where: str | None) -> None:
    """Apply --geometry to a raw map and record every value used with its origin."""
    m = smap.meta
    values = {"incident_energy": m.energy_ev, "distance": m.distance_m, "y_pixel_size": m.pixel_size_m[0],
              "x_pixel_size": m.pixel_size_m[1], "beam_center_y": m.beam_center[0], "beam_center_x": m.beam_center[1]}
    origin = {key: f"{smap.name} (raw file)" for key in values}
    for key, value in geometry.items():
        values[key], origin[key] = value, f"--geometry {where}"
    m.energy_ev, m.distance_m = values["incident_energy"], values["distance"]
    m.pixel_size_m = (values["y_pixel_size"], values["x_pixel_size"])
    m.beam_center = (values["beam_center_y"], values["beam_center_x"])
    smap.provenance["geometry"] = {key: {"value": values[key], "from": origin[key]} for key in values}
