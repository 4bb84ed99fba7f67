"""Phase tracking from the live maps: notice the imaged reflection fading, find the next one.

The detector sees one phase's reflection at a time (seed 000, Supplementary Fig. 10): as that
phase transforms, the integrated intensity per map falls while the new phase's reflection
grows at its own Bragg angles, outside the rocking scan and the detector window. `FadingRule`
says when the imaged reflection has faded (Σ I below a fraction of its running maximum for N
maps in a row); `bright_points` picks where to survey (the thickest parts of the crystal, from
the brightest map seen); `locate_reflection` finds the reflection in the survey's Σ I table.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError


@dataclass
class FadingRule:
    """Σ I per map below `fraction` of its running maximum for `maps` maps in a row = faded.

    Fires once, then starts afresh (`reset`): the maximum of the next phase is its own.
    """

    fraction: float = 0.3
    maps: int = 2
    maximum: float = 0.0
    below: int = 0
    brightest: npt.NDArray[np.float64] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"fading fraction {self.fraction!r}: must lie in (0, 1)")
        if int(self.maps) < 1:
            raise ConfigError(f"fading maps {self.maps!r}: must be >= 1")

    def update(self, number: int, intensity: npt.ArrayLike) -> str | None:
        """Feed one final map's intensity map; returns the reason when the reflection has faded."""
        image = np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0)
        total = float(image.sum())
        if total >= self.maximum:
            self.maximum, self.brightest = total, image
        if self.maximum > 0 and total < self.fraction * self.maximum:
            self.below += 1
        else:
            self.below = 0
        if self.below < self.maps:
            return None
        reason = (f"imaged reflection faded: map {number} ΣI {total:.3g} < {self.fraction:g} x its maximum "
                  f"{self.maximum:.3g} for {self.below} maps")
        return reason

    def reset(self) -> None:
        """Forget the maximum (the next reflection is measured against its own)."""
        self.maximum, self.below, self.brightest = 0.0, 0, None


def bright_points(intensity: npt.ArrayLike, n: int = 4) -> list[int]:
    """Row-major indices of the `n` brightest map pixels (where the crystal is thickest)."""
    image = np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0).ravel()
    order = np.argsort(image)[::-1][:max(int(n), 1)]
    return [int(i) for i in order if image[i] > 0] or [int(order[0])]


@dataclass(frozen=True)
class Reflection:
    """Where a survey found a reflection: the candidate d, detector angle, rocking angle, counts."""

    d_angstrom: float
    delta: float
    eta: float
    counts: float
    background: float

    def as_dict(self) -> dict[str, Any]:
        return {"d_angstrom": self.d_angstrom, "delta": self.delta, "eta": self.eta, "counts": self.counts,
                "background": self.background}


def locate_reflection(rows: Sequence[dict[str, float]], min_sigma: float = 5.0,
                      min_counts: float = 50.0) -> Reflection | None:
    """The brightest reflection of a survey, or None if no candidate shows one above noise.

    `rows`: one per (candidate d, delta, eta) with ``total`` = Σ I over the surveyed points.
    Per candidate, the background is the median of its totals; the peak is the eta whose
    excess is largest and beyond `min_sigma` Poisson sigmas and `min_counts`; its eta is the
    centroid of the excess over the peak step and its two neighbours.
    """
    best: Reflection | None = None
    for d in sorted({float(r["d"]) for r in rows}):
        scan = sorted((r for r in rows if float(r["d"]) == d), key=lambda r: float(r["eta"]))
        etas = np.array([float(r["eta"]) for r in scan])
        totals = np.array([float(r["total"]) for r in scan])
        background = float(np.median(totals))
        excess = totals - background
        k = int(np.argmax(excess))
        if excess[k] < max(min_counts, min_sigma * np.sqrt(background + 1.0)):
            continue
        near = slice(max(k - 1, 0), k + 2)
        weights = np.clip(excess[near], 0.0, None)
        eta = float(np.sum(weights * etas[near]) / np.sum(weights))
        found = Reflection(d, float(scan[k]["delta"]), eta, float(excess[k]), background)
        if best is None or found.counts > best.counts:
            best = found
    return best
