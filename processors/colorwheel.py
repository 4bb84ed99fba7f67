"""Tilt colour wheel: hue = tilt azimuth, saturation = tilt altitude (seed 000, Fig. 2d).

Pure numpy so the PNG figure and the live dashboard colour tilt maps identically.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def hsv_to_rgb(h: npt.ArrayLike, s: npt.ArrayLike, v: npt.ArrayLike) -> F64:
    """Convert HSV (each in [0, 1]; hue wraps, s and v clip) to RGB in [0, 1]; shape (..., 3).

    Local and pure numpy so the dashboard needs no matplotlib at run time.
    """
    h = np.mod(np.asarray(h, dtype=np.float64), 1.0)
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    h, s, v = np.broadcast_arrays(h, s, v)
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


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


def tilt_rgb(altitude: F64, azimuth: F64, max_altitude: float | None = None, background: float = 1.0) -> F64:
    """RGB image (..., 3) of a tilt map; NaN pixels get the `background` grey level.

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
    rgb[~valid] = background
    return rgb


def wheel_legend(size: int = 128) -> F64:
    """RGBA image of the colour wheel legend: angle = azimuth, radius = altitude / max."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    radius = np.hypot(x, y)
    azimuth = np.degrees(np.arctan2(y, x)) % 360.0
    rgb = hsv_to_rgb(azimuth / 360.0, np.clip(radius, 0, 1), np.ones_like(radius))
    alpha = (radius <= 1.0).astype(np.float64)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)
