"""The smooth level of per-eta-scan sums: each image without its compact bright outliers (powder spots),
following the particle's broad peak; what `powder_spots` measures a spot's excess against, and the
particle's local shape it fills a spot with.

The level is taken on 2 x 2 binned pixels (smooth on a spot's scale anyway) and brought back bilinearly.
A map's scans are levelled as one stack (n_scans, rows, cols), one scipy call per filter with a zero sigma
(and a one-image footprint) along the scans: scipy skips that axis, so each image gets what it would
alone; one call per image cost ~2 ms, most of it the calls' overhead (a bench map's search 0.1 s).
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

SMOOTH_SIGMA = 6.0      # px: the Gaussian of the smooth image (spots are sigma 1-3 px, the summed peak tens)
OPENING = 6             # px: a grey opening with a disc of this radius removes a spot (sigma <= 3 px), keeps a broad peak


def binned_level(image: F64, good: npt.NDArray[np.bool_], opened_only: bool = False) -> F64:
    """`smooth_level` taken on 2 x 2 binned pixels and brought back bilinearly: the level is smooth on
    a spot's scale anyway, and the opening costs a sixteenth (a map's scans in ~0.1 s, not seconds).

    ``image`` one image (rows, cols) or a stack of them (n, rows, cols), each levelled on its own (one
    scipy call per filter for the stack: per image, the calls' overhead was most of the time); ``good``
    (rows, cols) for every image or one per image (n, rows, cols)."""
    rows, cols = image.shape[-2:]
    pr, pc = rows % 2, cols % 2
    lead = ((0, 0),) * (image.ndim - 2)
    padded = np.where(good, image, 0.0)
    weight = good.astype(np.float64)
    if pr or pc:
        padded = np.pad(padded, (*lead, (0, pr), (0, pc)), mode="edge")
        weight = np.pad(weight, (*((0, 0),) * (good.ndim - 2), (0, pr), (0, pc)), mode="edge")
    summed = _binned(padded)
    counted = _binned(weight)
    binned = smooth_level(summed / np.maximum(counted, 1.0), counted > 0, SMOOTH_SIGMA / 2, scale=4.0, radius=OPENING // 2,
                          opened_only=opened_only)
    return _upsampled(binned, rows, cols)


def _binned(image: F64) -> F64:
    """The sums of 2 x 2 pixels of (..., 2 R, 2 C) images (strided adds: a reshaped sum over two axes took 9x longer)."""
    return (image[..., 0::2, 0::2] + image[..., 0::2, 1::2]) + (image[..., 1::2, 0::2] + image[..., 1::2, 1::2])  # type: ignore[no-any-return]


def _upsampled(binned: F64, rows: int, cols: int) -> F64:
    """(n, R, C) images brought back to (n, rows, cols) bilinearly, pixel i at binned coordinate (i - 0.5) / 2
    clipped to the ends (what scipy `map_coordinates` order 1, mode nearest reads, there 2 ms an image)."""
    stack = np.ascontiguousarray(binned.reshape(-1, *binned.shape[-2:]))
    out = _bilinear_up(stack, _linear_at(rows, stack.shape[1]), _linear_at(cols, stack.shape[2]))
    return out.reshape(*binned.shape[:-2], rows, cols)  # type: ignore[no-any-return]


def _linear_at(size: int, n: int) -> tuple[I64, I64, F64]:
    """(lower index, upper index, weight of the upper) of each of `size` pixels read from `n` binned ones."""
    at = np.clip((np.arange(size) - 0.5) / 2.0, 0, n - 1)
    low = np.floor(at).astype(np.int64)
    return low, np.minimum(low + 1, n - 1), at - low


@numba.njit(cache=True, nogil=True)
def _bilinear_up(binned, row_at, col_at):  # type: ignore[no-untyped-def]
    """Linear along rows, then along columns, (n, R, C) -> (n, len(row_at[0]), len(col_at[0]))."""
    r_low, r_high, r_frac = row_at
    c_low, c_high, c_frac = col_at
    out = np.empty((binned.shape[0], r_low.size, c_low.size))
    for k in range(binned.shape[0]):
        for i in range(r_low.size):
            lo = binned[k, r_low[i]]
            hi = binned[k, r_high[i]]
            f = r_frac[i]
            for j in range(c_low.size):
                g = c_frac[j]
                left = lo[c_low[j]] * (1.0 - f) + hi[c_low[j]] * f
                right = lo[c_high[j]] * (1.0 - f) + hi[c_high[j]] * f
                out[k, i, j] = left * (1.0 - g) + right * g
    return out


def smooth_level(image: F64, good: npt.NDArray[np.bool_] | None = None, sigma: float = SMOOTH_SIGMA,
                 scale: float = 1.0, radius: int = OPENING, opened_only: bool = False) -> F64:
    """The image without its compact bright outliers, following a broad peak: the larger of a
    Gaussian smoothing with outliers (3 Poisson sigmas above it) clipped twice (right on a flat
    level, low on a bright broad peak's top) and a grey opening wider than a spot of the lightly
    smoothed image (right on a broad peak, low in noise: its minimum filter). Pixels not `good`
    (masked: chip gaps, dead) are left out of the smoothing, not read as zeros. `scale` counts per
    value (4 for 2 x 2 binned means: Poisson sigmas are taken in counts), `radius` the opening's disc.

    A stack of images (n, rows, cols) is filtered image by image (zero sigma and a one-image footprint
    along its first axis: scipy skips that axis), `good` shared (rows, cols) or one per image."""
    from scipy import ndimage   # here, not at the top: its 0.17 s import was paid by every process that imports the accumulator
    good = np.ones(image.shape[-2:], dtype=bool) if good is None else good

    def planes(array: npt.NDArray[Any], s: float) -> tuple[float, ...]:
        return (0.0,) * (array.ndim - 2) + (s, s)

    weight = ndimage.gaussian_filter(good.astype(np.float64), planes(good, sigma), mode="nearest")

    def smoothed(values: F64) -> F64:
        return ndimage.gaussian_filter(np.where(good, values, 0.0), planes(values, sigma), mode="nearest") / \
            np.maximum(weight, 1e-3)

    level = smoothed(image)
    for _ in range(2):
        level = smoothed(np.minimum(image, level + 3.0 * np.sqrt((level + 1.0) / scale)))
    filled = np.where(good, image, level)          # masked pixels read as the level around them
    disc = np.hypot(*np.indices((2 * radius + 1, 2 * radius + 1)) - radius) <= radius
    opened = ndimage.grey_opening(ndimage.gaussian_filter(filled, planes(filled, sigma / 6.0), mode="nearest"),
                                  footprint=disc.reshape((1,) * (filled.ndim - 2) + disc.shape))
    opened = ndimage.gaussian_filter(opened, planes(opened, sigma / 3.0), mode="nearest")
    return opened if opened_only else np.maximum(level, opened)  # type: ignore[no-any-return]
