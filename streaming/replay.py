"""Replay an archived run (or any raw SXDM file) through the live chain, frame by frame.

The replay sends exactly what the detector sink sends during a run (start, maps, frames,
stop) under a new run uid, so an archiver listening at the same time never overwrites the
original run, and the live processor treats it like any other run.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opmon.errors import ArchiveError, RawFileError
from opmon.formats import DATA, iter_frame_blocks, read_raw_meta
from opmon.streaming.archive_files import MASTER
from opmon.streaming.publisher import ZmqFrameSink


@dataclass
class ReplayReport:
    """What a replay sent."""

    run: str
    source_run: str | None
    maps: int
    frames: int
    seconds: float


def resolve_archive(path: str | Path) -> Path:
    """The HDF5 file to replay: a run directory's master file, or the file itself."""
    p = Path(path)
    if p.is_dir():
        p = p / MASTER
    if not p.is_file():
        raise ArchiveError(f"{path}: no such archive (expected a run directory, its {MASTER}, or a raw SXDM file)")
    return p


def _entries(f: h5py.File) -> list[str]:
    names = [name for name, obj in f.items() if isinstance(obj, h5py.Group) and DATA in obj]
    if not names:
        raise RawFileError(f"{f.filename}: no group holds {DATA}; nothing to replay")

    def key(name: str) -> tuple[str, int]:
        stem = name.rstrip("0123456789")
        return stem, int(name[len(stem):] or -1)

    return sorted(names, key=key)


def replay(path: str | Path, sink: ZmqFrameSink, *, rate_fps: float | None = None, run: str | None = None,
           block: int = 16) -> ReplayReport:
    """Send every map of the archive at `path` through `sink`; returns what was sent.

    Parameters
    ----------
    rate_fps
        pace the frames (frames per second); None sends as fast as the receivers take them.
    run
        uid of the replayed run (default: a new uid).
    """
    source = resolve_archive(path)
    t0 = time.perf_counter()
    frames = 0
    with h5py.File(source, "r", swmr=True) as f:
        names = _entries(f)
        first = read_raw_meta(f[names[0]])
        source_run = f.attrs.get("run_uid")
        start_meta: dict[str, Any] = {}
        if f.attrs.get("start"):
            start_meta = json.loads(f.attrs["start"]).get("metadata", {})
        uid = sink.start_run(energy_ev=first.energy_ev, distance_m=first.distance_m, pixel_size_m=first.pixel_size_m,
                             beam_center=first.beam_center, frame_shape=first.frame_shape, dtype=first.frame_dtype,
                             map_shape=first.map_shape, mask=first.detector_mask, run=run or str(uuid.uuid4()),
                             metadata=dict(start_meta, replay_of=str(source_run or source)))
        for number, name in enumerate(names):
            entry = f[name]
            meta = read_raw_meta(entry)
            sink.start_map(meta.n_frames, map_number=int(entry.attrs.get("map_number", number)), map_shape=meta.map_shape,
                           trigger={"kind": "replay", "entry": name})
            for i, frame in _frames(entry, block):
                x = None if meta.x_um is None or not np.isfinite(meta.x_um[i]) else float(meta.x_um[i])
                y = None if meta.y_um is None or not np.isfinite(meta.y_um[i]) else float(meta.y_um[i])
                sink.send_frame(frame, index=int(meta.map_index[i]), eta=float(meta.eta[i]), phi=float(meta.phi[i]),
                                nu=float(meta.nu[i]), delta=float(meta.delta[i]), x=x, y=y)
                frames += 1
                if rate_fps:
                    wait = t0 + frames / rate_fps - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
            sink.end_map()
        sink.stop_run("success")
    return ReplayReport(uid, str(source_run) if source_run else None, len(names), frames, time.perf_counter() - t0)


def _frames(entry: h5py.Group, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """Frames one by one, each its own array (zero-copy sends must not share a reused buffer)."""
    for start, frames in iter_frame_blocks(entry, block):
        owned = frames.copy()
        for k in range(owned.shape[0]):
            yield start + k, owned[k]
