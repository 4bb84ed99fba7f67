"""How a restarted live processor catches up: it reads what it missed from the run archive.

While the live processor is down the acquisition keeps going (the archive path is separate),
and frames queued for the dead process are gone from the stream. The archive holds every
frame, so a processor that joins a run mid-stream recovers the run's start header, the ROI
the run's maps were made with, earlier frames of the current map and whole maps it missed.
"""
from __future__ import annotations

import json
import time
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import ArchiveError
from opmon.formats import DATA, DET_MASK, MAP_INDEX, MAP_SHAPE, POSITIONERS
from opmon.streaming.archive_files import MASTER, map_file_name, maps_file_name

log = logging.getLogger(__name__)

Feed = Callable[[dict[str, Any], npt.NDArray[Any]], None]


class RunArchive:
    """Read side of one run directory `<archive_dir>/<run uid>/` (files may still be growing)."""

    def __init__(self, archive_dir: str | Path, uid: str) -> None:
        self.path = Path(archive_dir) / uid
        self.uid = uid

    def exists(self) -> bool:
        return (self.path / MASTER).is_file()

    def start(self) -> tuple[dict[str, Any], npt.NDArray[np.uint8] | None] | None:
        """(start header, detector mask) as the archiver received them, or None."""
        if not self.exists():
            return None
        with h5py.File(self.path / MASTER, "r") as f:
            start = json.loads(f.attrs["start"]) if f.attrs.get("start") else None
        if not start:
            return None
        mask = None
        if start.get("mask"):      # the run has a detector mask: it is stored with every map file
            first = self.path / map_file_name(0)
            deadline = time.monotonic() + 10.0
            while mask is None:
                try:
                    with h5py.File(first, "r", swmr=True) as f:
                        mask = f[f"entry/{DET_MASK}"][()]
                except (OSError, KeyError):          # not written yet, or being created
                    if time.monotonic() > deadline:
                        raise ArchiveError(f"{first}: run {self.uid} has a detector mask but it cannot be read") from None
                    time.sleep(0.05)
        return start, mask

    def roi(self) -> tuple[int, int, int, int] | None:
        """ROI of the run's latest archived maps, so recovered maps match the ones made before."""
        files = sorted(self.path.glob("map_*_maps.h5"))
        for path in reversed(files):
            with h5py.File(path, "r") as f:
                roi = f["entry/maps"].attrs.get("roi")
                if roi is not None and len(roi) == 4:
                    return tuple(int(v) for v in roi)  # type: ignore[return-value]
        return None

    def has_maps(self, number: int) -> bool:
        return (self.path / maps_file_name(number)).is_file()

    def has_frames(self, number: int) -> bool:
        return (self.path / map_file_name(number)).is_file()

    def frames(self, number: int, *, below_seq: int | None = None, wait_s: float = 30.0,
               block: int = 32) -> Iterator[tuple[dict[str, Any], npt.NDArray[Any]]]:
        """Yield (frame header, frame) of map `number` in archive order.

        With `below_seq`, only frames sent before that sequence number, waiting (up to
        `wait_s`) for the archiver to have flushed them; without it, the whole map, waiting
        for the archiver to mark it complete.

        Raises
        ------
        ArchiveError
            if the map file is missing or the frames do not appear in time.
        """
        path = self.path / map_file_name(number)
        deadline = time.monotonic() + wait_s
        f = None
        while f is None:     # the archiver may be creating the file right now: wait until it is whole
            try:
                f = h5py.File(path, "r", swmr=True)
                if "entry/scan/complete" not in f:
                    f.close()
                    f = None
            except (OSError, KeyError):
                f = None
            if f is None:
                if time.monotonic() > deadline:
                    raise ArchiveError(f"{path}: no readable archived frames for map {number} of run {self.uid}")
                time.sleep(0.05)
        with f:
            entry = f["entry"]
            seq_ds, data = entry["scan/sequence"], entry[DATA]
            while True:
                for ds in (seq_ds, data, entry["scan/complete"]):
                    ds.refresh()
                n = min(seq_ds.shape[0], data.shape[0])
                seqs = seq_ds[:n]
                if below_seq is not None and (n and seqs[-1] >= below_seq - 1 or below_seq == 0):
                    n = int(np.searchsorted(seqs, below_seq))
                    break
                if below_seq is None and entry["scan/complete"][()] == 1:
                    break
                if time.monotonic() > deadline:
                    raise ArchiveError(f"{path}: archive holds {n} frames of map {number}; waited {wait_s:.0f} s for "
                                       f"{'seq < ' + str(below_seq) if below_seq is not None else 'the map to complete'}")
                time.sleep(0.05)
            cols = {name: entry[f"{POSITIONERS}/{name}"] for name in ("eta", "phi", "nu", "delta")}
            for ds in (*cols.values(), entry[MAP_INDEX], entry["scan/timestamp"]):
                ds.refresh()
            meta = {name: ds[:n] for name, ds in cols.items()}
            index = entry[MAP_INDEX][:n]
            stamps = entry["scan/timestamp"][:n]
            dtype = str(data.dtype)
            shape = list(data.shape[1:])
            for start in range(0, n, block):
                stop = min(n, start + block)
                frames = data[start:stop]
                for i in range(start, stop):
                    yield ({"run": self.uid, "map": number, "seq": int(seqs[i]), "frame": i, "index": int(index[i]),
                            "eta": float(meta["eta"][i]), "phi": float(meta["phi"][i]), "nu": float(meta["nu"][i]),
                            "delta": float(meta["delta"][i]), "dtype": dtype, "shape": shape, "t": float(stamps[i])},
                           frames[i - start])


def recover_missed_maps(archive: RunArchive, first_map: int, feed: Feed, end_map: Callable[[int], None]) -> int:
    """Feed whole maps that ran while the processor was down and have no archived maps yet.

    Returns the number of frames recovered.
    """
    recovered = 0
    for number in range(first_map):
        if archive.has_maps(number) or not archive.has_frames(number):
            continue
        try:
            for header, frame in archive.frames(number):
                feed(header, frame)
                recovered += 1
        except (ArchiveError, OSError, KeyError) as exc:
            log.error("run %s: cannot recover map %d: %s", archive.uid, number, exc)
            continue
        end_map(number)
        log.warning("run %s: map %d recovered from the archive", archive.uid, number)
    return recovered


def recover_prefix(archive: RunArchive, number: int, first_seq: int, feed: Feed) -> int:
    """Feed the frames of map `number` sent before the processor (re)joined at `first_seq`."""
    recovered = 0
    try:
        for header, frame in archive.frames(number, below_seq=first_seq):
            feed(header, frame)
            recovered += 1
    except (ArchiveError, OSError, KeyError) as exc:
        log.error("run %s map %d: frames before seq %d not recovered: %s", archive.uid, number, first_seq, exc)
    log.warning("run %s map %d: %d earlier frames recovered from the archive", archive.uid, number, recovered)
    return recovered


def unmapped_maps(archive_dir: str | Path) -> tuple[RunArchive, list[int]] | None:
    """The newest archived run and its maps whose frames are all archived but have no final maps.

    A processor that was down (or restarting) while a run's last messages went out never hears
    of that run again; the archive still holds every frame, so the maps can be made from it.
    """
    root = Path(archive_dir)
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if (p / MASTER).is_file()]
    if not runs:
        return None
    newest = max(runs, key=lambda p: (p / MASTER).stat().st_mtime)
    archive = RunArchive(root, newest.name)
    missing = []
    for path in sorted(newest.glob("map_[0-9][0-9][0-9][0-9].h5")):
        number = int(path.stem.split("_")[1])
        if archive.has_maps(number):
            continue
        try:
            with h5py.File(path, "r", swmr=True) as f:
                if f["entry/scan/complete"][()] == 1:
                    missing.append(number)
        except (OSError, KeyError):
            continue       # being written, or not a whole file yet
    return archive, missing


def map_from_archive(archive: RunArchive, number: int, make: Callable[[dict[str, Any], npt.NDArray[np.uint8] | None,
                     tuple[int, int]], Any]) -> tuple[Any, int]:
    """Accumulate an archived map: `make(start, mask, map_shape)` gives the accumulator.
    Returns (accumulator, frames it holds)."""
    found = archive.start()
    if found is None:
        raise ArchiveError(f"{archive.path}: no run start to make map {number} from")
    with h5py.File(archive.path / map_file_name(number), "r", swmr=True) as f:
        map_shape = tuple(int(v) for v in f[f"entry/{MAP_SHAPE}"][()])
    acc = make(found[0], found[1], map_shape)  # type: ignore[arg-type]
    n = 0
    for header, frame in archive.frames(number, wait_s=5.0):
        acc.process_frame(frame, header["index"], header["eta"], header["phi"], header["nu"], header["delta"])
        n += 1
    return acc, n


def catch_up(archive_dir: str | Path, outputs: Any, *, skip_runs: set[str], roi: Any, roi_frames: int,
             threshold: int, background: Any) -> int:
    """Make the maps of the newest archived run that no processor delivered; returns how many.

    `roi` is the processor's setting ("auto", None for the full frame, or a tuple); the run's
    own archived maps decide it first, so made maps match the others of the run.
    """
    from opmon.processors.accumulate import MomentAccumulator
    from opmon.processors.live.engine import accumulator_options, geometry_of
    from opmon.processors.live.roi import RoiSum

    found = unmapped_maps(archive_dir)
    if found is None:
        return 0
    archive, numbers = found
    if archive.uid in skip_runs:
        return 0
    made = 0
    for number in numbers:
        if (archive.uid, number) in outputs.made:
            if outputs.resend(archive.uid, number):
                log.warning("run %s map %d: final maps missing from the archive (lost on the way to an archiver "
                            "that died); sent again", archive.uid, number)
                made += 1
                continue
        try:
            start = archive.start()
            if start is None:
                return made
            rows, cols = start[0]["frame_shape"]
            chosen = archive.roi() or (roi if isinstance(roi, tuple) else None)
            if chosen is None and roi is None:
                chosen = (0, rows, 0, cols)
            if chosen is None:                  # auto: the rule of the live processor, on this map's first frames
                first = RoiSum()
                for _, frame in archive.frames(number, wait_s=5.0):
                    first.add(frame)
                    if first.frames >= roi_frames:
                        break
                chosen = first.roi(start[1], (rows, cols))
            options = {"roi": list(chosen), "threshold": threshold, "background": background}

            def make(start: dict[str, Any], mask: Any, shape: tuple[int, int]) -> MomentAccumulator:
                return MomentAccumulator(geometry_of(start), shape, detector_mask=mask, **accumulator_options(options))

            acc, n = map_from_archive(archive, number, make)
        except (ArchiveError, OSError, KeyError) as exc:
            log.error("run %s map %d: cannot make its maps from the archive: %s", archive.uid, number, exc)
            continue
        outputs.final(acc, run=archive.uid, number=number, n_frames=n, frames_lost=0, options=options)
        log.warning("run %s map %d: no live maps were made (processor down); made from its %d archived frames",
                    archive.uid, number, n)
        made += 1
    return made
