"""MomentAccumulator: additive per-map-pixel sums Σ I, Σ I·q, Σ I·q⊗q, shaped like a LiberTEM UDF.

Frames may arrive in any order and for any map pixel; two accumulators of disjoint frame
sets merge by addition into exactly what one pass gives. `opmon process` and the live
processor both use this class, so live and offline maps agree by construction.

Background: real photon-counting frames hold a faint diffuse background (~1e-3 counts per
pixel per frame) that pulls a plain centre of mass toward the ROI centre. With
``background="auto"`` the rate is estimated from the counts outside the ROI over all
frames of the map (an ROI covering the whole frame: from the map points off the particle),
and its expected contribution (the rotated geometric moments of the ROI pixels) is
subtracted in `finalize`. A float sets a fixed rate; None disables it.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from opmon.errors import FrameShapeError, MapIndexError, OpmonError
from opmon.processors import kernels
from opmon.processors.geometry import DetectorGeometry, pixel_q_lab_window
from opmon.processors.maps import FLAG_EDGE, MASK_FRACTION, MapResult, derive_maps
from opmon.processors.truncation import truncated

Roi = tuple[int, int, int, int]  # (r0, r1, c0, c1), half-open, frame pixels
Background = Literal["auto"] | float | None

log = logging.getLogger(__name__)
_WARNED_NO_BACKGROUND: set[tuple[int, int, int, int]] = set()

BACKGROUND_ROW_STRIDE = 32  # every 32nd row is read whole for the background outside the ROI
#: with no pixel outside the ROI, the background rate is this quantile of the map pixels' rates (map points
#: off the particle: a particle filling more than 90 % of the map would be partly subtracted), once the map
#: holds at least FULL_FRAME_MIN_PIXELS pixels with frames
FULL_FRAME_BACKGROUND_QUANTILE = 0.1
FULL_FRAME_MIN_PIXELS = 10

STATE_KEYS = ("sum_i", "sum_iq", "sum_iqq", "n_frames", "bg_counts", "bg_q", "bg_qq")  # the kernels' sums
#: frames counted and their summed eta, phi, nu, delta: where the peaks sit on the detector (truncation flags)
ANGLE_KEY = "angle_sums"
SHIPPED_KEYS = (*STATE_KEYS, ANGLE_KEY)  # everything `state()` holds: additive, merged by addition


class MomentAccumulator:
    """Accumulate one map's moments frame by frame.

    Parameters
    ----------
    geometry : detector placement and energy.
    map_shape : (ny, nx) of the map grid.
    roi : (r0, r1, c0, c1) detector window summed around the peak; None = whole frame.
    detector_mask : (rows, cols) uint8, 1 = dead/hot pixel to ignore.
    threshold : counts below this value are ignored (0 keeps every count).
    background : "auto", a fixed rate in counts/pixel/frame, or None.
    despeckle : drop lone single counts (no counting 8-neighbour) before summing; see
        `kernels.frame_moments`. On by default: it is what keeps the diffuse background of a
        wide ROI from moving the centre of mass. Off for integrating detectors.
    """

    def __init__(self, geometry: DetectorGeometry, map_shape: tuple[int, int], *, roi: Roi | None = None,
                 detector_mask: npt.NDArray[np.uint8] | None = None, threshold: int = 0,
                 background: Background = "auto", despeckle: bool = True) -> None:
        rows, cols = geometry.frame_shape
        self.geometry = geometry
        self.map_shape = (int(map_shape[0]), int(map_shape[1]))
        if self.map_shape[0] < 1 or self.map_shape[1] < 1:
            raise OpmonError(f"map_shape {map_shape} must be two positive integers")
        roi = roi if roi is not None else (0, rows, 0, cols)
        r0, r1, c0, c1 = (int(v) for v in roi)
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            raise OpmonError(f"ROI {roi} does not fit a {rows} x {cols} frame (need 0 <= r0 < r1 <= rows, 0 <= c0 < c1 <= cols)")
        self.roi: Roi = (r0, r1, c0, c1)
        if detector_mask is None:
            detector_mask = np.zeros((rows, cols), dtype=np.uint8)
        detector_mask = np.ascontiguousarray(detector_mask, dtype=np.uint8)
        if detector_mask.shape != (rows, cols):
            raise FrameShapeError(f"detector mask shape {detector_mask.shape} differs from frame shape {(rows, cols)}")
        self.detector_mask = detector_mask
        if threshold < 0:
            raise OpmonError(f"threshold {threshold} must be >= 0")
        self.threshold = int(threshold)
        if background is not None and background != "auto" and not (isinstance(background, (int, float)) and background >= 0):
            raise OpmonError(f"background {background!r} must be 'auto', a rate >= 0 or None")
        self.background = background
        self.despeckle = bool(despeckle)
        valid = detector_mask == 0
        self.n_roi_pixels = int(valid[r0:r1, c0:c1].sum())
        sampled = valid[::BACKGROUND_ROW_STRIDE]   # the rows the kernel reads whole for the background
        first = -(-r0 // BACKGROUND_ROW_STRIDE)     # sampled rows inside the ROI band hold ROI pixels too
        inside = valid[first * BACKGROUND_ROW_STRIDE:r1:BACKGROUND_ROW_STRIDE, c0:c1]
        self.n_outside_pixels = int(sampled.sum()) - int(inside.sum())
        npix = self.map_shape[0] * self.map_shape[1]
        self.sum_i = np.zeros(npix)
        self.sum_iq = np.zeros((npix, 3))
        self.sum_iqq = np.zeros((npix, 3, 3))
        self.n_frames = np.zeros(npix, dtype=np.int64)
        self.bg_counts = np.zeros(npix)
        self.bg_q = np.zeros((npix, 3))
        self.bg_qq = np.zeros((npix, 3, 3))
        self.angle_sums = np.zeros(5)             # frames, Σ eta, Σ phi, Σ nu, Σ delta (see ANGLE_KEY)
        self._angles = [0.0] * 5                  # the live path's per-frame share, folded into angle_sums on demand
        self._detector_angles: tuple[float, float] | None = None
        self._q_lab = np.zeros((0, 0, 3))
        self._roi_moments = np.zeros(kernels.N_MOMENTS + 1)

    # -- per-frame work ---------------------------------------------------------------
    def _use_detector_angles(self, nu: float, delta: float) -> None:
        """Load the ROI's lab-frame q table (changes only when the detector arm moves)."""
        if self._detector_angles == (nu, delta):
            return
        r0, r1, c0, c1 = self.roi
        self._q_lab = pixel_q_lab_window(self.geometry, nu, delta, self.roi)
        ones = np.ones((r1 - r0, c1 - c0), dtype=np.uint32)
        roi_moments = np.zeros(kernels.N_MOMENTS + 1)
        roi_mask = np.ascontiguousarray(self.detector_mask[r0:r1, c0:c1])
        kernels.frame_moments(ones, self._q_lab, roi_mask, 0, r1 - r0, 0, c1 - c0, 0, False, 1, roi_moments)
        roi_moments[10] = 0.0
        self._roi_moments = roi_moments
        self._detector_angles = (nu, delta)

    def _check_frames(self, frames: np.ndarray) -> None:
        if frames.shape[-2:] != self.geometry.frame_shape:
            raise FrameShapeError(f"frame shape {frames.shape[-2:]} differs from the detector's {self.geometry.frame_shape}")
        if frames.dtype not in (np.uint16, np.uint32, np.uint8):
            raise FrameShapeError(f"frame dtype {frames.dtype} is not an unsigned integer count type (uint8/16/32)")

    def process_frame(self, frame: npt.NDArray[Any], map_index: int, eta: float, phi: float, nu: float, delta: float) -> None:
        """Add one frame (rows, cols) taken at the given angles (deg) to map pixel `map_index`.

        The live path: the checks of `process_block` and one kernel call with scalar angles
        (no one-element arrays), so the per-frame Python cost stays a few microseconds.
        """
        if frame.ndim != 2:
            raise FrameShapeError(f"expected one frame (rows, cols), got shape {frame.shape}")
        self._check_frames(frame)
        if not frame.flags.c_contiguous:
            frame = np.ascontiguousarray(frame)
        if not 0 <= map_index < self.sum_i.shape[0]:
            raise MapIndexError(f"map index {map_index} outside 0..{self.sum_i.shape[0] - 1} of map {self.map_shape}")
        if not (math.isfinite(eta) and math.isfinite(phi) and math.isfinite(nu) and math.isfinite(delta)):
            raise OpmonError(f"non-finite angle among eta/phi/nu/delta = {eta}, {phi}, {nu}, {delta}")
        self._use_detector_angles(float(nu), float(delta))
        a = self._angles
        a[0] += 1.0; a[1] += eta; a[2] += phi; a[3] += nu; a[4] += delta  # noqa: E702 (plain floats: ~100 ns)
        r0, r1, c0, c1 = self.roi
        kernels.accumulate_frame(frame, float(eta), float(phi), int(map_index), self._q_lab, self.detector_mask,
                                 r0, r1, c0, c1, self.threshold, self.despeckle, BACKGROUND_ROW_STRIDE,
                                 self._roi_moments, *self._sums())

    def process_block(self, frames: npt.NDArray[Any], map_index: npt.ArrayLike, eta: npt.ArrayLike,
                      phi: npt.ArrayLike, nu: npt.ArrayLike, delta: npt.ArrayLike) -> None:
        """Add a block of frames (k, rows, cols); angles are per frame (k,) or scalars.

        One kernel call per run of frames at the same detector position (usually the whole
        block): larger blocks spread the call's Python cost (tens of microseconds) thinner.
        """
        if frames.ndim != 3:
            raise FrameShapeError(f"expected a block of frames (k, rows, cols), got shape {frames.shape}")
        self._check_frames(frames)
        frames = np.ascontiguousarray(frames)  # no copy for detector buffers, which are contiguous
        k = frames.shape[0]
        index = np.ascontiguousarray(np.asarray(map_index, dtype=np.int64).reshape(-1))
        if index.shape != (k,):
            raise MapIndexError(f"{index.shape[0]} map indices for {k} frames")
        bad = (index < 0) | (index >= self.sum_i.shape[0])
        if bad.any():
            raise MapIndexError(f"map index {int(index[np.argmax(bad)])} outside 0..{self.sum_i.shape[0] - 1} of map {self.map_shape}")
        etas = np.broadcast_to(np.asarray(eta, dtype=np.float64), (k,))
        phis = np.broadcast_to(np.asarray(phi, dtype=np.float64), (k,))
        nus = np.broadcast_to(np.asarray(nu, dtype=np.float64), (k,))
        deltas = np.broadcast_to(np.asarray(delta, dtype=np.float64), (k,))
        if not (np.isfinite(etas).all() and np.isfinite(phis).all() and np.isfinite(nus).all() and np.isfinite(deltas).all()):
            raise OpmonError("non-finite angle among the frames' eta/phi/nu/delta")
        etas, phis = np.ascontiguousarray(etas), np.ascontiguousarray(phis)
        self.angle_sums += (k, etas.sum(), phis.sum(), nus.sum(), deltas.sum())
        # Frames of one block usually share the detector position: one kernel call per run of it.
        moved = np.flatnonzero((nus[1:] != nus[:-1]) | (deltas[1:] != deltas[:-1])) + 1
        r0, r1, c0, c1 = self.roi
        for start, stop in zip([0, *moved.tolist()], [*moved.tolist(), k]):
            self._use_detector_angles(float(nus[start]), float(deltas[start]))
            kernels.accumulate_block(frames[start:stop], etas[start:stop], phis[start:stop], index[start:stop],
                                     self._q_lab, self.detector_mask, r0, r1, c0, c1, self.threshold, self.despeckle,
                                     BACKGROUND_ROW_STRIDE, self._roi_moments, *self._sums())

    def _sums(self) -> tuple[np.ndarray, ...]:
        """The sums arrays in the kernels' argument order (that of STATE_KEYS)."""
        return (self.sum_i, self.sum_iq, self.sum_iqq, self.n_frames, self.bg_counts, self.bg_q, self.bg_qq)

    # -- combining and results ----------------------------------------------------------
    @property
    def frames_seen(self) -> int:
        return int(self.n_frames.sum())

    def _fold_angles(self) -> None:
        """Move the live path's per-frame angle sums into `angle_sums`."""
        if self._angles[0]:
            self.angle_sums += self._angles
            self._angles = [0.0] * 5

    def state(self) -> dict[str, np.ndarray]:
        """The additive sums, for shipping partial results between processes."""
        self._fold_angles()
        return {key: getattr(self, key) for key in SHIPPED_KEYS}

    def load_state(self, state: dict[str, np.ndarray], add: bool = True) -> None:
        """Add (or replace with) sums from `state()` of an accumulator of the same map (a state
        without angle sums, from an older sender, leaves the angles unknown: no truncation flags)."""
        self._fold_angles()
        for key in SHIPPED_KEYS:
            if key == ANGLE_KEY and key not in state:
                continue
            mine = getattr(self, key)
            theirs = np.asarray(state[key])
            if theirs.shape != mine.shape:
                raise FrameShapeError(f"state {key!r} has shape {theirs.shape}, expected {mine.shape}")
            if add:
                mine += theirs
            else:
                mine[...] = theirs

    @classmethod
    def from_state(cls, geometry: DetectorGeometry, map_shape: tuple[int, int], state: dict[str, np.ndarray],
                   **options: Any) -> "MomentAccumulator":
        acc = cls(geometry, map_shape, **options)
        acc.load_state(state, add=False)
        return acc

    def merge(self, other: "MomentAccumulator") -> None:
        """Add another accumulator's sums (same map, ROI and options) into this one."""
        if other.map_shape != self.map_shape or other.roi != self.roi or other.despeckle != self.despeckle:
            raise OpmonError(f"cannot merge accumulators of map {other.map_shape} ROI {other.roi} into map {self.map_shape} ROI {self.roi}")
        self.load_state(other.state())

    def reset(self) -> None:
        self._angles = [0.0] * 5
        for key in SHIPPED_KEYS:
            getattr(self, key)[...] = 0

    def mean_angles(self) -> tuple[float, float, float, float] | None:
        """Mean eta, phi, nu, delta (deg) of the frames summed, None before any."""
        self._fold_angles()
        n = self.angle_sums[0]
        return tuple(float(v) for v in self.angle_sums[1:] / n) if n > 0 else None  # type: ignore[return-value]

    def background_rate(self) -> float:
        """Background counts per pixel per frame used by finalize()."""
        if self.background is None:
            return 0.0
        if self.background != "auto":
            return float(self.background)
        frames = self.frames_seen
        if frames == 0:
            return 0.0
        if self.n_outside_pixels == 0:
            return self._background_inside()
        return float(self.bg_counts.sum()) / (frames * self.n_outside_pixels)

    def _background_inside(self) -> float:
        """The rate when the ROI leaves no pixel outside it (the full frame, e.g. the auto ROI's
        fallback): the FULL_FRAME_BACKGROUND_QUANTILE of the map pixels' counts per ROI pixel per
        frame, i.e. what map points off the particle see (below the mask rule's fraction of the
        brightest), so the subtraction is not silently off; with no such map point, 0 and a warning."""
        seen = self.n_frames > 0
        if seen.sum() < FULL_FRAME_MIN_PIXELS or self.n_roi_pixels == 0:
            return 0.0
        per_pixel = self.sum_i[seen] / (self.n_frames[seen] * self.n_roi_pixels)
        low = float(np.quantile(per_pixel, FULL_FRAME_BACKGROUND_QUANTILE))
        if not 0.0 < low <= MASK_FRACTION * float(np.max(per_pixel)):   # no map point looks off the particle
            if self.roi not in _WARNED_NO_BACKGROUND:      # once per ROI, not per partial map
                _WARNED_NO_BACKGROUND.add(self.roi)
                log.warning("ROI %s leaves no pixel outside it and no map point is off the particle: "
                            "background not subtracted", self.roi)
            return 0.0
        return low

    def finalize(self, partial: bool = False) -> MapResult:
        """Derive the maps. The background rate is estimated over the whole map (all its frames)
        because one map pixel's outside-ROI counts are too few for a stable rate.

        partial=True allows a map without intensity yet (live previews)."""
        rate = self.background_rate()
        s0 = self.sum_i - rate * self.n_roi_pixels * self.n_frames
        s1 = self.sum_iq - rate * self.bg_q
        s2 = self.sum_iqq - rate * self.bg_qq
        ny, nx = self.map_shape
        result = derive_maps(s0.reshape(ny, nx), s1.reshape(ny, nx, 3), s2.reshape(ny, nx, 3, 3),
                             self.n_frames.reshape(ny, nx), background=rate, require_signal=not partial)
        angles = self.mean_angles()
        valid = result.mask.astype(bool)
        if angles is not None and valid.any():    # only valid pixels have a peak to place
            q = result.q[valid]
            cov = s2.reshape(ny, nx, 3, 3)[valid] / s0.reshape(ny, nx)[valid][:, None, None] - q[:, :, None] * q[:, None, :]
            cut = truncated(self.geometry, self.roi, q, cov, *angles)
            result.flags[valid] |= np.where(cut, FLAG_EDGE, 0).astype(np.uint8)
        return result


def warm_up_kernels() -> None:
    """Load the compiled kernels for every frame type a live service meets (writable and
    read-only ZeroMQ buffers, uint16 and uint32) now, not on the first real frame: loading
    one specialization from numba's cache takes a few hundred ms, enough to back up a stream."""
    geometry = DetectorGeometry(10000.0, 1.0, (5.5e-5, 5.5e-5), (0.0, 0.0), (16, 16))
    for dtype in (np.uint16, np.uint32):
        for writeable in (True, False):
            frame = np.ones((16, 16), dtype=dtype)
            frame.flags.writeable = writeable
            acc = MomentAccumulator(geometry, (1, 1), roi=(4, 12, 4, 12))
            acc.process_frame(frame, 0, 10.0, 0.0, 0.0, 30.0)
            acc.process_block(frame[None], [0], [10.0], [0.0], 0.0, 30.0)
            acc.finalize(partial=True)
