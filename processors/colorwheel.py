"""Tilt colour wheel: hue = tilt azimuth, saturation = tilt altitude (seed 000, Fig. 2d).

One colour rule, so the PNG figure and the live dashboard colour tilt maps identically
(masked pixels included).
"""
from __future__ import annotations

import matplotlib.colors
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


#: RGB (0-255) of masked / NaN pixels: the light grey (#d0d0d0) of the other maps' NaN colour,
#: distinct from white (zero tilt) because a tilt colour always has value 1.
MASKED_RGB: tuple[int, int, int] = (208, 208, 208)


def hsv_to_rgb(h: npt.ArrayLike, s: npt.ArrayLike, v: npt.ArrayLike) -> F64:
    """Convert HSV (each in [0, 1]; hue wraps, s and v clip) to RGB in [0, 1]; shape (..., 3).

    matplotlib does the conversion; this wraps and clips the three channels first, because
    matplotlib refuses values outside [0, 1] and a hue of 360 deg is 0 deg.
    """
    h = np.mod(np.asarray(h, dtype=np.float64), 1.0)
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    return matplotlib.colors.hsv_to_rgb(np.stack(np.broadcast_arrays(h, s, v), axis=-1))


def auto_max_altitude(altitude: npt.ArrayLike, percentile: float = 99.0) -> float:
    """The altitude that saturates the wheel: a high percentile of the valid pixels.

    A percentile rather than the maximum keeps one hot pixel from washing out the map.
    Returns 1.0 deg when no pixel is valid or all are zero, so the mapping stays defined.
    """
    alt = np.asarray(altitude, dtype=np.float64)
    valid = alt[np.isfinite(alt)]
    if valid.size == 0:
        return 1.0
    value = float(np.percentile(valid, percentile))
    return value if value > 0.0 else 1.0


def tilt_rgb(altitude: F64, azimuth: F64, max_altitude: float | None = None) -> F64:
    """RGB image (..., 3) of a tilt map; NaN pixels get the masked grey `MASKED_RGB`.

    max_altitude (deg) is full saturation; None uses the map's 99th percentile so one
    outlier does not wash out the rest.
    """
    alt = np.asarray(altitude, dtype=np.float64)
    az = np.asarray(azimuth, dtype=np.float64)
    valid = np.isfinite(alt) & np.isfinite(az)
    if max_altitude is None:
        max_altitude = auto_max_altitude(np.where(valid, alt, np.nan))
    max_altitude = max_altitude if max_altitude > 0 else 1.0
    sat = np.clip(np.where(valid, alt, 0.0) / max_altitude, 0.0, 1.0)
    rgb = hsv_to_rgb(np.where(valid, az, 0.0) / 360.0, sat, np.ones_like(sat))
    rgb[~valid] = np.array(MASKED_RGB) / 255.0
    return rgb


def wheel_legend(size: int = 128) -> F64:
    """RGBA image of the colour wheel legend: angle = azimuth, radius = altitude / max."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    radius = np.hypot(x, y)
    azimuth = np.degrees(np.arctan2(y, x)) % 360.0
    rgb = hsv_to_rgb(azimuth / 360.0, np.clip(radius, 0, 1), np.ones_like(radius))
    alpha = (radius <= 1.0).astype(np.float64)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)
