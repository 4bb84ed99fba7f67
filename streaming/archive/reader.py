"""The one reader of a run directory `<archive>/<run uid>/` (docs/protocol.md, "Archive layout").

The archiver's restart, the live processor's recovery, the demo's summary, `opmon replay`
and `opmon process` all read archived runs through `RunArchive`, so what "a map is complete"
or "the frames of a map" means is decided once. Files may still be growing (SWMR) or be left
by a killed archiver; frames are decoded by the bounds-checked `FrameReader`, never by the
HDF5 filter alone, so a corrupt chunk is an error naming the frame, not a crash.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import ArchiveError
from opmon.streaming.archive.frames import FrameReader
from opmon.streaming.archive.layout import (ANGLES, ATTR_DOCUMENT, ATTR_FRAMES_EXPECTED, ATTR_MAP_NUMBER, ATTR_ROI, ATTR_RUN_UID,
                                           ATTR_START, ATTR_STATE, ATTR_STOP, ATTR_TRIGGER, COMPLETE, DATA, DET_MASK,
                                           ENTRY, LAST_SEQ_SENT, LOG_TIME, MAP_COMPLETE, MAP_INDEX, MAP_SHAPE, MAPS,
                                           MASTER, N_FRAMES_SENT, POSITIONERS, POTENTIOSTAT, POTENTIOSTAT_GROUP, POTENTIOSTAT_LINK,
                                           READING_COLUMNS, SCAN_X, SCAN_Y, SEQUENCE, STATE_DONE, TIMESTAMP,
                                           map_file_name, map_number_of, maps_file_name)
from opmon.waiting import until

log = logging.getLogger(__name__)

Frame = tuple[dict[str, Any], npt.NDArray[Any]]
POLL_S = 0.05      # how often a reader waiting for the archiver looks again


@dataclass(frozen=True)
class ArchivedMap:
    """What one archived map file says about itself."""

    number: int
    frames: int                     # frames the file holds
    seqs: npt.NDArray[np.int64]     # their sequence numbers, sorted, each once
    complete: bool                  # every frame its map_end counted is here
    trigger: str                    # why the map was taken (JSON text)
    sent: tuple[int, int] | None    # (first, last) seq its map_end counted; None before it arrived


class RunArchive:
    """Read side of one run directory `<archive_dir>/<uid>/` (files may still be growing)."""

    def __init__(self, archive_dir: str | Path, uid: str) -> None:
        self.path = Path(archive_dir) / uid
        self.uid = uid

    @classmethod
    def at(cls, run_dir: str | Path) -> RunArchive:
        """The run whose directory is `run_dir`."""
        run_dir = Path(run_dir)
        return cls(run_dir.parent, run_dir.name)

    @classmethod
    def newest(cls, archive_dir: str | Path) -> RunArchive | None:
        """The run of `archive_dir` whose master file changed last, None when there is none."""
        root = Path(archive_dir)
        runs = [p for p in root.iterdir() if (p / MASTER).is_file()] if root.is_dir() else []
        if not runs:
            return None
        return cls(root, max(runs, key=lambda p: (p / MASTER).stat().st_mtime).name)

    # -- the run ----------------------------------------------------------------------------------
    @property
    def master(self) -> Path:
        """run.h5: links every map and holds the run's start, stop and state."""
        return self.path / MASTER

    def exists(self) -> bool:
        return self.master.is_file()

    def _master_attrs(self) -> dict[str, Any]:
        with h5py.File(self.master, "r") as f:
            return dict(f.attrs)

    def start_header(self) -> dict[str, Any] | None:
        """The stream's start header as the archiver received it; None before it was recorded."""
        if not self.exists():
            return None
        text = self._master_attrs().get(ATTR_START)
        start = json.loads(text) if text else None
        if not isinstance(start, dict) or "frame_shape" not in start:
            return None             # no stream start recorded (yet): not a run to continue
        return start

    def start(self, mask_wait_s: float = 10.0) -> tuple[dict[str, Any], npt.NDArray[np.uint8] | None] | None:
        """(start header, detector mask), or None if the run has no recorded start.

        The mask is stored with every map file; the first one may still be being created, so
        it is waited for up to `mask_wait_s` (0: one look, None when it cannot be read yet).

        Raises
        ------
        ArchiveError
            if the run has a mask that cannot be read within `mask_wait_s` (> 0).
        """
        start = self.start_header()
        if start is None:
            return None
        if not start.get("mask"):
            return start, None
        first = self.map_path(0)
        masks: list[npt.NDArray[np.uint8]] = []

        def read_mask() -> bool:
            try:
                with h5py.File(first, "r", swmr=True) as f:
                    masks.append(f[f"{ENTRY}/{DET_MASK}"][()])
                return True
            except (OSError, KeyError):          # not written yet, or being created
                return False

        if until(read_mask, max(0.0, mask_wait_s), POLL_S):
            return start, masks[0]
        if mask_wait_s <= 0:
            return start, None
        raise ArchiveError(f"{first}: run {self.uid} has a detector mask but it cannot be read")

    def stop(self) -> dict[str, Any] | None:
        """The stop message the archiver recorded, None while the run is open."""
        text = self._master_attrs().get(ATTR_STOP, "") if self.exists() else ""
        return json.loads(text) if text else None

    def documents(self) -> dict[str, dict[str, Any]]:
        """The run's bluesky start/stop documents by name, as recorded in run.h5."""
        attrs = self._master_attrs() if self.exists() else {}
        return {key[len(ATTR_DOCUMENT):]: json.loads(value) for key, value in attrs.items()
                if key.startswith(ATTR_DOCUMENT)}

    def state(self) -> str:
        """"running" until the archiver recorded the run's end, then "done" ("" without run.h5)."""
        return str(self._master_attrs().get(ATTR_STATE, "")) if self.exists() else ""

    def closed(self) -> bool:
        """True once the archiver recorded the run's end (its stop message) in run.h5."""
        try:
            return self.state() == STATE_DONE
        except (OSError, KeyError):
            return False

    def readings(self, t0: float) -> list[dict[str, Any]]:
        """The potentiostat readings of the run's NXlog (see `read_readings`)."""
        return read_readings(self.path / POTENTIOSTAT, t0)

    # -- its maps -----------------------------------------------------------------------------------
    def map_path(self, number: int) -> Path:
        return self.path / map_file_name(number)

    def maps_path(self, number: int) -> Path:
        return self.path / maps_file_name(number)

    def map_numbers(self) -> list[int]:
        """Numbers of the maps that have a raw map file, ascending."""
        found = (map_number_of(p.name) for p in self.path.iterdir()) if self.path.is_dir() else iter(())
        return sorted(n for n in found if n is not None)

    def has_frames(self, number: int) -> bool:
        return self.map_path(number).is_file()

    def has_maps(self, number: int) -> bool:
        return self.maps_path(number).is_file()

    def map_info(self, number: int) -> ArchivedMap:
        """What map `number`'s file holds now (OSError/KeyError while the archiver creates it)."""
        with h5py.File(self.map_path(number), "r", swmr=True) as f:
            entry = f[ENTRY]
            seqs = np.unique(entry[SEQUENCE][()])
            n_sent = int(entry[N_FRAMES_SENT][()]) if N_FRAMES_SENT in entry else -1
            last = int(entry[LAST_SEQ_SENT][()]) if LAST_SEQ_SENT in entry else -1
            complete = bool(entry[COMPLETE][()]) if COMPLETE in entry else False
            return ArchivedMap(number, int(entry[DATA].shape[0]), seqs, complete, str(entry.attrs.get(ATTR_TRIGGER, "")),
                               (last - n_sent + 1, last) if n_sent >= 0 else None)

    def frames_held(self) -> int | None:
        """Frames every map file holds now, None while one is not readable yet (being created)."""
        total = 0
        for number in self.map_numbers():
            try:
                with h5py.File(self.map_path(number), "r", swmr=True) as f:
                    total += int(f[ENTRY][SEQUENCE].shape[0])
            except (OSError, KeyError):
                return None
        return total

    def map_done(self, number: int, run_closed: bool = False) -> bool:
        """Map `number` is archived: its frames complete (or the run ended) and its final maps written."""
        if not (self.has_frames(number) and self.has_maps(number)):
            return False
        try:
            with h5py.File(self.map_path(number), "r", swmr=True) as f:
                return run_closed or bool(f[MAP_COMPLETE][()])
        except (OSError, KeyError):
            return False

    def maps_to_make(self) -> list[int]:
        """Maps whose frames are all archived but that have no final maps (nobody made them)."""
        missing = []
        for number in self.map_numbers():
            if self.has_maps(number):
                continue
            try:
                with h5py.File(self.map_path(number), "r", swmr=True) as f:
                    if f[MAP_COMPLETE][()] == 1:
                        missing.append(number)
            except (OSError, KeyError):
                continue       # being written, or not a whole file yet
        return missing

    def map_shape(self, number: int) -> tuple[int, int]:
        with h5py.File(self.map_path(number), "r", swmr=True) as f:
            ny, nx = (int(v) for v in f[ENTRY][MAP_SHAPE][()])
        return ny, nx

    def d_spacing(self, number: int) -> npt.NDArray[np.float64] | None:
        """The final d-spacing map of map `number`, None when it has none (yet)."""
        if not self.has_maps(number):
            return None
        with h5py.File(self.maps_path(number), "r") as f:
            path = f"{ENTRY}/{MAPS}/d_spacing"
            return f[path][()] if path in f else None

    def roi(self) -> tuple[int, int, int, int] | None:
        """ROI of the run's latest archived maps, so maps made later match the ones made before."""
        for number in reversed(self.map_numbers()):
            if not self.has_maps(number):
                continue
            with h5py.File(self.maps_path(number), "r") as f:
                roi = f[ENTRY][MAPS].attrs.get(ATTR_ROI)
                if roi is not None and len(roi) == 4:
                    return tuple(int(v) for v in roi)  # type: ignore[return-value]
        return None

    def frames(self, number: int, *, below_seq: int | None = None, wait_s: float = 30.0, block: int = 32,
               skip_bad: bool = False) -> Iterator[Frame]:
        """(frame header, frame) of map `number`, in archive (= seq) order, waiting for the archiver.

        With `below_seq`, only frames sent before that sequence number, waiting up to `wait_s`
        for the archiver to have flushed them; without it, the whole map, waiting for the
        archiver to mark it complete. See `read_map_frames`.
        """
        return read_map_frames(self.map_path(number), run=self.uid, number=number, below_seq=below_seq,
                               until_complete=below_seq is None, wait_s=wait_s, block=block, skip_bad=skip_bad)


# -- single files (also those a restarted archiver set aside) ------------------------------------------
def _open_map_file(path: Path, deadline: float, what: str) -> h5py.File:
    """Open a map file for SWMR reading once it is whole (the archiver may be creating it)."""
    opened: list[h5py.File] = []

    def whole() -> bool:
        try:
            f = h5py.File(path, "r", swmr=True)
        except OSError:
            return False
        if MAP_COMPLETE in f:
            opened.append(f)
            return True
        f.close()
        return False

    if not until(whole, max(0.0, deadline - time.monotonic()), POLL_S):
        raise ArchiveError(f"{path}: no readable archived frames{what}")
    return opened[0]


def _frames_ready(entry: h5py.Group, below_seq: int | None, until_complete: bool) -> int | None:
    """How many frames to read once the wait is over, None while it is not."""
    seq_ds, data, complete = entry[SEQUENCE], entry[DATA], entry[COMPLETE]
    for ds in (seq_ds, data, complete):
        ds.refresh()
    n = min(seq_ds.shape[0], data.shape[0])
    if below_seq is not None:
        seqs = seq_ds[:n]
        if below_seq == 0 or (n and seqs[-1] >= below_seq - 1):
            return int(np.searchsorted(seqs, below_seq))
        return None
    if until_complete and complete[()] != 1:
        return None
    return n


def read_map_frames(path: Path, *, run: str | None = None, number: int | None = None, below_seq: int | None = None,
                    until_complete: bool = False, wait_s: float = 0.0, block: int = 32,
                    skip_bad: bool = False) -> Iterator[Frame]:
    """(frame header, frame) of every frame an archived map file holds, in order.

    Waits up to `wait_s` for the file, and for the frames before `below_seq` or (with
    `until_complete`) for the map to be marked complete; otherwise reads what is there now.
    Each block of frames is a fresh array, so a consumer may keep the frames it is given.

    Raises
    ------
    ArchiveError
        if the file or the frames waited for do not appear in time.
    CorruptFrameError
        naming the file and frames when a chunk cannot be decoded (`skip_bad`: they are left out).
    """
    deadline = time.monotonic() + wait_s
    what = f" for map {number} of run {run}" if number is not None and run is not None else ""
    with _open_map_file(path, deadline, what) as f:
        entry = f[ENTRY]
        number = int(entry.attrs.get(ATTR_MAP_NUMBER, -1)) if number is None else number
        run = str(entry.attrs.get(ATTR_RUN_UID, "")) if run is None else run
        ready: list[int] = []

        def frames_ready() -> bool:
            n = _frames_ready(entry, below_seq, until_complete)
            if n is not None:
                ready.append(n)
            return n is not None

        if not until(frames_ready, max(0.0, deadline - time.monotonic()), POLL_S):
            held = min(entry[SEQUENCE].shape[0], entry[DATA].shape[0])
            raise ArchiveError(f"{path}: archive holds {held} frames of map {number}; waited {wait_s:.0f} s for "
                               f"{'seq < ' + str(below_seq) if below_seq is not None else 'the map to complete'}")
        n = ready[-1]
        columns = {name: entry[f"{POSITIONERS}/{name}"] for name in ANGLES}
        columns.update(index=entry[MAP_INDEX], seq=entry[SEQUENCE], t=entry[TIMESTAMP], x=entry[SCAN_X], y=entry[SCAN_Y])
        for ds in columns.values():
            ds.refresh()
        meta = {key: ds[:n] for key, ds in columns.items()}
        data = entry[DATA]
        reader = FrameReader(data, f"{path}:/{ENTRY}")
        fixed = {"run": run, "map": number, "dtype": str(data.dtype), "shape": list(data.shape[1:])}
        for start in range(0, n, block):
            frames = np.empty((min(n, start + block) - start,) + data.shape[1:], dtype=data.dtype)
            bad = reader.read(frames, start)
            if bad and not skip_bad:
                raise reader.error(bad)
            if bad:
                log.error("%s", reader.error(bad))
            for i in range(start, start + frames.shape[0]):
                if i in bad:
                    continue
                x, y = float(meta["x"][i]), float(meta["y"][i])
                yield ({**fixed, "seq": int(meta["seq"][i]), "frame": i, "index": int(meta["index"][i]),
                        **{name: float(meta[name][i]) for name in ANGLES}, "t": float(meta["t"][i]),
                        "x": x if np.isfinite(x) else None, "y": y if np.isfinite(y) else None}, frames[i - start])


def map_start_of(path: Path) -> dict[str, Any]:
    """The map_start header an archived map file was created from."""
    with h5py.File(path, "r", swmr=True) as f:
        entry = f[ENTRY]
        return {"map": int(entry.attrs[ATTR_MAP_NUMBER]), "map_shape": [int(v) for v in entry[MAP_SHAPE][()]],
                "n_frames": int(entry.attrs.get(ATTR_FRAMES_EXPECTED, 0)),
                "trigger": json.loads(entry.attrs.get(ATTR_TRIGGER, "{}"))}


def read_readings(path: Path, t0: float) -> list[dict[str, Any]]:
    """Potentiostat readings held by an archived NXlog, as reading messages (no time: `t0`)."""
    with h5py.File(path, "r", swmr=True) as f:
        group = f[POTENTIOSTAT_GROUP] if POTENTIOSTAT_GROUP in f else f[POTENTIOSTAT_LINK]
        n = group[LOG_TIME].shape[0]
        columns = {key: group[name][:n] for name, key, _units in READING_COLUMNS}
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.append({key: float(values[i]) for key, values in columns.items() if np.isfinite(values[i])})
        out[-1].setdefault("t", t0)
    return out
