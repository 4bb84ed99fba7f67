"""How a restarted archiver picks up a run it was archiving when it died.

A file killed while open for SWMR writing stays readable (open it with ``swmr=True``) but
can never be opened for writing again. So the restarted archiver moves such a file aside
(``*.crashed-<time>.h5``), starts a fresh one under the public name, copies everything the
old one held (every frame up to its last flush), and carries on with the stream. Frames sent
between the last flush and the restart are gone from the archive; they are counted as lost.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.formats import DATA, DET_MASK, MAP_INDEX, POSITIONERS
from opmon.streaming.archive_files import MASTER, READING_COLUMNS, RunDirectory, map_file_name, maps_file_name


def read_start(run_path: Path) -> tuple[dict[str, Any], npt.NDArray[np.uint8] | None] | None:
    """(start header, detector mask) of an archived run, or None if there is no such run."""
    master = run_path / MASTER
    if not master.is_file():
        return None
    with h5py.File(master, "r") as f:
        text = f.attrs.get("start")
    start = json.loads(text) if text else None
    if not isinstance(start, dict) or "frame_shape" not in start:
        return None              # no stream start recorded (yet): not a run this archiver can continue
    mask = None
    first = run_path / map_file_name(0)
    if first.is_file():
        with h5py.File(first, "r", swmr=True) as f:
            if f"entry/{DET_MASK}" in f:
                mask = f[f"entry/{DET_MASK}"][()]
    return start, mask


def set_aside(path: Path) -> Path:
    """Rename a file that cannot be reopened for writing; returns its new name."""
    aside = path.with_name(f"{path.stem}.crashed-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
    path.rename(aside)
    return aside


def map_frames(path: Path) -> Iterator[tuple[dict[str, Any], npt.NDArray[Any]]]:
    """(frame header, frame) of every frame an archived map file holds, in order."""
    with h5py.File(path, "r", swmr=True) as f:
        entry = f["entry"]
        data, seq = entry[DATA], entry["scan/sequence"]
        n = min(data.shape[0], seq.shape[0])
        cols = {name: entry[f"{POSITIONERS}/{name}"][:n] for name in ("eta", "phi", "nu", "delta")}
        index, seqs = entry[MAP_INDEX][:n], seq[:n]
        x, y, t = entry["scan/x"][:n], entry["scan/y"][:n], entry["scan/timestamp"][:n]
        for i in range(n):
            yield ({"index": int(index[i]), "seq": int(seqs[i]), "t": float(t[i]),
                    "x": None if not np.isfinite(x[i]) else float(x[i]), "y": None if not np.isfinite(y[i]) else float(y[i]),
                    **{name: float(values[i]) for name, values in cols.items()}}, data[i])


def map_header_of(path: Path) -> dict[str, Any]:
    """The map_start header an archived map file was created from."""
    with h5py.File(path, "r", swmr=True) as f:
        entry = f["entry"]
        return {"map": int(entry.attrs["map_number"]), "map_shape": [int(v) for v in entry["scan/map_shape"][()]],
                "n_frames": int(entry.attrs.get("n_frames_expected", 0)), "trigger": json.loads(entry.attrs.get("trigger", "{}"))}


def readings(path: Path, t0: float) -> list[dict[str, Any]]:
    """Potentiostat readings held by an archived NXlog, as reading messages."""
    out: list[dict[str, Any]] = []
    with h5py.File(path, "r", swmr=True) as f:
        group = f["potentiostat"]
        n = group["time"].shape[0]
        columns = {key: group[name][:n] for name, key, _units in READING_COLUMNS}
    for i in range(n):
        out.append({key: float(values[i]) for key, values in columns.items() if np.isfinite(values[i])})
        out[-1].setdefault("t", t0)
    return out


def rebuild(run_path: Path, uid: str, start: dict[str, Any]) -> RunDirectory:
    """The RunDirectory bookkeeping of an archived run, from its files."""
    run = RunDirectory(run_path, uid, start=start)
    for path in sorted(run_path.glob("map_[0-9][0-9][0-9][0-9].h5")):
        number = int(path.stem.split("_")[1])
        rec = run.record(number)
        with h5py.File(path, "r", swmr=True) as f:
            rec.frames = int(f[f"entry/{DATA}"].shape[0])
            rec.complete = bool(f["entry/scan/complete"][()])
        rec.has_maps = (run_path / maps_file_name(number)).is_file()
    with h5py.File(run_path / MASTER, "r") as f:
        for key, value in f.attrs.items():
            if key.startswith("document_"):
                run.documents[key[len("document_"):]] = json.loads(value)
        stop = f.attrs.get("stop", "")
    if stop:
        run.stop = json.loads(stop)      # an ended run stays ended when its master is rewritten
    return run
