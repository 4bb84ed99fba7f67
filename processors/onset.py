"""Flag the onset of a phase transformation from successive final maps of one run.

What the scientists of seed 000 watched for: with the detector on one phase's reflection, a
transforming region stops diffracting into it (the crystal appears to shrink, Supplementary
Fig. 10); with every phase in the window, a second d population or a jump of the peak width
appears. Each test compares the new map with the previous one beyond counting noise, and
needs a spatially connected group of pixels, so the noise of a steady run (Poisson counts,
centre-of-mass scatter of low-count edge pixels) never flags.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F64 = npt.NDArray[np.float64]

#: standard deviations a change must exceed (counting noise or the map's robust d scatter)
SIGMAS = 6.0
#: pixels a changed region needs (connected, 8-neighbours), and its least share of the valid pixels
MIN_REGION_PIXELS = 3
MIN_REGION_FRACTION = 0.01
#: a fading pixel keeps at most this share of its intensity (beyond the map's common change)
FADE_KEEPS = 0.7
#: a pixel counts as diffracting with this many counts and this share of the map's brightest
MIN_COUNTS = 100.0
MIN_SHARE = 0.01
#: a second d population sits at least this far from the map's median (Å), and SIGMAS robust σ
MIN_D_SEPARATION = 2e-4


@dataclass(frozen=True)
class Onset:
    """A transformation flagged in map `map_number`: which test saw it, where, and how much."""

    map_number: int
    kind: str                     # "fading region", "second d population"
    pixels: int                   # pixels of the largest changed region
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"map": self.map_number, "kind": self.kind, "pixels": self.pixels, "reason": self.reason}


@dataclass
class OnsetDetector:
    """Feed each final map of a run in order; `update` returns an `Onset` when one is flagged.

    After a flag the detector keeps quiet for `cooldown_maps` maps (a front keeps moving; one
    flag per onset is what the user and a denser-mapping rule need).
    """

    cooldown_maps: int = 3
    flags: list[Onset] = field(default_factory=list)
    _reference: tuple[F64, npt.NDArray[np.bool_]] | None = None
    _quiet_until: int = -1

    def update(self, map_number: int, intensity: npt.ArrayLike, d_spacing: npt.ArrayLike,
               mask: npt.ArrayLike) -> Onset | None:
        """Compare map `map_number` (its Σ I, d and validity mask) with the reference: each pixel's
        brightest intensity since the last flag (a front that advances a pixel per map still
        adds up to a region), scaled by the maps' common change."""
        now = np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0)
        valid = np.asarray(mask).astype(bool)
        d = np.asarray(d_spacing, dtype=np.float64)
        reference = self._reference
        if reference is None or reference[0].shape != now.shape:
            self._reference = (now, valid)
            reference = None
        else:
            self._reference = (np.maximum(reference[0], now), reference[1] | valid)
        if map_number <= self._quiet_until:
            return None
        found = _fading_region(map_number, reference[0], reference[1], now) if reference is not None else None
        found = found or _second_population(map_number, d, valid)
        if found is not None:
            self.flags.append(found)
            self._quiet_until = map_number + self.cooldown_maps
            self._reference = (now, valid)          # the next onset is measured from here
        return found


def _largest_region(changed: npt.NDArray[np.bool_]) -> int:
    labels, n = ndimage.label(changed, structure=np.ones((3, 3), dtype=bool))
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _fading_region(number: int, before: F64, was_valid: npt.NDArray[np.bool_], now: F64) -> Onset | None:
    """Pixels that diffracted measurably and kept ≤ FADE_KEEPS of their intensity, beyond Poisson
    noise and the map's common change (a beam or flux change scales every pixel alike).

    Not only the masked-valid pixels: a transformation nucleates at the surface, where the
    crystal is thin and its pixels sit below the 20 % mask.
    """
    if was_valid.sum() < MIN_REGION_PIXELS:
        return None
    common = float(np.median(now[was_valid] / np.maximum(before[was_valid], 1.0)))
    expected = before * common
    noise = np.sqrt(np.maximum(expected, 1.0) + np.maximum(now, 1.0))
    measured = expected > max(MIN_COUNTS, MIN_SHARE * float(expected.max()))
    fading = measured & (now < FADE_KEEPS * expected) & (expected - now > SIGMAS * noise)
    region = _largest_region(fading)
    if region >= max(MIN_REGION_PIXELS, MIN_REGION_FRACTION * measured.sum()):
        lost = 1.0 - float(now[fading].sum() / max(expected[fading].sum(), 1.0))
        return Onset(number, "fading region", region,
                     f"{region} connected pixels lost {lost:.0%} of their intensity")
    return None


def _second_population(number: int, d: F64, valid: npt.NDArray[np.bool_]) -> Onset | None:
    """A connected group of valid pixels whose d sits far from the map's median, beyond its
    robust scatter: a second phase within the detector window."""
    values = d[valid & np.isfinite(d)]
    if values.size < 4 * MIN_REGION_PIXELS:
        return None
    median = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - median)))
    apart = valid & np.isfinite(d) & (np.abs(d - median) > max(SIGMAS * sigma, MIN_D_SEPARATION))
    region = _largest_region(apart)
    if region >= max(MIN_REGION_PIXELS, MIN_REGION_FRACTION * values.size):
        other = float(np.median(d[apart]))
        return Onset(number, "second d population", region,
                     f"{region} connected pixels at d = {other:.4f} Å beside the map's {median:.4f} Å")
    return None
