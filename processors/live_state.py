"""Bookkeeping of the live processor: the run being processed, its maps, the ROI rule.

Kept apart from the service loop (`opmon.processors.live`) so both stay small.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.processors.accumulate import MomentAccumulator, Roi
from opmon.processors.offline import ROI_FRACTION, ROI_MARGIN, _box5


def roi_from_sum(total: npt.NDArray[np.float64], mask: npt.NDArray[np.uint8] | None = None) -> Roi:
    """The `opmon process` auto-ROI rule applied to a sum of the run's first frames."""
    rows, cols = total.shape
    total = total.copy()
    if mask is not None:
        total[mask.astype(bool)] = 0.0
    smooth = _box5(total)
    peak = smooth.max()
    if not peak > 0:
        return (0, rows, 0, cols)
    rr, cc = np.nonzero(smooth >= ROI_FRACTION * peak)
    pad_r = ROI_MARGIN + (rr.max() - rr.min()) // 4
    pad_c = ROI_MARGIN + (cc.max() - cc.min()) // 4
    return (max(0, int(rr.min() - pad_r)), min(rows, int(rr.max() + pad_r + 1)),
            max(0, int(cc.min() - pad_c)), min(cols, int(cc.max() + pad_c + 1)))


@dataclass
class LiveMap:
    """One map being built: merged sums (inline) or the workers' latest sums."""

    number: int
    map_shape: tuple[int, int]
    acc: MomentAccumulator | None = None
    received: int = 0
    forwarded: list[int] = field(default_factory=list)
    partials: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    finals: dict[int, tuple[int, dict[str, np.ndarray]]] = field(default_factory=dict)
    announced: bool = False
    ended: bool = False
    done: bool = False
    dirty: bool = False
    unpublished_t: list[float] = field(default_factory=list)


@dataclass
class LiveRun:
    """The run being processed: its geometry, ROI decision and maps."""

    uid: str
    start: dict[str, Any]
    mask: npt.NDArray[np.uint8] | None
    roi: Roi | None
    adopted: bool = False
    pending: list[tuple[dict[str, Any], npt.NDArray[Any]]] = field(default_factory=list)
    pending_since: float = 0.0
    maps: dict[int, LiveMap] = field(default_factory=dict)
    next_worker: int = 0
    info: Any = None           # the receiver's RunInfo (sequence and loss bookkeeping)
    recovered: int = 0
