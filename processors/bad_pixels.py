"""Hot and dead detector pixels found from the data, to merge with the file's mask.

A detector's mask file misses pixels that went bad since it was made. One unmasked hot pixel
inside the ROI adds thousands of counts to every map pixel, so the auto ROI locks onto it and
every centre of mass is pulled to it (issue 13). The data show such pixels plainly:

* hot: far above all eight neighbours in most sampled frames. A Bragg peak or a powder spot
  lights a pixel only over part of the rocking curve and map, and lights its neighbours too;
* dead: no count in any sampled frame while its neighbours count many.

`BadPixelFinder` takes frames one at a time (or its counts merged from other processes), so the
offline auto ROI and the live ROI decision run the same rule on the frames they already read.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: a hot pixel exceeds HOT_FACTOR x its brightest neighbour + HOT_FLOOR counts ...
HOT_FACTOR = 4.0
HOT_FLOOR = 4.0
#: ... in more than this share of the sampled frames
HOT_SHARE = 0.5
#: a dead pixel has no count while its neighbours average at least this many over the sample
DEAD_NEIGHBOUR_COUNTS = 20.0
#: fewer sampled frames than this decide nothing (one frame cannot tell hot from a sharp spot)
MIN_FRAMES = 8


def neighbour_max(frame: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The largest of each pixel's eight neighbours (edge pixels: of those that exist)."""
    f = np.pad(np.asarray(frame, dtype=np.float64), 1, constant_values=0.0)
    across = np.maximum(f[:, :-2], f[:, 2:])             # left/right of every padded row
    row3 = np.maximum(across, f[:, 1:-1])                 # 3-wide max of every padded row
    return np.maximum(np.maximum(row3[:-2], row3[2:]), across[1:-1])


def neighbour_mean(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Mean of each pixel's eight neighbours (zero outside the frame)."""
    f = np.pad(image, 1)
    c = f.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    box = c[3:, 3:] - c[:-3, 3:] - c[3:, :-3] + c[:-3, :-3]
    return (box - image) / 8.0


class BadPixelFinder:
    """Per-pixel statistics over sampled frames: how often a pixel stands out, and its sum."""

    def __init__(self) -> None:
        self.standout: npt.NDArray[np.uint32] | None = None
        self.total: npt.NDArray[np.float64] | None = None
        self.frames = 0

    def add(self, frame: npt.NDArray[Any]) -> None:
        """Count one frame (rows, cols)."""
        if self.standout is None:
            self.standout = np.zeros(frame.shape, dtype=np.uint32)
            self.total = np.zeros(frame.shape, dtype=np.float64)
        self.standout += frame > HOT_FACTOR * neighbour_max(frame) + HOT_FLOOR
        self.total += frame  # type: ignore[operator]
        self.frames += 1

    def merge(self, other: "BadPixelFinder") -> None:
        """Add another finder's counts (frames of the same detector seen elsewhere)."""
        if other.standout is None:
            return
        if self.standout is None:
            self.standout, self.total = other.standout.copy(), other.total.copy()  # type: ignore[union-attr]
        else:
            self.standout += other.standout
            self.total += other.total  # type: ignore[operator]
        self.frames += other.frames

    def mask(self, known: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """1 where the data show a hot or dead pixel that `known` (the file's mask) does not hold."""
        if self.standout is None or self.frames < MIN_FRAMES:
            shape = self.standout.shape if self.standout is not None else known.shape if known is not None else (0, 0)
            return np.zeros(shape, dtype=np.uint8)
        known_bad = known.astype(bool) if known is not None else np.zeros(self.standout.shape, dtype=bool)
        hot = self.standout > HOT_SHARE * self.frames
        total = np.where(known_bad | hot, 0.0, self.total)   # a bad neighbour's counts say nothing
        dead = (self.total == 0) & (neighbour_mean(total) >= DEAD_NEIGHBOUR_COUNTS)
        return ((hot | dead) & ~known_bad).astype(np.uint8)


def merged_mask(known: npt.NDArray[np.uint8] | None, found: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The file's mask with the pixels found from the data added (1 = ignore)."""
    if known is None:
        return found.copy()
    return (known.astype(bool) | found.astype(bool)).astype(np.uint8)
