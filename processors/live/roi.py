"""The auto-ROI rule of the live processor, one copy for every executor.

The ROI is first decided from the sum of a run's first frames, with the hot and dead pixels these
frames show added to the detector mask first (`opmon.processors.bad_pixels`, as `opmon process` does). An eta-outer scan often starts
off the rocking curve, so the first frames may show no Bragg peak: then the decision waits for
more frames (or for `wait_s`), up to ROI_MAX_FRAMES, after which it settles for the full frame
(whose background is then measured on the map points off the particle, `MomentAccumulator`). Either
is provisional: at the map's end `MapPicks` (the frames `opmon process` samples, summed as they came)
gives the ROI of the whole map; unless the provisional one is that within 2 pixels the map is re-made
with it (`remake`), and the maps to come follow it (`engine.LiveRun.conclude_map`).
The inline processor, each fan-out worker (which reports its share of the sum) and the fan-out
coordinator (which merges the shares and decides) all run this one `RoiDecider` and `MapPicks`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.processors.accumulate import Roi
from opmon.processors.bad_pixels import BadPixelFinder, merged_mask
from opmon.processors.eta_scans import eta_key
from opmon.processors.offline import MapPlan, MapSample, found_mask, plan_of_sample, roi_from_image, sample_picks
from opmon.processors.powder_spots import ScanSums

#: frames an auto ROI may wait for a Bragg peak to show before it settles for the full frame
ROI_MAX_FRAMES = 256


class RoiSum:
    """Running sum of a run's first frames, added as they arrive (the auto-ROI decision then
    costs one smoothing, not a pass over every held frame)."""

    def __init__(self) -> None:
        self.total: npt.NDArray[np.uint64] | None = None
        self.frames = 0
        self.finder = BadPixelFinder()
        self._masked: tuple[Any, npt.NDArray[np.uint8] | None] | None = None  # (known, its mask with the pixels found)

    def add(self, frame: npt.NDArray[Any]) -> None:
        if self.total is None:
            self.total = np.zeros(frame.shape, dtype=np.uint64)
        np.add(self.total, frame, out=self.total, casting="unsafe")
        self.finder.add(frame)
        self.frames += 1
        self._masked = None

    def merge(self, total: npt.NDArray[Any], frames: int, standout: npt.NDArray[Any] | None = None) -> None:
        """Add another process's running sum (fan-out: each worker sums what it was dealt) and its
        bad-pixel counts (None: that process sent none, its frames then count for the sum only)."""
        if self.total is None:
            self.total = np.zeros(total.shape, dtype=np.uint64)
        self.total += total.astype(np.uint64, copy=False)
        self.frames += frames
        self._masked = None
        if standout is not None:
            self.finder.merge(standout, frames)

    def mask(self, known: npt.NDArray[np.uint8] | None) -> npt.NDArray[np.uint8] | None:
        """`known` (the run's detector mask) with the hot/dead pixels these frames show added."""
        if self.total is None:
            return known
        if self._masked is not None and self._masked[0] is known:
            return self._masked[1]     # the ROI decision and the run's mask ask for the same frames (~0.5 s on 16M pixels)
        found = self.finder.mask(self.total, known)
        masked = merged_mask(known, found) if found.any() else known
        self._masked = (known, masked)
        return masked

    def roi(self, mask: npt.NDArray[np.uint8] | None, frame_shape: tuple[int, int], settle: bool = True) -> Roi | None:
        """The ROI these frames show; with `settle` False, None while no Bragg peak stands out
        (the first frames of an eta-outer scan are often off the rocking curve: wait for more),
        with `settle` the full frame then, which is slower but never cuts a peak."""
        roi = roi_from_image(self.total.astype(np.float64), self.mask(mask)) if self.total is not None else None
        if roi is None and settle:
            return (0, frame_shape[0], 0, frame_shape[1])
        return roi


def roi_from_sum(total: npt.NDArray[np.float64], mask: npt.NDArray[np.uint8] | None = None) -> Roi:
    """The `opmon process` auto-ROI rule on a sum of a run's first frames (full frame if no peak)."""
    roi = roi_from_image(total, mask)
    return roi if roi is not None else (0, total.shape[0], 0, total.shape[1])


class RoiDecider:
    """Hold-and-decide state of one run's auto ROI.

    Parameters
    ----------
    quota : frames to sum before the first try, and more frames to sum before each retry.
    wait_s : a try is also due this long after the first frame (or the last failed try), s.
    """

    def __init__(self, quota: int, wait_s: float) -> None:
        self.sum = RoiSum()
        self.quota = max(1, quota)
        self.wait_s = wait_s
        self.next = self.quota             # frames summed at which the next try is due
        self.since: float | None = None    # time.monotonic() of the first frame or the last failed try
        self._shares: dict[int, tuple[int, npt.NDArray[Any], npt.NDArray[Any] | None]] = {}

    @property
    def frames(self) -> int:
        return self.sum.frames

    @property
    def sources(self) -> int:
        """Processes whose running sums were taken (`share`)."""
        return len(self._shares)

    def add(self, frame: npt.NDArray[Any]) -> None:
        """Sum one of the run's first frames."""
        self.sum.add(frame)
        if self.since is None:
            self.since = time.monotonic()

    def share(self, source: int, total: npt.NDArray[Any], frames: int, standout: npt.NDArray[Any] | None = None) -> None:
        """Take another process's running sum and bad-pixel counts (the latest of each source wins) instead of frames."""
        self._shares[source] = (frames, total, standout)
        self.sum = RoiSum()
        for n, image, counts in self._shares.values():
            if n:
                self.sum.merge(image, n, counts)
        if self.since is None:
            self.since = time.monotonic()

    def due(self, now: float | None = None) -> bool:
        """Enough frames summed, or waited long enough since the first one (or the last try)."""
        if self.since is None:
            return False
        now = time.monotonic() if now is None else now
        return self.sum.frames >= self.next or now - self.since >= self.wait_s

    def decide(self, mask: npt.NDArray[np.uint8] | None, frame_shape: tuple[int, int], settle: bool = True) -> Roi | None:
        """The ROI of the frames summed so far; unless `settle`, None while they show no Bragg
        peak (up to ROI_MAX_FRAMES; the next try is then due after `quota` more frames)."""
        roi = self.sum.roi(mask, frame_shape, settle=settle or self.sum.frames >= ROI_MAX_FRAMES)
        if roi is None:
            self.wait_for_more(self.sum.frames)
        return roi

    def wait_for_more(self, looked_at: int) -> None:
        """No peak in the first `looked_at` frames: try again after `quota` more (or `wait_s`)."""
        self.next = looked_at + self.quota
        self.since = time.monotonic()


class MapPicks:
    """The frames of one map that `opmon process` samples for its auto ROI and bad-pixel finder
    (`offline.sample_picks`), summed as they arrive in any order, by any process.

    At the map's end `plan` gives the ROI and mask `opmon process` takes for the whole map: an
    eta-outer scan's first frames are off the rocking curve, so only the whole map shows where
    its peak is. With `n_frames` unknown (0) every frame is summed.
    """

    def __init__(self, n_frames: int, per_scan: bool = False) -> None:
        self.picks, self.every = sample_picks(n_frames) if n_frames > 0 else (None, 1)
        self.sample = MapSample(np.zeros(0), BadPixelFinder())
        self.frames = 0
        self.per_scan = per_scan     # also summed per eta scan (`powder_spots.ScanSums`): the powder-spot search
        self.eta_values: set[float] = set()   # searching spots: every frame's eta (`ScanSums`' budget counts the map's scans)

    def add(self, frame_number: int, frame: npt.NDArray[Any], eta: float = 0.0) -> None:
        """Sum `frame` (number `frame_number` of its map, taken at `eta`) when it is one of the picks."""
        if self.per_scan:
            self.eta_values.add(eta_key(eta))      # the value `offline.sample_map` counts
        position = frame_number
        if self.picks is not None:
            position = int(np.searchsorted(self.picks, frame_number))
            if position >= self.picks.size or self.picks[position] != frame_number:
                return
        if self.frames == 0:
            self.sample.total = np.zeros(frame.shape, dtype=np.float64)
            self.sample.scans = ScanSums(frame.shape) if self.per_scan else None
        self.sample.total += frame
        if self.sample.scans is not None:
            self.sample.scans.add(frame[None], [eta])
        self.frames += 1
        if position % self.every == 0:
            self.sample.finder.add(frame)

    def merge(self, total: npt.NDArray[Any], frames: int, standout: npt.NDArray[Any] | None, looked_at: int,
              scans: tuple[Any, npt.NDArray[Any], bool] | None = None, eta_values: npt.ArrayLike = ()) -> None:
        """Add another process's picks of the same map (a fan-out worker's share: its sum of `frames`
        picks, its bad-pixel finder's counts over the `looked_at` of them it looked at, and, searching
        powder spots, its per-scan sums: (eta, sums, enabled) of `ScanSums.arrays`, and the eta of every
        frame it was dealt, `eta_values`)."""
        self.eta_values.update(np.asarray(eta_values, dtype=np.float64).reshape(-1).tolist())
        if not frames:
            return
        if self.frames == 0:
            self.sample.total = np.zeros(total.shape, dtype=np.float64)
            self.sample.scans = ScanSums(total.shape) if self.per_scan else None
        self.sample.total += total
        if self.sample.scans is not None:
            if scans is None:       # a share without its per-scan sums: no search on part of the map's frames
                self.sample.scans.merge([], [], enabled=False)
            else:
                self.sample.scans.merge(*scans)
        self.frames += frames
        if standout is not None:
            self.sample.finder.merge(standout, looked_at)

    def plan(self, known: npt.NDArray[np.uint8] | None, frame_shape: tuple[int, int], roi: Roi | None = None) -> MapPlan | None:
        """The ROI and mask `opmon process` takes for this map (None: no frame summed): its auto ROI, or
        `roi` when given (as `opmon process --roi`); with the powder spots inside it when summed per scan."""
        if self.frames == 0:
            return None
        scans = self.sample.scans
        if scans is not None and scans.enabled and not ScanSums(frame_shape, len(self.eta_values)).enabled:
            scans.merge([], [], enabled=False)   # as `opmon process`: one sum per eta value of the map over the budget
        if roi is None:
            plan = plan_of_sample(self.sample, known, frame_shape)
        else:
            found, mask = found_mask(self.sample, known)
            plan = MapPlan(tuple(roi), mask, found)     # type: ignore[arg-type]
        if self.sample.scans is not None:
            plan.spots = self.sample.scans.spots(plan.roi, plan.mask)
        return plan
