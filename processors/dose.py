"""Dose per sample position: the photons each spot of the crystal has taken over the whole run.

Every frame adds ``exposure_s × flux_ph_s`` photons (times ``monitor / mean monitor`` when the
frame header carries a ``monitor`` reading, so a beam drop counts as less dose) at its piezo
position ``x``/``y`` (µm, the run's piezo frame). Positions are binned to a grid of the run's
map step anchored at 0 µm, not spread over the beam footprint: the focused beam (80 nm,
SCIENCE.md) is smaller than the map step (100 nm), so the footprint falls within one cell and
spreading would change nothing at the map's resolution, while a fixed grid anchored at 0 lets
maps of different regions (re-centred, drifted) add up in one frame. A frame without a
position falls back to its map pixel (``index``) times the step.

The exposure, flux and step come from the run's start message (``metadata.dose``, set by the
plan); a run without them has no dose map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError

UNIT = "photons"


@dataclass(frozen=True)
class DoseSettings:
    """What one frame delivers: exposure (s) × flux (photons/s), binned on a grid of `step_um`."""

    exposure_s: float
    flux_ph_s: float
    step_um: float

    def __post_init__(self) -> None:
        for name in ("exposure_s", "flux_ph_s", "step_um"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not (math.isfinite(value) and value > 0):
                raise ConfigError(f"dose: {name} = {value!r}, expected a positive number")

    @classmethod
    def from_start(cls, start: dict[str, Any]) -> DoseSettings | None:
        """The settings the run's start metadata names (``metadata.dose``), None when absent."""
        dose = (start.get("metadata") or {}).get("dose")
        if not isinstance(dose, dict):
            return None
        return cls(dose.get("exposure_s"), dose.get("flux_ph_s"), dose.get("step_um"))  # type: ignore[arg-type]

    def as_metadata(self) -> dict[str, float]:
        return {"exposure_s": self.exposure_s, "flux_ph_s": self.flux_ph_s, "step_um": self.step_um}


@dataclass
class DoseGrid:
    """The dose so far on the run's grid: ``photons[iy, ix]`` at ``origin_um + (iy, ix) × step_um``."""

    photons: npt.NDArray[np.float64]
    origin_um: tuple[float, float]          # (y, x) of cell [0, 0]
    step_um: float

    def header(self) -> dict[str, Any]:
        """What a map message says about its dose field."""
        return {"origin_um": [float(v) for v in self.origin_um], "step_um": float(self.step_um), "unit": UNIT,
                "max": float(self.photons.max()) if self.photons.size else 0.0}


Cells = dict[tuple[int, int], float]


@dataclass
class DoseLedger:
    """The run's accumulated dose by grid cell (a dict, so a map anywhere in the piezo range costs
    only its own cells).

    Frames of the next map may arrive before a map's final maps are made (fan-out workers, a
    map_end late), so the maps still open keep their own share: the dose recorded with map n is
    that of maps 0..n exactly (`grid(up_to=n)`), and `release(n)` forgets the shares once map n is final.
    """

    settings: DoseSettings
    cells: Cells = field(default_factory=dict)
    open_maps: dict[int, Cells] = field(default_factory=dict)
    monitor_sum: float = 0.0
    monitor_n: int = 0
    frames: int = 0

    def add(self, header: dict[str, Any], map_shape: tuple[int, int]) -> None:
        """Account one frame (protocol frame header: x/y in µm or nil, index, optional monitor)."""
        s = self.settings
        photons = s.exposure_s * s.flux_ph_s
        monitor = header.get("monitor")
        if isinstance(monitor, (int, float)) and not isinstance(monitor, bool) and math.isfinite(monitor) and monitor >= 0:
            self.monitor_sum += monitor
            self.monitor_n += 1
            mean = self.monitor_sum / self.monitor_n
            photons *= monitor / mean if mean > 0 else 1.0
        x, y = header.get("x"), header.get("y")
        if x is None or y is None:
            iy, ix = divmod(int(header["index"]), int(map_shape[1]))
            cell = (iy, ix)
        else:
            cell = (round(float(y) / s.step_um), round(float(x) / s.step_um))
        self.cells[cell] = self.cells.get(cell, 0.0) + photons
        share = self.open_maps.setdefault(int(header.get("map", 0)), {})
        share[cell] = share.get(cell, 0.0) + photons
        self.frames += 1

    def release(self, number: int) -> None:
        """Map `number` is final: forget the shares of it and the maps before it."""
        for m in [m for m in self.open_maps if m <= number]:
            del self.open_maps[m]

    def grid(self, up_to: int | None = None) -> DoseGrid | None:
        """The dose of maps 0..`up_to` (None: every frame so far) as a dense array over the cells
        touched so far (None before any frame)."""
        if not self.cells:
            return None
        cells = dict(self.cells)
        for m, share in self.open_maps.items():
            if up_to is not None and m > up_to:
                for cell, photons in share.items():
                    cells[cell] -= photons
        keys = np.array(list(cells), dtype=np.int64)
        lo, hi = keys.min(axis=0), keys.max(axis=0)
        photons = np.zeros((int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1)), dtype=np.float64)
        photons[keys[:, 0] - lo[0], keys[:, 1] - lo[1]] = np.maximum(list(cells.values()), 0.0)
        step = self.settings.step_um
        return DoseGrid(photons, (float(lo[0] * step), float(lo[1] * step)), step)
