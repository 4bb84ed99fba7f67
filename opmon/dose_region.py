"""Where the scan may go when sample positions reach the dose limit (`--dose-action move`).

The dose map is binned on its own grid (the map step, anchored at 0 µm); the plan scans a grid
of its own (origin, step, shape). `over_dosed` says which plan grid points sit on a dose cell at
or over the limit; `clear_region` shifts the current scan window to the nearest placement of the
same size that holds none of them, or, when none does, takes the largest clear window of at least
a quarter of it. None: the grid does not allow it (then the run pauses).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class ScanGrid:
    """The plan's raster: point (r, c) at x = x0 + c * step, y = y0 + r * step (µm)."""

    origin_um: tuple[float, float]      # (x0, y0)
    step_um: float
    shape: tuple[int, int]              # (ny, nx)


def over_dosed(photons: npt.NDArray[np.float64], dose_origin_yx: tuple[float, float], dose_step_um: float,
               grid: ScanGrid, limit: float) -> npt.NDArray[np.bool_]:
    """(ny, nx) of the plan's grid: True where the dose cell under the point holds >= `limit` photons."""
    ny, nx = grid.shape
    x = grid.origin_um[0] + grid.step_um * np.arange(nx)
    y = grid.origin_um[1] + grid.step_um * np.arange(ny)
    ci = np.rint((x - dose_origin_yx[1]) / dose_step_um).astype(int)
    ri = np.rint((y - dose_origin_yx[0]) / dose_step_um).astype(int)
    inside_c = (ci >= 0) & (ci < photons.shape[1])
    inside_r = (ri >= 0) & (ri < photons.shape[0])
    out = np.zeros((ny, nx), dtype=bool)
    sub = photons[np.ix_(ri[inside_r], ci[inside_c])] >= limit
    out[np.ix_(np.flatnonzero(inside_r), np.flatnonzero(inside_c))] = sub
    return out


def _window_sums(over: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    return np.pad(over.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def _count(s: npt.NDArray[np.int64], r0: int, r1: int, c0: int, c1: int) -> int:
    return int(s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0])


def clear_region(over: npt.NDArray[np.bool_], current: Region | None) -> Region | None:
    """A window of the grid with no over-dosed point, near `current` (None: the whole grid), or None."""
    ny, nx = over.shape
    r0, r1, c0, c1 = current if current is not None else (0, ny, 0, nx)
    h, w = r1 - r0, c1 - c0
    s = _window_sums(over)
    centre = ((r0 + r1) / 2, (c0 + c1) / 2)

    def distance(region: Region) -> float:
        return float(np.hypot((region[0] + region[1]) / 2 - centre[0], (region[2] + region[3]) / 2 - centre[1]))
    shifted = [(a, a + h, b, b + w) for a in range(ny - h + 1) for b in range(nx - w + 1)
               if _count(s, a, a + h, b, b + w) == 0]
    if shifted:
        return min(shifted, key=distance)
    best: tuple[int, float, Region] | None = None
    for a in range(ny):
        for b in range(a + 1, ny + 1):
            rows_over = s[b, 1:] - s[a, 1:] - s[b, :-1] + s[a, :-1]   # over-dosed points per column
            run_start = 0
            for col in range(nx + 1):
                if col == nx or rows_over[col]:
                    if col > run_start:
                        region = (a, b, run_start, col)
                        key = ((b - a) * (col - run_start), -distance(region), region)
                        if best is None or key[:2] > best[:2]:
                            best = key
                    run_start = col + 1
    if best is None or best[0] * 4 < h * w:
        return None
    return best[2]
