"""Where the particle has drifted, map by map, and where to put the scan region next.

Each final map's Σ I (intensity) map is registered onto the previous one
(`opmon.processors.registration`): consecutive maps of a transforming particle look alike even
when the first and the last do not (a fading reflection, a moving phase front). A map taken
with the scan region shifted by ``offset_um`` puts the particle ``offset_um`` further in the
piezo frame than its map pixels say, so the particle's position in the piezo frame is

    particle[k] = particle[k-1] + (offset[k] - offset[k-1]) + displacement_px[k] * step_um

with particle[0] = 0. To put the particle back on its first map's pixels the next map's region
must be shifted to ``offset[0] + particle[next]``; the creep of a drifting stage goes on in
the same direction, so the next position is predicted from the last two (constant velocity per
map), as many maps ahead as the shift will come into force (one, or two when the next map
began before this one was registered). The move is limited to ``max_step_um`` per map, and moves under a quarter of a map pixel
are not made (they would only chase registration noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.processors.registration import has_intensity, register

XY = tuple[float, float]


@dataclass(frozen=True)
class MapPosition:
    """One registered map: the region shift it was taken with and the particle's position, (x, y) µm."""

    map_number: int
    offset_um: XY
    particle_um: XY
    displacement_px: XY | None = None   # (dy, dx) against the previous map; None for the first


@dataclass(frozen=True)
class Recentre:
    """A proposed region shift (x, y) µm from the run's grid, and why."""

    offset_um: XY
    reason: str
    limited: bool


class DriftTracker:
    """The particle's drift over one run's maps (see the module docstring).

    Parameters
    ----------
    step_um : the map grid's step (start document ``map_step_um``).
    max_step_um : largest move of the region per proposal.
    predict : add the last map-to-map drift to the last position (creep goes on).
    """

    def __init__(self, step_um: float, max_step_um: float, predict: bool = True, min_move_px: float = 0.25) -> None:
        if not (math.isfinite(step_um) and step_um > 0):
            raise ConfigError(f"drift tracker: map step {step_um!r} µm must be > 0")
        if not (math.isfinite(max_step_um) and max_step_um > 0):
            raise ConfigError(f"re-centring step limit {max_step_um!r} µm per map: must be > 0")
        self.step_um, self.max_step_um, self.predict = float(step_um), float(max_step_um), predict
        self.min_move_um = float(min_move_px) * self.step_um
        self.positions: list[MapPosition] = []
        self._previous: npt.NDArray[np.float64] | None = None

    def add(self, map_number: int, intensity: npt.ArrayLike, offset_um: XY) -> MapPosition | None:
        """Register one final map; None when it holds no intensity to register (it is skipped)."""
        image = np.asarray(intensity, dtype=np.float64)
        if not np.nansum(np.where(image > 0, image, 0.0)) > 0:
            return None
        offset = (float(offset_um[0]), float(offset_um[1]))
        if self._previous is None or not self.positions:
            found = MapPosition(int(map_number), offset, (0.0, 0.0))
        else:
            if not has_intensity(image):
                return None
            shift = register([image], self._previous, pad=True)[0]
            last = self.positions[-1]
            dy, dx = float(shift[0]), float(shift[1])        # the pattern's displacement, map pixels
            particle = (last.particle_um[0] + offset[0] - last.offset_um[0] + dx * self.step_um,
                        last.particle_um[1] + offset[1] - last.offset_um[1] + dy * self.step_um)
            found = MapPosition(int(map_number), offset, particle, (dy, dx))
        self.positions.append(found)
        self._previous = image
        return found

    def predicted_um(self, maps_ahead: int = 1) -> XY | None:
        """Where the particle will be `maps_ahead` maps after the last one registered, (x, y) µm
        relative to the first map."""
        if not self.positions:
            return None
        last = self.positions[-1]
        if not self.predict or len(self.positions) < 2:
            return last.particle_um
        before = self.positions[-2]
        per_map = max(1, maps_ahead) / max(1, last.map_number - before.map_number)
        return (last.particle_um[0] + (last.particle_um[0] - before.particle_um[0]) * per_map,
                last.particle_um[1] + (last.particle_um[1] - before.particle_um[1]) * per_map)

    def proposal(self, current_offset_um: XY, next_map: int | None = None) -> Recentre | None:
        """The region shift that puts the particle back on its first map's pixels for map
        `next_map` (default: the one after the last registered; later when maps are taken back to
        back and the next has begun), from `current_offset_um` (the shift in force) by at most
        `max_step_um`; None: no move needed."""
        if not self.positions:
            return None
        maps_ahead = 1 if next_map is None else max(1, next_map - self.positions[-1].map_number)
        ahead = self.predicted_um(maps_ahead)
        if ahead is None or len(self.positions) < 2:
            return None
        first, last = self.positions[0], self.positions[-1]
        target = (first.offset_um[0] + ahead[0], first.offset_um[1] + ahead[1])
        move = (target[0] - float(current_offset_um[0]), target[1] - float(current_offset_um[1]))
        size = math.hypot(*move)
        if size < self.min_move_um:
            return None
        limited = size > self.max_step_um
        if limited:
            move = (move[0] * self.max_step_um / size, move[1] * self.max_step_um / size)
        offset = (round(float(current_offset_um[0]) + move[0], 4), round(float(current_offset_um[1]) + move[1], 4))
        dy, dx = last.displacement_px or (0.0, 0.0)
        reason = (f"drift re-centring: on map {last.map_number} the particle is at ({last.particle_um[0]:+.2f}, "
                  f"{last.particle_um[1]:+.2f}) µm from map {first.map_number} (moved ({dx:+.2f}, {dy:+.2f}) px "
                  f"against map {self.positions[-2].map_number})"
                  + (f", expected at ({ahead[0]:+.2f}, {ahead[1]:+.2f}) µm by map {last.map_number + maps_ahead}"
                     if self.predict else "")
                  + f"; region shifted to ({offset[0]:+.2f}, {offset[1]:+.2f}) µm"
                  + (f" (step limited to {self.max_step_um:g} µm)" if limited else ""))
        return Recentre(offset, reason, limited)
