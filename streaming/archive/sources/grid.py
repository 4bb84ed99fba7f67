"""The map grid of an SXDM scan (from its title or technique group) and piezo positions binned to it.

ID01 map scans are titled like ``sxdm( pix, 0.0, 2.7, 28, piy, 0.0, 1.9, 20, 0.01 )`` (also
``asxdm(``, ``kmap``): fast motor, start, end, points, slow motor, start, end, points,
exposure. Positions are recorded as measured (with jitter, and lagging at the start of a line
in continuous scans), so each is put in the grid cell whose centre is nearest; a position more
than one step outside the grid means the positions and the grid disagree, and is an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opmon.errors import RawFileError

MAP_TITLE = re.compile(r"^\s*(a?sxdm|a?kmap)\b", re.IGNORECASE)
_TOKENS = re.compile(r"[\s,()]+")


def is_map_title(title: str) -> bool:
    return bool(MAP_TITLE.match(title))


@dataclass(frozen=True)
class Axis:
    """One scanned motor: `points` positions from `start` to `end` (both included)."""

    motor: str
    start: float
    end: float
    points: int

    @property
    def step(self) -> float:
        return (self.end - self.start) / (self.points - 1) if self.points > 1 else 0.0

    def bin(self, positions: npt.NDArray[np.float64], where: str) -> npt.NDArray[np.int64]:
        """Index of the nearest grid point of each position; error past one step outside the grid."""
        if self.points == 1:
            return np.zeros(positions.shape, dtype=np.int64)
        lo, hi = sorted((self.start, self.end))
        bad = ~np.isfinite(positions) | (positions < lo - abs(self.step)) | (positions > hi + abs(self.step))
        if bad.any():
            i = int(np.argmax(bad))
            raise RawFileError(f"{where}: position {float(positions[i]):g} of frame {i} does not fit the grid of "
                               f"{self.motor} ({self.points} points from {self.start} to {self.end}, "
                               f"{lo - abs(self.step):.6g}..{hi + abs(self.step):.6g} accepted)")
        index = np.rint((positions - self.start) / self.step).astype(np.int64)
        return np.clip(index, 0, self.points - 1)


@dataclass(frozen=True)
class Grid:
    """The (slow, fast) grid of a map scan; map pixels are row-major (slow rows, fast columns)."""

    fast: Axis
    slow: Axis

    @property
    def shape(self) -> tuple[int, int]:
        return (self.slow.points, self.fast.points)

    def index(self, fast_pos: npt.NDArray[np.float64], slow_pos: npt.NDArray[np.float64],
              where: str) -> npt.NDArray[np.int64]:
        """Row-major map pixel of each frame from its measured positions."""
        col = self.fast.bin(np.asarray(fast_pos, dtype=np.float64), f"{where} ({self.fast.motor})")
        row = self.slow.bin(np.asarray(slow_pos, dtype=np.float64), f"{where} ({self.slow.motor})")
        return row * self.fast.points + col

    def same_as(self, other: "Grid") -> bool:
        return self.shape == other.shape and self.fast.motor == other.fast.motor and self.slow.motor == other.slow.motor


def parse_title(title: str) -> Grid | None:
    """The grid of a map-scan title, or None when the title is not one (or cannot be read)."""
    if not is_map_title(title):
        return None
    tokens = [t for t in _TOKENS.split(title.strip()) if t][1:]
    if len(tokens) < 8:
        return None
    try:
        fast = Axis(tokens[0], float(tokens[1]), float(tokens[2]), int(float(tokens[3])))
        slow = Axis(tokens[4], float(tokens[5]), float(tokens[6]), int(float(tokens[7])))
    except ValueError:
        return None
    if fast.points < 1 or slow.points < 1:
        return None
    return Grid(fast, slow)
