"""Where the particle has drifted, map by map, and where to put the scan region next.

Each final map's Σ I (intensity) map is registered onto a *template*: the most complete map so
far (the most valid pixels; a later map with `TEMPLATE_SHARE` of its valid pixels takes its
place, so the template follows slow changes). Not onto the previous map: while the imaged
reflection fades (the paper's one-phase detector window) the part still in Bragg condition
shrinks from where the phase fronts start, map-to-map registrations of fading maps are biased,
the biases add up from map to map, and one odd map (taken across the switch of the imaged
phase: its first rows faded, its last rows whole) throws every later position off; in a dense
demo the particle left its place by 4 px. The registration: cross-correlation
(`opmon.processors.registration.register`) for a start, then `fit_on_valid` compares counts
on the map's valid pixels only, so what is left of a fading particle is not pulled towards
the template's bright middle.

A map is not used (`Refused`, with the reason; the creep is predicted from the maps before):
- with fewer than `MIN_VALID_SHARE` of the template's valid pixels (too little left to register:
  a 4-13 pixel remnant fits almost anywhere);
- when more than `1 - MIN_ON_FOOTPRINT` of its valid pixels fall off the template's footprint
  (valid pixels dilated by one) at the displacement found;
- when it puts the particle more than `GATE_PX` map pixels from where the creep seen so far
  leads, but never right after a map not used: two maps agreeing on a jump are believed, and
  so is the first map registered again after a faded stretch (the prediction has aged).

A map taken with the scan region shifted by ``offset_um`` puts the particle ``offset_um``
further in the piezo frame than its map pixels say, so the particle's position is

    particle[k] = particle[t] + (offset[k] - offset[t]) + displacement_px[k vs t] * step_um

with t the template's map and particle[0] = 0. To put the particle back on its first map's
pixels the next map's region must be shifted to ``offset[0] + particle[next]``; the creep goes
on, so the next position is read off a straight line through the last `HISTORY` positions
(constant velocity per map; one odd position bends it less than a line through two), as many
maps ahead as the shift will come into force (maps not used count). The move is limited to
``max_step_um`` per map, and moves under a quarter of a map pixel are not made (they would
only chase registration noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.processors.registration import has_intensity, register, resample

XY = tuple[float, float]
MIN_ON_FOOTPRINT = 0.95   # share of a map's valid pixels that must lie on the template's footprint
MIN_VALID_SHARE = 0.4     # a map with fewer valid pixels than this share of the template's is not registered
UNFADED_QUANTILE = 0.75   # the map's pixels at this quantile of map / template have not faded
HISTORY = 4               # the creep is predicted from a straight line through the last this many positions
GATE_PX = 1.5             # a position further than this (map pixels) from the predicted creep is refused once
TEMPLATE_SHARE = 0.9      # a map with this share of the template's valid pixels becomes the template


@dataclass(frozen=True)
class MapPosition:
    """One registered map: the region shift it was taken with and the particle's position, (x, y) µm."""

    map_number: int
    offset_um: XY
    particle_um: XY
    displacement_px: XY | None = None   # (dy, dx) against the template map; None for the first
    template: int | None = None         # the map it was registered onto


@dataclass(frozen=True)
class Refused:
    """A map whose registration was not used, and why (the creep is predicted from the maps before)."""

    map_number: int
    reason: str


@dataclass
class _Template:
    """The most complete map so far: its Σ I, its footprint (valid pixels dilated by one) and place."""

    image: npt.NDArray[np.float64]
    valid: int
    footprint: npt.NDArray[np.float64]
    position: MapPosition


def valid_pixels(image: npt.NDArray[np.float64], mask: npt.ArrayLike | None) -> npt.NDArray[np.bool_]:
    """The map's valid pixels: its mask (1 = valid), else where it has finite positive Σ I."""
    seen = np.isfinite(image) & (image > 0)
    if mask is None:
        return seen
    valid = np.asarray(mask).astype(bool)
    if valid.shape != image.shape:
        raise ConfigError(f"drift tracker: mask of shape {valid.shape} for a map of shape {image.shape}")
    return valid & seen


@dataclass(frozen=True)
class Recentre:
    """A proposed region shift (x, y) µm from the run's grid, and why."""

    offset_um: XY
    reason: str
    limited: bool


def fit_on_valid(image: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], template: npt.NDArray[np.float64],
                 start: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Displacement (dy, dx) map px that best puts `template` under `image` on the image's valid
    pixels only: least absolute differences of the counts, the template scaled to the pixels
    that have not faded (the upper quartile of image / template, within 0.5-1.5), from `start`
    (Nelder-Mead).

    Why: a fading map is the template with pixels gone (transformed, out of the detector
    window) or dimmed (the phase front passed during the map); the brightest pixels left keep
    their counts. Cross-correlation pulls what is left towards the template's bright middle;
    comparing counts only where the map still sees the particle does not. Measured on the
    simulator's fading maps (one-phase window, a third or more of the particle left): median
    error 0.04 map px, worst 0.84 (cross-correlation: 0.14, worst 2.3); on a demo run's maps
    worst 0.87 px (cross-correlation 0.36)."""
    from scipy import optimize      # scipy.optimize: ~0.2 s to import, only when registering

    def cost(shift: npt.NDArray[np.float64]) -> float:
        under = resample(template, -shift)[valid]
        seen = image[valid]
        scale = float(np.quantile(seen / np.maximum(under, 1e-9 * seen.max()), UNFADED_QUANTILE)) if under.max() > 0 else 1.0
        return float(np.abs(seen - min(max(scale, 0.5), 1.5) * under).sum())
    first = np.asarray(start, dtype=np.float64)
    simplex = np.array([first, first + (0.5, 0.0), first + (0.0, 0.5)])
    found = optimize.minimize(cost, first, method="Nelder-Mead",
                              options={"initial_simplex": simplex, "xatol": 0.01, "fatol": 1e-9, "maxiter": 400})
    return np.asarray(found.x, dtype=np.float64)


class DriftTracker:
    """The particle's drift over one run's maps (see the module docstring).

    Parameters
    ----------
    step_um : the map grid's step (start document ``map_step_um``).
    max_step_um : largest move of the region per proposal.
    predict : extrapolate the creep (a line through the last `HISTORY` positions), and refuse a
        position far off it (`gate_px` map pixels).
    """

    def __init__(self, step_um: float, max_step_um: float, predict: bool = True, min_move_px: float = 0.25,
                 gate_px: float = GATE_PX) -> None:
        if not (math.isfinite(step_um) and step_um > 0):
            raise ConfigError(f"drift tracker: map step {step_um!r} µm must be > 0")
        if not (math.isfinite(max_step_um) and max_step_um > 0):
            raise ConfigError(f"re-centring step limit {max_step_um!r} µm per map: must be > 0")
        self.step_um, self.max_step_um, self.predict = float(step_um), float(max_step_um), predict
        self.min_move_um = float(min_move_px) * self.step_um
        self.gate_px = float(gate_px)
        self.positions: list[MapPosition] = []
        self.refused: list[Refused] = []
        self.last_map = -1                  # the last map given to `add`, used or not
        self._template: _Template | None = None

    def add(self, map_number: int, intensity: npt.ArrayLike, offset_um: XY,
            mask: npt.ArrayLike | None = None) -> MapPosition | Refused | None:
        """Register one final map (`mask`: its valid pixels, 1 = valid; default: Σ I > 0).

        Returns its position, `Refused` when its registration is not trusted, or None when it
        holds no intensity to register (it is skipped)."""
        image = np.asarray(intensity, dtype=np.float64)
        self.last_map = max(self.last_map, int(map_number))
        valid = valid_pixels(image, mask)
        if not valid.any() or not has_intensity(np.where(valid, image, 0.0)):
            return None
        image = np.where(valid, image, 0.0)
        offset = (float(offset_um[0]), float(offset_um[1]))
        template = self._template
        count = int(valid.sum())
        if template is None:
            found = MapPosition(int(map_number), offset, (0.0, 0.0))
        else:
            if count < MIN_VALID_SHARE * template.valid:
                return self._refuse(map_number, f"{count} valid pixels left of the {template.valid} of map "
                                                f"{template.position.map_number} (the imaged reflection has faded; "
                                                f"too little to register)")
            shift = fit_on_valid(image, valid, template.image, register([image], template.image, pad=True)[0])
            dy, dx = float(shift[0]), float(shift[1])        # the pattern's displacement, map pixels
            on = float((resample(template.footprint, -shift) > 0.5)[valid].mean())
            if on < MIN_ON_FOOTPRINT:
                return self._refuse(map_number, f"registered ({dx:+.2f}, {dy:+.2f}) px against map "
                                                f"{template.position.map_number}, {1 - on:.0%} of its {count} valid "
                                                f"pixels fall off the particle's footprint")
            base = template.position
            particle = (base.particle_um[0] + offset[0] - base.offset_um[0] + dx * self.step_um,
                        base.particle_um[1] + offset[1] - base.offset_um[1] + dy * self.step_um)
            off_course = self._off_course_px(int(map_number), particle)
            if off_course is not None:
                return self._refuse(map_number, f"it puts the particle at ({particle[0]:+.2f}, {particle[1]:+.2f}) "
                                                f"µm, {off_course:.1f} map px from where the creep of maps "
                                                f"{self.positions[-HISTORY:][0].map_number}-{self.positions[-1].map_number} "
                                                f"leads (a map across a change of the imaged phase?)")
            found = MapPosition(int(map_number), offset, particle, (dy, dx), base.map_number)
        self.positions.append(found)
        if template is None or count >= TEMPLATE_SHARE * template.valid:
            from scipy import ndimage
            footprint = ndimage.binary_dilation(valid).astype(np.float64)
            self._template = _Template(image, count, footprint, found)
        return found

    def _refuse(self, map_number: int, why: str) -> Refused:
        refused = Refused(int(map_number), f"map {map_number} not used for re-centring: {why}")
        self.refused.append(refused)
        return refused

    def _off_course_px(self, map_number: int, particle: XY) -> float | None:
        """How far (map px) `particle` lies from the creep predicted for `map_number`, when beyond
        the gate and the map before was used; else None."""
        after_refusal = bool(self.refused) and self.refused[-1].map_number > self.positions[-1].map_number
        if not self.predict or len(self.positions) < 2 or after_refusal:
            return None
        ahead = self.predicted_um(map_number - self.positions[-1].map_number)
        if ahead is None:
            return None
        off = math.hypot(particle[0] - ahead[0], particle[1] - ahead[1]) / self.step_um
        return off if off > self.gate_px else None

    def predicted_um(self, maps_ahead: int = 1) -> XY | None:
        """Where the particle will be `maps_ahead` maps after the last one registered, (x, y) µm
        relative to the first map."""
        if not self.positions:
            return None
        last = self.positions[-1]
        if not self.predict or len(self.positions) < 2:
            return last.particle_um
        recent = self.positions[-HISTORY:]       # a straight line through them: one bad position bends it less
        numbers = np.array([p.map_number for p in recent], dtype=np.float64)
        xy = np.array([p.particle_um for p in recent], dtype=np.float64)
        slope, intercept = np.polyfit(numbers, xy, 1)
        at = last.map_number + max(1, maps_ahead)
        return (float(intercept[0] + slope[0] * at), float(intercept[1] + slope[1] * at))

    def proposal(self, current_offset_um: XY, next_map: int | None = None) -> Recentre | None:
        """The region shift that puts the particle back on its first map's pixels for map
        `next_map` (default: the one after the last given to `add`, used or not; later when maps are taken back to
        back and the next has begun), from `current_offset_um` (the shift in force) by at most
        `max_step_um`; None: no move needed."""
        if not self.positions:
            return None
        next_map = self.last_map + 1 if next_map is None else next_map
        maps_ahead = max(1, next_map - self.positions[-1].map_number)
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
                  f"against map {last.template})"
                  + (f", expected at ({ahead[0]:+.2f}, {ahead[1]:+.2f}) µm by map {last.map_number + maps_ahead}"
                     if self.predict else "")
                  + f"; region shifted to ({offset[0]:+.2f}, {offset[1]:+.2f}) µm"
                  + (f" (step limited to {self.max_step_um:g} µm)" if limited else ""))
        return Recentre(offset, reason, limited)
