"""Replay an archived run (or any source: raw SXDM, ID01 BLISS, XSOCS file) through the live chain, frame by frame.

The replay sends exactly what the detector sink sends during a run (start, maps, frames,
stop) under a new run uid, so an archiver listening at the same time never overwrites the
original run, and the live processor treats it like any other run.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opmon import interrupt
from opmon.errors import ArchiveError, RawFileError
from opmon.streaming.archive.layout import ATTR_RUN_UID, ATTR_START, MASTER
from opmon.streaming.archive.raw import check_roi
from opmon.streaming.archive.reader import RunArchive
from opmon.streaming.archive.sources import Source, SourceMap, SourceOptions
from opmon.streaming.archive.sources import open_source as open_frames
from opmon.streaming.publisher import ZmqFrameSink


@dataclass
class ReplayReport:
    """What a replay sent."""

    run: str
    source_run: str | None
    maps: int
    frames: int
    seconds: float
    bad_frames: dict[str, list[int]] = field(default_factory=dict)  # entry -> corrupt frames skipped


def resolve_archive(path: str | Path) -> Path:
    """The HDF5 file to replay: a run directory's master file (through `RunArchive`), or the file itself."""
    p = Path(path)
    if p.is_dir():
        p = RunArchive.at(p).master
    if not p.is_file():
        raise ArchiveError(f"{path}: no such archive (expected a run directory, its {MASTER}, or a raw SXDM, BLISS or XSOCS file)")
    return p


ReplaySource = Source  # what `open_source` returns: a source opened and checked, nothing sent yet


def open_source(path: str | Path, roi: tuple[int, int, int, int] | None = None, kind: str = "auto",
                options: SourceOptions | None = None) -> ReplaySource:
    """Open the archive, raw file, BLISS or XSOCS file at `path` and check all of it that can be checked before streaming.

    Raises
    ------
    ArchiveError, RawFileError
        naming the file and what is wrong: missing, not HDF5 (text, empty, truncated), a map
        file missing from a run, metadata missing or malformed, an ROI outside the frames.
    """
    source = open_frames(resolve_archive(path), kind, options)
    try:
        shapes = {m.meta.frame_shape for m in source.maps}
        if len(shapes) > 1:
            raise RawFileError(f"{source.path}: maps have different frame shapes {sorted(shapes)}; replay one run at a time")
        if roi is not None:
            check_roi(roi, next(iter(shapes)), str(source.path))
        return source
    except BaseException:
        source.close()
        raise


def replay(path: str | Path | ReplaySource, sink: ZmqFrameSink, *, rate_fps: float | None = None, run: str | None = None,
           block: int = 16, skip_bad_frames: bool = False) -> ReplayReport:
    """Send every map of the archive at `path` through `sink`; returns what was sent.

    Parameters
    ----------
    path
        the archive, or a `ReplaySource` already opened and checked by `open_source`.
    rate_fps
        pace the frames (frames per second); None sends as fast as the receivers take them.
    run
        uid of the replayed run (default: a new uid).
    skip_bad_frames
        corrupt frames are not sent and are listed in the report; otherwise the first one stops
        the replay with `CorruptFrameError` (the run is then stopped as "fail").
    """
    src = path if isinstance(path, ReplaySource) else open_source(path)
    try:
        return _send(src, sink, rate_fps, run, block, skip_bad_frames)
    finally:
        if src is not path:
            src.close()


def _send(src: ReplaySource, sink: ZmqFrameSink, rate_fps: float | None, run: str | None, block: int,
          skip_bad_frames: bool) -> ReplayReport:
    t0 = time.perf_counter()
    frames = 0
    f, maps = src.file, src.maps
    first = maps[0].meta
    source_run = f.attrs.get(ATTR_RUN_UID)
    start_meta: dict[str, Any] = {}
    if f.attrs.get(ATTR_START):
        start_meta = json.loads(f.attrs[ATTR_START]).get("metadata", {})
    uid = sink.start_run(energy_ev=first.energy_ev, distance_m=first.distance_m, pixel_size_m=first.pixel_size_m,
                         beam_center=first.beam_center, frame_shape=first.frame_shape, dtype=first.frame_dtype,
                         map_shape=first.map_shape, mask=first.detector_mask, run=run or str(uuid.uuid4()),
                         metadata=dict(start_meta, replay_of=str(source_run or src.path)))
    bad_frames: dict[str, list[int]] = {}
    try:
        for number, smap in enumerate(maps):
            meta = smap.meta
            sink.start_map(meta.n_frames, map_number=smap.map_number if smap.map_number is not None else number,
                           map_shape=meta.map_shape, trigger={"kind": "replay", "entry": smap.name})
            for i, frame in _frames(smap, block, skip_bad_frames, bad_frames.setdefault(smap.name, [])):
                x = None if meta.x_um is None or not np.isfinite(meta.x_um[i]) else float(meta.x_um[i])
                y = None if meta.y_um is None or not np.isfinite(meta.y_um[i]) else float(meta.y_um[i])
                monitor = None if smap.monitor is None else float(smap.monitor[i])
                sink.send_frame(frame, index=int(meta.map_index[i]), eta=float(meta.eta[i]), phi=float(meta.phi[i]),
                                nu=float(meta.nu[i]), delta=float(meta.delta[i]), x=x, y=y, monitor=monitor)
                frames += 1
                if rate_fps:
                    wait = t0 + frames / rate_fps - time.perf_counter()
                    while wait > 0:
                        interrupt.check()
                        time.sleep(min(wait, 0.1))
                        wait = t0 + frames / rate_fps - time.perf_counter()
            sink.end_map()
    except Exception:
        try:
            sink.stop_run("fail")  # receivers learn the run ended; the original error is what matters
        except Exception:  # noqa: BLE001
            pass
        raise
    sink.stop_run("success")
    return ReplayReport(uid, str(source_run) if source_run else None, len(maps), frames, time.perf_counter() - t0,
                        {name: bad for name, bad in bad_frames.items() if bad})


def _frames(smap: SourceMap, block: int, skip_bad: bool, bad_out: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Frames one by one, each its own array (zero-copy sends must not share a reused buffer)."""
    for blk in smap.blocks(block):
        interrupt.check()
        if blk.bad:
            if not skip_bad:
                raise smap.error(blk.bad)
            bad_out.extend(blk.bad)
        owned = blk.frames.copy()
        for k in range(owned.shape[0]):
            if blk.start + k not in blk.bad:
                yield blk.start + k, owned[k]
