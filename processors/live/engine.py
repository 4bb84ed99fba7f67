"""Bookkeeping of the live processor: the run being processed, its maps, the ROI rule.

Kept apart from the service loop (`opmon.processors.live`) so both stay small.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.processors.accumulate import MomentAccumulator, Roi
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.offline import roi_from_image


def geometry_of(start: dict[str, Any]) -> DetectorGeometry:
    """DetectorGeometry from a run's start header (protocol field names)."""
    return DetectorGeometry(float(start["energy_ev"]), float(start["distance_m"]), tuple(start["pixel_size_m"]),
                            tuple(start["beam_center"]), tuple(start["frame_shape"]))


def initial_roi(setting: Any, start: dict[str, Any]) -> Roi | None:
    """A run's ROI before any frame: the configured one, the full frame (None), the one its start
    metadata names, or None when it is to be decided from the first frames ("auto")."""
    if setting == "auto":
        return tuple(start.get("metadata", {}).get("roi") or ()) or None  # type: ignore[return-value]
    if setting is None:
        rows, cols = start["frame_shape"]
        return (0, rows, 0, cols)
    return setting  # type: ignore[no-any-return]


def accumulator_options(options: dict[str, Any]) -> dict[str, Any]:
    """MomentAccumulator keyword options from the options recorded with every map."""
    roi = options.get("roi")
    return {"roi": tuple(roi) if roi is not None else None, "threshold": int(options.get("threshold", 0)),
            "background": options.get("background", "auto")}


#: frames an auto ROI may wait for a Bragg peak to show before it settles for the full frame
ROI_MAX_FRAMES = 256


class RoiSum:
    """Running sum of a run's first frames, added as they arrive (the auto-ROI decision then
    costs one smoothing, not a pass over every held frame)."""

    def __init__(self) -> None:
        self.total: npt.NDArray[np.uint64] | None = None
        self.frames = 0

    def add(self, frame: npt.NDArray[Any]) -> None:
        if self.total is None:
            self.total = np.zeros(frame.shape, dtype=np.uint64)
        np.add(self.total, frame, out=self.total, casting="unsafe")
        self.frames += 1

    def merge(self, total: npt.NDArray[Any], frames: int) -> None:
        """Add another process's running sum (fan-out: each worker sums what it was dealt)."""
        if self.total is None:
            self.total = np.zeros(total.shape, dtype=np.uint64)
        self.total += total.astype(np.uint64, copy=False)
        self.frames += frames

    def roi(self, mask: npt.NDArray[np.uint8] | None, frame_shape: tuple[int, int], settle: bool = True) -> Roi | None:
        """The ROI these frames show; with `settle` False, None while no Bragg peak stands out
        (the first frames of an eta-outer scan are often off the rocking curve: wait for more),
        with `settle` the full frame then, which is slower but never cuts a peak."""
        roi = roi_from_image(self.total.astype(np.float64), mask) if self.total is not None else None
        if roi is None and settle:
            return (0, frame_shape[0], 0, frame_shape[1])
        return roi


def roi_from_sum(total: npt.NDArray[np.float64], mask: npt.NDArray[np.uint8] | None = None) -> Roi:
    """The `opmon process` auto-ROI rule on a sum of a run's first frames (full frame if no peak)."""
    roi = roi_from_image(total, mask)
    return roi if roi is not None else (0, total.shape[0], 0, total.shape[1])


@dataclass
class LiveMap:
    """One map being built by the inline processor."""

    number: int
    map_shape: tuple[int, int]
    acc: MomentAccumulator | None = None
    received: int = 0
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
    roi_sum: RoiSum = field(default_factory=RoiSum)
    roi_next: int = 0          # held frames at which to try the auto ROI again (no peak yet)
    maps: dict[int, LiveMap] = field(default_factory=dict)
    info: Any = None           # the receiver's RunInfo (sequence and loss bookkeeping)
    recovered: int = 0
