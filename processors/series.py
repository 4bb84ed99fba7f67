"""One point per map of a run: integrated intensity, valid fraction and mean d against charge.

The imaged reflection fades as its phase transforms (seed 000, Supplementary Fig. 10): the
integrated intensity per map against the charge passed is the evidence of the transformation,
and the curve a scientist watches to decide when to look for the next phase's reflection.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opmon.streaming.archive.layout import ENTRY, MAPS, POTENTIOSTAT, TIMESTAMP
from opmon.streaming.archive.reader import RunArchive, read_readings


@dataclass(frozen=True)
class MapPoint:
    """What one archived map adds to the run's curve (None where the run's files do not say)."""

    number: int
    started: float | None            # unix time of its first frame
    voltage_v: float | None          # cell voltage then
    charge_mah: float | None         # charge passed then
    integrated_intensity: float      # Σ over the map of Σ I (counts, background subtracted)
    valid_fraction: float            # share of map pixels the mask keeps
    mean_d: float | None             # Å, over valid pixels


def reading_at(readings: Sequence[dict[str, Any]], when: float, key: str) -> float | None:
    """`key` of the last reading at or before `when` that has it (the first one if none came before)."""
    having = [r for r in readings if key in r]
    if not having:
        return None
    before = [r for r in having if r["t"] <= when]
    return float((before[-1] if before else having[0])[key])


def run_series(run_dir: str | Path) -> list[MapPoint]:
    """The curve of an archived run: one point per map that has final maps, in map order."""
    archive = RunArchive.at(run_dir)
    log = archive.path / POTENTIOSTAT
    readings = read_readings(log, 0.0) if log.is_file() else []
    points = []
    for number in archive.map_numbers():
        if not archive.has_maps(number):
            continue
        with h5py.File(archive.maps_path(number), "r") as f:
            maps = f[ENTRY][MAPS]
            intensity, mask, d = maps["intensity"][()], maps["mask"][()].astype(bool), maps["d_spacing"][()]
        with h5py.File(archive.map_path(number), "r", swmr=True) as f:
            stamps = f[ENTRY][TIMESTAMP] if TIMESTAMP in f[ENTRY] else None
            started = float(stamps[0]) if stamps is not None and stamps.shape[0] else None
        known = started is not None and np.isfinite(started)
        points.append(MapPoint(
            number, started if known else None,
            reading_at(readings, started, "voltage_v") if known else None,
            reading_at(readings, started, "charge_mah") if known else None,
            float(np.nansum(intensity)), float(mask.mean()) if mask.size else 0.0,
            float(np.mean(d[mask])) if mask.any() else None))
    return points
