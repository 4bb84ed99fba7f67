"""Sample-stage drift between maps: where the particle sits in the piezo frame for each map.

Over an operando run of hours the sample creeps against the piezo scanner (thermal drift of the
cell and its mount), so a fixed scan region loses the particle map by map. Here the creep is a
smooth, seeded path: between two maps the particle moves by 0.8-1 x `largest_step_um` in a
direction that turns by a few degrees per map. It is separate from the drift between the eta
scans of one map (`drift.py`, a within-map effect of `opmon simulate`).

The truth is the particle's offset from where it was for map 0, (x, y) in µm, per map number
the detector is set to; `SimulatedBeamline` shows it on a read-only soft signal
(`StageDriftTruth`) that the demo records in the run's documents as a monitored stream.
"""
from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from ophyd_async.core import Array1D, StandardReadable, soft_signal_r_and_setter

from opmon.errors import ConfigError

TURN_DEG = 8.0  # standard deviation of the creep's change of direction per map


class StageDrift:
    """The seeded creep: `position(n)` is where the particle is for the n-th map (µm, (x, y))."""

    def __init__(self, largest_step_um: float, seed: int = 0) -> None:
        if not (math.isfinite(largest_step_um) and largest_step_um >= 0):
            raise ConfigError(f"stage drift {largest_step_um!r} µm per map: must be a number >= 0")
        self.largest_step_um = float(largest_step_um)
        self._rng = np.random.default_rng([int(seed), 0x57A6E])
        self._angle = float(self._rng.uniform(0.0, 2.0 * np.pi))
        self._path: list[tuple[float, float]] = [(0.0, 0.0)]

    def position(self, map_number: int) -> tuple[float, float]:
        """(x, y) µm of the particle for map `map_number`, relative to map 0 (same for the same seed)."""
        if map_number < 0:
            raise ConfigError(f"stage drift: map number {map_number} < 0")
        while len(self._path) <= map_number:
            self._angle += math.radians(TURN_DEG) * float(self._rng.standard_normal())
            size = self.largest_step_um * float(self._rng.uniform(0.8, 1.0))
            x, y = self._path[-1]
            self._path.append((x + size * math.cos(self._angle), y + size * math.sin(self._angle)))
        return self._path[map_number]

    def path(self, n_maps: int) -> npt.NDArray[np.float64]:
        """(n_maps, 2) positions (x, y) µm of maps 0 .. n_maps - 1."""
        return np.array([self.position(n) for n in range(n_maps)], dtype=np.float64).reshape(n_maps, 2)


class StageDriftTruth(StandardReadable):
    """The simulated particle's offset (x, y) µm from its map-0 position, for the run's documents."""

    def __init__(self, name: str = "stage_drift") -> None:
        with self.add_children_as_readables():
            self.offset_um, self._set = soft_signal_r_and_setter(Array1D[np.float64], np.zeros(2), units="um")
        super().__init__(name=name)

    def show(self, x_um: float, y_um: float) -> None:
        self._set(np.array([x_um, y_um], dtype=np.float64))
