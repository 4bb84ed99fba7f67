"""Hot and dead detector pixels found from the data, to merge with the file's mask.

A detector's mask file misses pixels that went bad since it was made. One unmasked hot pixel
inside the ROI adds thousands of counts to every map pixel, so the auto ROI locks onto it and
every centre of mass is pulled to it (issue 13). The data show such pixels plainly:

* hot: far above all eight neighbours in most sampled frames. A Bragg peak or a powder spot
  lights a pixel only over part of the rocking curve and map, and lights its neighbours too;
* dead: no count in any sampled frame while every neighbour counts many (the rim of a sharp
  feature has dark neighbours too);
* flagged: at the detector's own invalid mark, the largest value of its unsigned integer type
  (a DECTRIS Eiger writes 2^bits - 1 in its chip gaps and masked pixels), in most sampled frames.
  A run of such pixels (a gap line, a bad column) has bright neighbours only, so the hot rule
  alone misses it when the file's mask does; and the 1.25M gap pixels of a 16M Eiger are counted
  with one comparison instead of the neighbour passes (0.2 s a frame).

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
#: a dead pixel has no count while each of its neighbours counts at least this many over the sample
DEAD_NEIGHBOUR_COUNTS = 20.0
#: fewer sampled frames than this decide nothing (one frame cannot tell hot from a sharp spot)
MIN_FRAMES = 8


def neighbour_min(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The smallest of each pixel's eight neighbours (outside the frame, and inf entries, ignored)."""
    f = np.pad(image, 1, constant_values=np.inf)
    rows, cols = image.shape
    out = np.full(image.shape, np.inf)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            if dr == dc == 1:
                continue
            np.minimum(out, f[dr:dr + rows, dc:dc + cols], out=out)
    return out


class BadPixelFinder:
    """Per-pixel statistics over sampled frames: how often each pixel stands out of its neighbours.

    Only pixels above HOT_FLOOR are looked at, so a sparse photon-counting frame costs a few
    fancy-indexing passes over its bright pixels, not full-frame filters. The frames' sum
    (which the auto ROI keeps anyway) is passed to `mask` for the dead-pixel rule.
    """

    def __init__(self) -> None:
        self.standout: npt.NDArray[np.uint32] | None = None
        self.frames = 0

    def add(self, frame: npt.NDArray[Any]) -> None:
        """Count one frame (rows, cols)."""
        if self.standout is None:
            self.standout = np.zeros(frame.shape, dtype=np.uint32)
        self.frames += 1
        rows, cols = frame.shape
        flat = frame.reshape(-1)
        lit = flat > HOT_FLOOR
        if frame.dtype.kind == "u":
            flagged = flat == np.iinfo(frame.dtype).max          # the detector's invalid mark (module doc)
            if flagged.any():
                self.standout.reshape(-1)[flagged] += 1
                lit &= ~flagged
        bright = np.flatnonzero(lit)   # flat: 20x faster than 2-D np.nonzero
        if bright.size == 0:
            return
        rr, cc = np.divmod(bright, cols)
        value = frame[rr, cc].astype(np.int64)
        brightest = np.zeros_like(value)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr == dc == 0:
                    continue
                r, c = rr + dr, cc + dc
                inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
                near = frame[np.clip(r, 0, rows - 1), np.clip(c, 0, cols - 1)].astype(np.int64)
                np.maximum(brightest, np.where(inside, near, 0), out=brightest)
        hot = value > HOT_FACTOR * brightest + HOT_FLOOR
        self.standout[rr[hot], cc[hot]] += 1

    def merge(self, standout: npt.NDArray[Any], frames: int) -> None:
        """Add another finder's counts (frames of the same detector seen by another process)."""
        if self.standout is None:
            self.standout = np.zeros(standout.shape, dtype=np.uint32)
        self.standout += standout.astype(np.uint32, copy=False)
        self.frames += frames

    def mask(self, total: npt.NDArray[Any] | None, known: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """1 where the data show a hot or dead pixel that `known` (the file's mask) does not hold.

        `total` is the sum of the same frames (None: hot pixels only)."""
        if self.standout is None:
            return np.zeros(known.shape if known is not None else (0, 0), dtype=np.uint8)
        if self.frames < MIN_FRAMES:
            return np.zeros(self.standout.shape, dtype=np.uint8)
        known_bad = known.astype(bool) if known is not None else np.zeros(self.standout.shape, dtype=bool)
        hot = self.standout > HOT_SHARE * self.frames
        bad = hot
        if total is not None:
            total = np.asarray(total, dtype=np.float64)
            around = neighbour_min(np.where(known_bad | hot, np.inf, total))   # a bad neighbour's counts say nothing
            bad = hot | ((total == 0) & (around >= DEAD_NEIGHBOUR_COUNTS))
        return (bad & ~known_bad).astype(np.uint8)


def merged_mask(known: npt.NDArray[np.uint8] | None, found: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The file's mask with the pixels found from the data added (1 = ignore)."""
    if known is None:
        return found.copy()
    return (known.astype(bool) | found.astype(bool)).astype(np.uint8)
