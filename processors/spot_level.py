"""The smooth level of per-eta-scan sums: each image without its compact bright outliers (powder spots),
following the particle's broad peak; what `powder_spots` measures a spot's excess against, and the
particle's local shape it fills a spot with.

The level is taken on 2 x 2 binned pixels (smooth on a spot's scale anyway) and brought back bilinearly.
A map's scans are levelled as one stack (n_scans, rows, cols), one compiled call per filter
(`image_filters`: scipy.ndimage's arithmetic, bit for bit, without its ~0.15 s import); one scipy call
per image cost ~2 ms, most of it the calls' overhead (a bench map's search 0.1 s).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.processors.image_filters import gaussian_nearest, opening_reflect, upsample_bilinear

F64 = npt.NDArray[np.float64]

SMOOTH_SIGMA = 6.0      # px: the Gaussian of the smooth image (spots are sigma 1-3 px, the summed peak tens)
OPENING = 6             # px: a grey opening with a disc of this radius removes a spot (sigma <= 3 px), keeps a broad peak


def binned_level(image: F64, good: npt.NDArray[np.bool_], opened_only: bool = False) -> F64:
    """`smooth_level` taken on 2 x 2 binned pixels and brought back bilinearly: the level is smooth on
    a spot's scale anyway, and the opening costs a sixteenth (a map's scans in ~0.1 s, not seconds).

    ``image`` one image (rows, cols) or a stack of them (n, rows, cols), each levelled on its own (one
    call per filter for the stack: per image, the calls' overhead was most of the time); ``good``
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
    """(..., R, C) images brought back to (..., rows, cols) bilinearly, pixel i read at binned coordinate (i - 0.5) / 2
    clipped to the ends (what scipy `map_coordinates` order 1, mode nearest reads: `image_filters.upsample_bilinear`)."""
    stack = binned.reshape(-1, *binned.shape[-2:])
    at_rows = np.clip((np.arange(rows) - 0.5) / 2.0, 0, stack.shape[1] - 1)
    at_cols = np.clip((np.arange(cols) - 0.5) / 2.0, 0, stack.shape[2] - 1)
    return upsample_bilinear(stack, at_rows, at_cols).reshape(*binned.shape[:-2], rows, cols)  # type: ignore[no-any-return]


def smooth_level(image: F64, good: npt.NDArray[np.bool_] | None = None, sigma: float = SMOOTH_SIGMA,
                 scale: float = 1.0, radius: int = OPENING, opened_only: bool = False) -> F64:
    """The image without its compact bright outliers, following a broad peak: the larger of a
    Gaussian smoothing with outliers (3 Poisson sigmas above it) clipped twice (right on a flat
    level, low on a bright broad peak's top) and a grey opening wider than a spot of the lightly
    smoothed image (right on a broad peak, low in noise: its minimum filter). Pixels not `good`
    (masked: chip gaps, dead) are left out of the smoothing, not read as zeros. `scale` counts per
    value (4 for 2 x 2 binned means: Poisson sigmas are taken in counts), `radius` the opening's disc.

    A stack of images (n, rows, cols) is filtered image by image (`image_filters` work on stacks), `good`
    shared (rows, cols) or one per image."""
    good = np.ones(image.shape[-2:], dtype=bool) if good is None else good
    shape = image.shape

    def planes(array: npt.NDArray[Any]) -> F64:
        return np.asarray(array, dtype=np.float64).reshape(-1, *array.shape[-2:])   # image_filters take stacks

    weight = gaussian_nearest(planes(good), sigma).reshape(good.shape)

    def smoothed(values: F64) -> F64:
        return gaussian_nearest(planes(np.where(good, values, 0.0)), sigma).reshape(shape) / np.maximum(weight, 1e-3)

    level = smoothed(image)
    for _ in range(2):
        level = smoothed(np.minimum(image, level + 3.0 * np.sqrt((level + 1.0) / scale)))
    filled = np.where(good, image, level)          # masked pixels read as the level around them
    disc = np.hypot(*np.indices((2 * radius + 1, 2 * radius + 1)) - radius) <= radius
    opened = gaussian_nearest(opening_reflect(gaussian_nearest(planes(filled), sigma / 6.0), disc), sigma / 3.0).reshape(shape)
    return opened if opened_only else np.maximum(level, opened)  # type: ignore[no-any-return]
