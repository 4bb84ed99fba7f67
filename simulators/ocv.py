"""Open-circuit voltage curves of the cathodes in SCIENCE.md §4, so the simulated cell has plateaus.

Each curve is a table of (x in Li_x, volts) knots joined by a monotone cubic (Fritsch-Carlson),
so the voltage never wiggles between knots and plateaus stay flat where the table says so.
x = 1 is the lithiated (discharged) state; charging removes lithium and lowers x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError


def _pchip_slopes(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    h = np.diff(x)
    delta = np.diff(y) / h
    m = np.zeros_like(y)
    m[0], m[-1] = delta[0], delta[-1]
    for k in range(1, len(x) - 1):
        if delta[k - 1] * delta[k] <= 0:
            m[k] = 0.0
        else:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            m[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
    return m


@dataclass(frozen=True)
class OcvCurve:
    """Monotone OCV(x) of one cathode material.

    Parameters
    ----------
    name : short material name used in configuration ("lmno", "lmo", "lco").
    x, volts : knots, x strictly increasing in [0, 1]; volts non-increasing in x (V).
    specific_capacity_mah_g : capacity for x from 1 to 0 (mAh per gram of active material).
    plateaus : nominal plateau voltages (V) the material is known for, for display and tests.
    """

    name: str
    x: tuple[float, ...]
    volts: tuple[float, ...]
    specific_capacity_mah_g: float
    plateaus: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        xs, vs = np.asarray(self.x), np.asarray(self.volts)
        if xs.shape != vs.shape or xs.size < 2 or np.any(np.diff(xs) <= 0):
            raise ConfigError(f"OCV curve {self.name!r}: knots x must be strictly increasing and match volts")
        if np.any(np.diff(vs) > 0):
            raise ConfigError(f"OCV curve {self.name!r}: volts must not increase with lithium content x")
        object.__setattr__(self, "_slopes", _pchip_slopes(xs.astype(float), vs.astype(float)))

    def _segment(self, x: float) -> tuple[int, float, float]:
        xs = self.x
        xc = min(max(x, xs[0]), xs[-1])
        k = int(np.searchsorted(xs, xc, side="right")) - 1
        k = min(max(k, 0), len(xs) - 2)
        h = xs[k + 1] - xs[k]
        return k, (xc - xs[k]) / h, h

    def voltage(self, x: float) -> float:
        """OCV at lithium content x (V); x is clamped to the table range."""
        k, t, h = self._segment(x)
        m = self._slopes  # type: ignore[attr-defined]
        y0, y1 = self.volts[k], self.volts[k + 1]
        t2, t3 = t * t, t * t * t
        return float((2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * h * m[k]
                     + (-2 * t3 + 3 * t2) * y1 + (t3 - t2) * h * m[k + 1])

    def slope(self, x: float) -> float:
        """dOCV/dx at x (V per unit x); negative or zero (zero outside the table, where V is clamped)."""
        if not self.x[0] <= x <= self.x[-1]:
            return 0.0
        k, t, h = self._segment(x)
        m = self._slopes  # type: ignore[attr-defined]
        y0, y1 = self.volts[k], self.volts[k + 1]
        t2 = t * t
        return float(((6 * t2 - 6 * t) * y0 + (3 * t2 - 4 * t + 1) * h * m[k]
                      + (-6 * t2 + 6 * t) * y1 + (3 * t2 - 2 * t) * h * m[k + 1]) / h)

    def curve(self, n: int = 501) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(x, V) sampled on n points from x=1 down to x=0, for plots and tests."""
        xs = np.linspace(1.0, 0.0, n)
        return xs, np.array([self.voltage(float(v)) for v in xs])


# LiNi0.5Mn1.5O4 (seed 000): OCV 4.05 V, sloping region below 4.6 V, Ni2+/3+ plateau at 4.70 V
# (Li1 -> Li0.5), Ni3+/4+ plateau at 4.75 V (Li0.5 -> Li0), then a steep rise past 4.85 V.
LMNO = OcvCurve(
    name="lmno",
    x=(0.0, 0.015, 0.035, 0.06, 0.44, 0.475, 0.5, 0.525, 0.56, 0.90, 0.925, 0.94, 0.96, 0.98, 1.0),
    volts=(5.00, 4.86, 4.77, 4.753, 4.747, 4.742, 4.725, 4.708, 4.703, 4.697, 4.68, 4.60, 4.42, 4.22, 4.05),
    specific_capacity_mah_g=147.0,
    plateaus=(4.70, 4.75),
)

# LiMn2O4 (seed 003): two plateaus near 4.0 and 4.15 V.
LMO = OcvCurve(
    name="lmo",
    x=(0.0, 0.03, 0.08, 0.42, 0.47, 0.5, 0.53, 0.58, 0.9, 0.95, 1.0),
    volts=(4.40, 4.22, 4.155, 4.145, 4.13, 4.08, 4.03, 4.005, 3.995, 3.96, 3.80),
    specific_capacity_mah_g=148.0,
    plateaus=(4.0, 4.15),
)

# LiCoO2 (seed 001, charged by potentiostatic steps 2.5/3/3.5/4 V): a steep start, the 3.93 V
# plateau, then the order-disorder region above 4.05 V; x below 0.45 is not cycled.
LCO = OcvCurve(
    name="lco",
    x=(0.3, 0.45, 0.5, 0.55, 0.75, 0.93, 0.96, 0.98, 1.0),
    volts=(4.45, 4.20, 4.12, 4.07, 3.94, 3.92, 3.85, 3.60, 3.00),
    specific_capacity_mah_g=274.0,
    plateaus=(3.93,),
)

MATERIALS: dict[str, OcvCurve] = {c.name: c for c in (LMNO, LMO, LCO)}


def material(name: str) -> OcvCurve:
    """Look up an OCV curve by name; raises ConfigError naming the unknown material."""
    try:
        return MATERIALS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown cathode material {name!r}; known: {sorted(MATERIALS)}") from None
