"""Work out the smallest Bokeh patch that brings a displayed image up to date.

Live maps fill in a few rows at a time; re-sending the whole array on every update is what
makes live grid plots crawl as scans grow (PEERS.md 1). These helpers compare what a session
last sent with the newest array and return a row-range patch in the flattened form
`ColumnDataSource.patch` accepts for 2-D image items.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def changed_rows(old: npt.NDArray[Any] | None, new: npt.NDArray[Any]) -> tuple[int, int] | None:
    """Half-open row range [r0, r1) that differs between `old` and `new`, or None if equal.

    NaN equals NaN (an unfilled pixel that stays unfilled is no change). If `old` is None or
    has another shape, every row differs.
    """
    if old is None or old.shape != new.shape:
        return 0, int(new.shape[0])
    same = (old == new) | (np.isnan(old) & np.isnan(new)) if new.dtype.kind == "f" else old == new
    row_same = same.reshape(new.shape[0], -1).all(axis=1)
    diff = np.flatnonzero(~row_same)
    if diff.size == 0:
        return None
    return int(diff[0]), int(diff[-1]) + 1


def image_row_patch(
    column: str, new: npt.NDArray[Any], rows: tuple[int, int], item: int = 0,
) -> dict[str, list[tuple[tuple[int, slice, slice], npt.NDArray[Any]]]]:
    """A `ColumnDataSource.patch` dict replacing rows [r0, r1) of image `item` of `column`.

    The new values are flattened, as Bokeh requires for sub-array patches.
    """
    r0, r1 = rows
    values = np.ascontiguousarray(new[r0:r1]).ravel()
    return {column: [((item, slice(r0, r1, 1), slice(0, int(new.shape[1]), 1)), values)]}


def flat_rows_patch(
    column: str, new: npt.NDArray[Any], rows: tuple[int, int], width: int,
) -> dict[str, list[tuple[slice, npt.NDArray[Any]]]]:
    """A patch for a flat per-pixel column (e.g. pole-figure points) covering map rows [r0, r1)."""
    r0, r1 = rows
    return {column: [(slice(r0 * width, r1 * width), np.ascontiguousarray(new[r0 * width:r1 * width]))]}


def robust_range(values: npt.NDArray[Any], lo: float = 1.0, hi: float = 99.0) -> tuple[float, float] | None:
    """Colour-bar limits from percentiles of the finite values, or None if there are none.

    A flat map gets a tiny symmetric range so the colour mapper stays valid.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    a, b = (float(x) for x in np.percentile(v, [lo, hi]))
    if b <= a:
        pad = abs(a) * 1e-6 or 1e-6
        a, b = a - pad, b + pad
    return a, b
