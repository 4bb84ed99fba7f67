"""A map's frames kept in memory, sparse, while its ROI is provisional, to re-make the map with its own ROI.

The live processor must accumulate a frame when it arrives, but the ROI that holds a map's peak
is known only at the map's end (an eta-outer scan starts off the rocking curve). Photon-counting
frames are mostly zeros, so the counting pixels of a map whose ROI is provisional are kept
(flat index and value, a few kB a frame instead of a MiB), up to a memory budget; at the map's
end the map is accumulated again from them with the ROI of the whole map, exactly as
`opmon process` does. Over the budget they are dropped (the archive, when there is one, then serves).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

#: memory the held frames of one map may take (the first map of a run: its ROI is provisional)
HELD_BYTES = 512 << 20

_HEADER_KEYS = ("frame", "index", "eta", "phi", "nu", "delta", "monitor")   # "frame": its number in the map (the picks)


@numba.njit(cache=True, nogil=True)
def counting_pixels(flat: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[Any]]:
    """(flat indices, values) of the non-zero pixels of a frame: one pass to count, one to copy
    (numpy's flatnonzero + fancy indexing took ~10x a plain copy of the frame)."""
    n = 0
    for i in range(flat.size):
        if flat[i] != 0:
            n += 1
    where = np.empty(n, dtype=np.uint32)
    values = np.empty(n, dtype=flat.dtype)
    k = 0
    for i in range(flat.size):
        if flat[i] != 0:
            where[k] = i
            values[k] = flat[i]
            k += 1
    return where, values


class HeldFrames:
    """The counting pixels of one map's frames, in arrival order, up to `budget` bytes."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = HELD_BYTES if budget is None else budget
        self.nbytes = 0
        self.overflowed = False
        self._frames: list[tuple[tuple[Any, ...], npt.NDArray[np.uint32], npt.NDArray[Any]]] = []
        self._shape: tuple[int, int] | None = None
        self._dtype: np.dtype[Any] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def add(self, header: dict[str, Any], frame: npt.NDArray[Any]) -> bool:
        """Keep `frame`'s counting pixels; False (and nothing held any more) once over the budget."""
        if self.overflowed:
            return False
        where, values = counting_pixels(frame.reshape(-1))
        self.nbytes += where.nbytes + values.nbytes + 200
        if self.nbytes > self.budget:
            self.drop()
            return False
        self._shape, self._dtype = frame.shape, frame.dtype
        self._frames.append((tuple(header.get(k) for k in _HEADER_KEYS), where, values))
        return True

    def drop(self) -> None:
        """Forget every frame (over the budget, or the map needs no re-making)."""
        self._frames, self.nbytes, self.overflowed = [], 0, True

    def frames(self) -> Iterator[tuple[dict[str, Any], npt.NDArray[Any]]]:
        """(header fields the accumulator needs, dense frame) of every held frame, in arrival order."""
        if self._shape is None or self._dtype is None:
            return
        frame = np.zeros(self._shape, dtype=self._dtype)
        flat = frame.reshape(-1)
        for values_of, where, values in self._frames:
            flat[where] = values
            yield dict(zip(_HEADER_KEYS, values_of)), frame
            flat[where] = 0
