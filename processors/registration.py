"""Sub-pixel shifts between intensity maps, by cross-correlation (scikit-image).

One job: how far the pattern of each image has moved against a reference, in pixels, to a
fraction of a pixel. Used for maps to maps (the sample stage drifting between maps,
`opmon.processors.drift_tracker`) and fit for the eta scans of one map.

scikit-image's `phase_cross_correlation` does the work (Guizar-Sicairos' upsampled DFT, the
method XSOCS and most beamline tools use). Two choices are opmon's:

* images are zero-padded to twice their size first: a map is small (8-60 pixels a side) and
  the particle fills most of it, so the FFT's wrap-around would otherwise correlate the
  particle's edge with the opposite edge;
* plain cross-correlation (``normalization=None``), not phase correlation: an intensity map is
  a smooth blob with Poisson noise, whose phase spectrum is mostly noise at high frequencies.

NaN (masked) pixels count as no intensity, as do negative values left by background
subtraction.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from skimage.registration import phase_cross_correlation

from opmon.errors import ConfigError

F64 = npt.NDArray[np.float64]
UPSAMPLE = 50  # shifts to 1/50 of a pixel


def _prepared(image: npt.ArrayLike, shape: tuple[int, ...] | None, what: str) -> F64:
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise ConfigError(f"registration: {what} has shape {arr.shape}, expected a 2-D image of at least 2 x 2")
    if shape is not None and arr.shape != shape:
        raise ConfigError(f"registration: {what} has shape {arr.shape}, the reference {shape}")
    arr = np.where(np.isfinite(arr) & (arr > 0), arr, 0.0)
    padded = np.zeros((2 * arr.shape[0], 2 * arr.shape[1]))
    padded[: arr.shape[0], : arr.shape[1]] = arr
    return padded


def register(images: Sequence[npt.ArrayLike] | npt.ArrayLike, reference: npt.ArrayLike) -> F64:
    """The shift (dy, dx) in pixels that registers each image onto `reference`.

    Same convention as `skimage.registration.phase_cross_correlation`: moving image i by
    ``shifts[i]`` lines it up with the reference, so its pattern sits at ``-shifts[i]`` from the
    reference's. An image with no intensity at all gives NaN (nothing to register).

    Parameters
    ----------
    images : (n, ny, nx) array or sequence of (ny, nx) images.
    reference : (ny, nx) image.

    Returns
    -------
    (n, 2) float array of (dy, dx) pixels, sub-pixel to 1/`UPSAMPLE`.
    """
    ref = _prepared(reference, None, "the reference")
    if not ref.any():
        raise ConfigError("registration: the reference image holds no intensity")
    shape = np.asarray(reference).shape
    stack = [_prepared(img, shape, f"image {i}") for i, img in enumerate(images)]
    shifts = np.full((len(stack), 2), np.nan)
    for i, moving in enumerate(stack):
        if moving.any():
            shifts[i] = phase_cross_correlation(ref, moving, upsample_factor=UPSAMPLE, normalization=None)[0]
    return shifts
