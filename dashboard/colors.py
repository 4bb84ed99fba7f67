"""Colour mappings for the tilt map, kept as pure numpy so they are testable without Bokeh.

The tilt of a map pixel has two angles (SCIENCE.md §3): the azimuth (direction, [0, 360) deg)
and the altitude (how far, deg). A colour wheel shows both at once: hue = azimuth / 360,
saturation = altitude / max_altitude (clipped to 1), value = 1. Untilted pixels are white,
strongly tilted pixels are fully saturated; masked pixels get a neutral grey that no tilt can
produce (a tilt colour always has value 1, the grey has value < 1).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from opmon.errors import OpmonError
from opmon.processors import colorwheel  # one colour rule and one legend for figures and dashboard
from opmon.processors.colorwheel import MASKED_RGB, auto_max_altitude, hsv_to_rgb

__all__ = ["ColorMapError", "pack_rgba", "tilt_to_rgb", "tilt_to_rgba", "wheel_legend"]


class ColorMapError(OpmonError):
    """A colour mapping got arrays of mismatched shapes or an invalid maximum."""


def tilt_to_rgb(
    altitude: npt.ArrayLike,
    azimuth: npt.ArrayLike,
    max_altitude: float | None = None,
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Colour-wheel RGB (uint8, shape (..., 3)) of a tilt map.

    Parameters
    ----------
    altitude, azimuth
        Tilt angles in deg, same shape; NaN marks an invalid pixel.
    max_altitude
        Altitude (deg) that gets full saturation; None uses the 99th percentile of the map.
    mask
        Optional array of the same shape, nonzero = valid (FORMATS.md `mask`).

    Raises
    ------
    ColorMapError
        If the shapes differ or `max_altitude` is not a positive finite number.
    """
    alt = np.asarray(altitude, dtype=np.float64)
    azi = np.asarray(azimuth, dtype=np.float64)
    if alt.shape != azi.shape:
        raise ColorMapError(f"tilt_altitude shape {alt.shape} differs from tilt_azimuth shape {azi.shape}")
    if max_altitude is None:
        max_altitude = auto_max_altitude(alt)
    if not np.isfinite(max_altitude) or max_altitude <= 0:
        raise ColorMapError(f"max_altitude must be a positive number of degrees, got {max_altitude!r}")
    invalid = ~(np.isfinite(alt) & np.isfinite(azi))
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != alt.shape:
            raise ColorMapError(f"mask shape {m.shape} differs from tilt map shape {alt.shape}")
        invalid |= m == 0
    hue = np.where(invalid, 0.0, azi) / 360.0
    sat = np.where(invalid, 0.0, np.abs(alt)) / max_altitude
    rgb = np.rint(hsv_to_rgb(hue, sat, 1.0) * 255.0).astype(np.uint8)
    rgb[invalid] = MASKED_RGB
    return rgb


def pack_rgba(rgb: npt.NDArray[np.uint8], alpha: int = 255) -> npt.NDArray[np.uint32]:
    """Pack (..., 3) uint8 RGB into the uint32 RGBA layout Bokeh's `image_rgba` expects."""
    h = np.empty(rgb.shape[:-1] + (4,), dtype=np.uint8)
    h[..., :3] = rgb
    h[..., 3] = alpha
    return h.view(np.uint32).reshape(rgb.shape[:-1])


def tilt_to_rgba(
    altitude: npt.ArrayLike,
    azimuth: npt.ArrayLike,
    max_altitude: float | None = None,
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint32]:
    """`tilt_to_rgb` packed for Bokeh's `image_rgba` (one uint32 per pixel)."""
    return pack_rgba(tilt_to_rgb(altitude, azimuth, max_altitude, mask))


def wheel_legend(size: int = 101) -> npt.NDArray[np.uint32]:
    """The colour-wheel legend of `opmon.processors.colorwheel` (the one the PNG figure shows),
    packed for Bokeh: row 0 at the bottom as Bokeh draws images, transparent outside the disc."""
    if size < 3:
        raise ColorMapError(f"wheel legend size must be >= 3 pixels, got {size}")
    rgba = np.rint(colorwheel.wheel_legend(size) * 255.0).astype(np.uint8)
    out = pack_rgba(rgba[..., :3])
    out[rgba[..., 3] == 0] = 0
    return out
