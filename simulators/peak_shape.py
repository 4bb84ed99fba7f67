"""Shape of the 3-D Bragg peak: compact isotropic Gaussian, or a focused beam's broad one.

A Fresnel-zone-plate focus spreads the peak by its convergence: broad (tens of detector
pixels) and anisotropic, so the peak's covariance is ``σ_p² S`` with ``S = R diag(w²) Rᵀ``
a fixed 3-D shape (principal widths ``widths`` in units of the pixel's σ_p, axes rotated by
``angles_deg`` about z then y then x of the sample frame). The zone plate's central stop
removes the middle of the convergence cone: with ``hole`` > 0 the profile is
``exp(−m²/2) − hole · exp(−m²/(2 c²))`` (m the Mahalanobis radius, c = ``hole_size``),
a ring-like peak with a dip in its centre that keeps the centre of mass where it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _rotation(angles_deg: tuple[float, float, float]) -> F64:
    a, b, c = (math.radians(v) for v in angles_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[math.cos(b), 0.0, math.sin(b)], [0.0, 1.0, 0.0], [-math.sin(b), 0.0, math.cos(b)]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(c), -math.sin(c)], [0.0, math.sin(c), math.cos(c)]])
    return rx @ ry @ rz


@dataclass(frozen=True)
class PeakShape:
    """Relative 3-D shape of every pixel's peak (the default is the compact isotropic one)."""

    widths: tuple[float, float, float] = (1.0, 1.0, 1.0)
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hole: float = 0.0  # depth of the central-stop dip, 0 (none) .. 1 (zero at the centre)
    hole_size: float = 0.55  # width of the dip relative to the peak

    def __post_init__(self) -> None:
        if min(self.widths) <= 0 or not 0.0 <= self.hole <= 1.0 or not 0.0 < self.hole_size < 1.0:
            raise ValueError(f"PeakShape {self}: widths > 0, 0 <= hole <= 1, 0 < hole_size < 1")

    @property
    def isotropic(self) -> bool:
        return self.widths == (1.0, 1.0, 1.0) and self.hole == 0.0

    @property
    def matrix(self) -> F64:
        """S (3, 3): the covariance of a pixel's peak is σ_p² S."""
        r = _rotation(self.angles_deg)
        return r @ np.diag(np.square(self.widths)) @ r.T

    @property
    def inverse(self) -> F64:
        return np.linalg.inv(self.matrix)

    @property
    def largest_width(self) -> float:
        return float(max(self.widths))

    @property
    def norm(self) -> float:
        """∫ profile d³q / σ_p³: (2π)^{3/2} · det(S)^{1/2} · (1 − hole · c³)."""
        return (2 * math.pi) ** 1.5 * float(np.prod(self.widths)) * (1.0 - self.hole * self.hole_size ** 3)

    def width_factor(self) -> float:
        """Second-moment radius / σ_p: sqrt(tr S · (1 − hole c⁵) / (1 − hole c³))."""
        c = self.hole_size
        return math.sqrt(float(np.trace(self.matrix)) * (1.0 - self.hole * c ** 5) / (1.0 - self.hole * c ** 3))


COMPACT = PeakShape()
#: a focused beam: ~2.5 × broader along one axis, 1.6 × along another (tens of pixels FWHM)
FOCUSED = PeakShape(widths=(2.5, 1.6, 1.0), angles_deg=(30.0, 20.0, 10.0))
#: the same with the zone plate's central stop
FOCUSED_RING = PeakShape(widths=(2.5, 1.6, 1.0), angles_deg=(30.0, 20.0, 10.0), hole=1.0)
