"""The detector background as a per-pixel image, estimated from the counts outside the ROI.

Real backgrounds are not flat: air scatter and fluorescence make a gradient across the
detector, and a flat rate measured over the whole frame is the wrong level inside the ROI
and has no slope, which moves every centre of mass the same way (the truth harness's
``gradient`` case: 2.9e-4 Å). The background here is a plane in detector pixel coordinates,
b(r, c) = c0 + cu·u + cv·v with u, v in [-1, 1] across the frame, fitted to the per-pixel
counts outside the ROI on the kernel's sampled rows (`accumulate.BACKGROUND_ROW_STRIDE`).
Pixels far above the fit (a powder spot, a hot pixel the mask misses) are clipped and the
fit repeated. Everything the fit needs is an additive sum of the accumulator, so offline,
Dask and both live executors fit the same image from the same frames.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

MIN_PIXELS = 32        # sampled outside pixels a plane needs (fewer: a flat level)
CLIP_SIGMA = 5.0       # a pixel this many Poisson sigmas above the fit is not background
CLIP_ROUNDS = 4


@functools.lru_cache(maxsize=4)
def basis_images(frame_shape: tuple[int, int]) -> F64:
    """(2, rows, cols), read-only: u (rows) and v (columns), each in [-1, 1] across the frame (kept: the
    live coordinator makes an accumulator per partial map)."""
    rows, cols = frame_shape
    u = (2.0 * np.arange(rows) + 1.0) / rows - 1.0
    v = (2.0 * np.arange(cols) + 1.0) / cols - 1.0
    images = np.stack([np.broadcast_to(u[:, None], (rows, cols)), np.broadcast_to(v[None, :], (rows, cols))])
    images.flags.writeable = False
    return images


def sampled_rows(rows: int, stride: int) -> npt.NDArray[np.int64]:
    """The frame rows whose counts outside the ROI the kernel adds to the background image."""
    return np.arange(0, rows, stride, dtype=np.int64)


def outside_pixels(frame_shape: tuple[int, int], roi: tuple[int, int, int, int], mask: npt.NDArray[np.uint8],
                   stride: int) -> npt.NDArray[np.bool_]:
    """(rows // stride + 1, cols) True where the background image holds an unmasked pixel outside the ROI."""
    rows, cols = frame_shape
    r0, r1, c0, c1 = roi
    picked = sampled_rows(rows, stride)
    keep = np.zeros((rows // stride + 1, cols), dtype=bool)
    keep[: picked.size] = mask[picked] == 0
    inside = (picked >= r0) & (picked < r1)
    keep[: picked.size][inside, c0:c1] = False
    return keep


@dataclass(frozen=True)
class Plane:
    """Background counts per pixel per frame: c0 + cu·u + cv·v (u, v of `basis_images`)."""

    c0: float
    cu: float = 0.0
    cv: float = 0.0
    pixels: int = 0          # outside pixels the fit used (after clipping)

    @property
    def basis(self) -> F64:
        """Coefficients of the basis images (u, v)."""
        return np.array([self.cu, self.cv])


def fit_plane(image: F64, keep: npt.NDArray[np.bool_], frame_shape: tuple[int, int], stride: int,
              frames: float) -> Plane | None:
    """Fit the plane to `image` (counts summed over `frames` frames) at the `keep` pixels.

    Least squares, then pixels above fit + CLIP_SIGMA·sqrt(fit) are dropped and the fit
    repeated; None when fewer than MIN_PIXELS outside pixels (or no frames) are there.
    """
    if frames <= 0 or keep.sum() < MIN_PIXELS:
        return None
    rows, cols = frame_shape
    picked = sampled_rows(rows, stride)
    rr, cc = np.nonzero(keep[: picked.size])
    u = (2.0 * picked[rr] + 1.0) / rows - 1.0
    v = (2.0 * cc + 1.0) / cols - 1.0
    y = image[rr, cc] / frames
    design = np.stack([np.ones_like(u), u, v], axis=1)
    use = np.ones(y.size, dtype=bool)
    coef = np.zeros(3)
    for _ in range(CLIP_ROUNDS):
        if use.sum() < MIN_PIXELS:
            return None
        coef = np.linalg.lstsq(design[use], y[use], rcond=None)[0]
        expected = np.clip(design @ coef, 0.0, None) * frames
        keep_now = image[rr, cc] <= expected + CLIP_SIGMA * np.sqrt(expected + 1.0)
        if np.array_equal(keep_now, use):
            break
        use = keep_now
    return Plane(float(coef[0]), float(coef[1]), float(coef[2]), int(use.sum()))
