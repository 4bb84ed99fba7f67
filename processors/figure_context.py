"""What a map figure states beside its pixels: where, when, why, at which voltage.

A scientist putting a map in a talk needs its real positions (µm), the time it was taken,
the reason it was taken (trigger) and the cell voltage then. They live in different files
of an archived run (the maps file, the raw map file, the potentiostat log); this module
gathers whatever is there and leaves out what is not, never guessing.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from opmon.streaming.archive.layout import (ATTR_TRIGGER, ENTRY, MAPS, POTENTIOSTAT, TIMESTAMP, map_file_name,
                                           map_number_of)
from opmon.streaming.archive.maps_file import read_axes
from opmon.processors.series import reading_at
from opmon.streaming.archive.reader import read_readings

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MapContext:
    """The facts a figure states about one map; None or "" where the files do not say."""

    label: str = ""
    trigger: str = ""
    started: float | None = None          # unix time of the map's first frame
    voltage_v: float | None = None        # cell voltage at that time
    x_um: F64 | None = None               # position of each map column
    y_um: F64 | None = None               # position of each map row

    def title(self) -> str:
        """One line: label, voltage, time (UTC), trigger reason, each only when known."""
        parts = [self.label] if self.label else []
        if self.voltage_v is not None:
            parts.append(f"{self.voltage_v:.4f} V")
        if self.started is not None:
            parts.append(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)))
        if self.trigger:
            parts.append(f"trigger: {self.trigger}")
        return " | ".join(parts)


def map_context(entry: h5py.Group, label: str = "", raw: h5py.Group | None = None) -> MapContext:
    """Context of the map whose maps are `entry/maps` (a maps file's, run.h5's or a raw file's entry);
    `raw`: its raw map entry when the caller knows it (else found beside the maps, if it is there)."""
    axes = read_axes(entry[MAPS]) if MAPS in entry else None
    x_um, y_um = axes if axes is not None else (None, None)
    with ExitStack() as files:
        try:
            raw = raw if raw is not None else _raw_entry_of(entry, files)
            if raw is None:
                return MapContext(label, x_um=x_um, y_um=y_um)
            trigger = _trigger_text(raw.attrs.get(ATTR_TRIGGER, ""))
            stamps = raw[TIMESTAMP] if TIMESTAMP in raw else None
            started = float(stamps[0]) if stamps is not None and stamps.shape[0] and np.isfinite(stamps[0]) else None
            log_path = Path(raw.file.filename).parent / POTENTIOSTAT
            voltage = _voltage_at(log_path, started) if started is not None and log_path.is_file() else None
        except (OSError, KeyError, ValueError) as exc:   # a damaged side file costs the title, not the figure
            log.warning("%s: map context not read: %s", label or entry.name, exc)
            return MapContext(label, x_um=x_um, y_um=y_um)
    return MapContext(label, trigger, started, voltage, x_um, y_um)


def _raw_entry_of(entry: h5py.Group, files: ExitStack) -> h5py.Group | None:
    """The raw map entry holding the frames' times and the trigger of the map of `entry`
    (a sibling raw file is opened on `files`)."""
    if TIMESTAMP in entry:                  # a raw file's entry, or run.h5's entryN (scan linked)
        return entry[TIMESTAMP].parent.parent
    number = map_number_of(Path(entry.file.filename).name.replace("_maps", ""))
    if number is None:                      # e.g. `opmon process` output: maps only
        return None
    sibling = Path(entry.file.filename).with_name(map_file_name(number))
    if not sibling.is_file():
        return None
    raw_file = files.enter_context(h5py.File(sibling, "r", swmr=True))
    return raw_file[ENTRY] if ENTRY in raw_file else None


def _trigger_text(value: object) -> str:
    """The trigger's reason as the acquisition wrote it ({"reason": ...} or plain text)."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return text
    if isinstance(found, dict):
        return str(found.get("reason") or ", ".join(f"{k} {v}" for k, v in found.items()))
    return str(found)


def _voltage_at(log_path: Path, when: float) -> float | None:
    """Cell voltage of the last reading at or before `when` (the first one if none came before)."""
    return reading_at(read_readings(log_path, when), when, "voltage_v")
