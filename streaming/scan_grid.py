"""Where each point of a bluesky grid scan falls on the map: from the start document alone.

A stock `bluesky.plans.grid_scan` (or `rel_grid_scan`, any `outer_product` plan) records
`shape` (points per motor, slowest first) and `snaking` in its start document, and emits one
event per point. The point number (event `seq_num` - 1) then fixes every motor's grid index,
with bluesky's snaking rule (`bluesky.utils.snake_cyclers`: a snaked axis runs back and forth,
turning each time an outer axis steps). The map is the last two axes (slow = rows, fast =
columns); outer axes (an eta rocking motor scanned around the map, say) give more frames of the
same map pixels. A 1-D scan is a map of one row.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opmon.errors import DocumentError


@dataclass(frozen=True)
class ScanGrid:
    """Points per axis (slowest first) and which axes snake."""

    shape: tuple[int, ...]
    snaking: tuple[bool, ...]

    @classmethod
    def from_start(cls, start: dict[str, Any], map_shape: Sequence[int] | None = None) -> "ScanGrid":
        """The grid of a run's start document, or of `map_shape` (ny, nx) when given (then unsnaked).

        Raises
        ------
        DocumentError
            naming the run when the start document has no usable `shape` and none is given.
        """
        uid = start.get("uid", "?")
        if map_shape is not None:
            return cls(tuple(int(n) for n in map_shape), (False,) * len(map_shape))
        shape = start.get("shape")
        if not isinstance(shape, (list, tuple)) or not shape or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise DocumentError(f"run {uid} ({start.get('plan_name', 'plan?')}): start document has no grid "
                                f"'shape' (got {shape!r:.60}); a grid_scan records one, or give --map-shape NY NX")
        snaking = start.get("snaking") or [False] * len(shape)
        if not isinstance(snaking, (list, tuple)) or len(snaking) != len(shape):
            raise DocumentError(f"run {uid}: start document's 'snaking' {snaking!r:.60} does not match 'shape' {shape}")
        return cls(tuple(shape), tuple(bool(s) for s in snaking))

    @property
    def map_shape(self) -> tuple[int, int]:
        """(ny, nx): the last two axes, or one row for a 1-D scan."""
        return (1, self.shape[0]) if len(self.shape) == 1 else (self.shape[-2], self.shape[-1])

    @property
    def points(self) -> int:
        return math.prod(self.shape)

    def axis_indices(self, point: int) -> tuple[int, ...]:
        """Grid index along each axis of the 0-based `point` (bluesky's snaking rule)."""
        out = []
        for i, n in enumerate(self.shape):
            block = point // math.prod(self.shape[i + 1:])
            if self.snaking[i] and i > 0:
                k = block % (2 * n)
                out.append(k if k < n else 2 * n - 1 - k)
            else:
                out.append(block % n)
        return tuple(out)

    def map_index(self, point: int) -> int:
        """Row-major map-pixel index of the 0-based `point`.

        Raises
        ------
        DocumentError
            when the point lies beyond the grid (more events than the start document announced).
        """
        if not 0 <= point < self.points:
            raise DocumentError(f"point {point + 1} is beyond the {' x '.join(map(str, self.shape))} grid "
                                f"of the start document")
        idx = self.axis_indices(point)
        if len(idx) == 1:
            return idx[0]
        return idx[-2] * self.shape[-1] + idx[-1]
