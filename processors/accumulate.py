"""MomentAccumulator: additive per-map-pixel sums Σ I, Σ I·q, Σ I·q⊗q, shaped like a LiberTEM UDF.

Frames may arrive in any order and for any map pixel; two accumulators of disjoint frame
sets merge by addition into exactly what one pass gives. `opmon process` and the live
processor both use this class, so live and offline maps agree by construction.

Background: real photon-counting frames hold a diffuse background (1e-3 to 1e-2 counts per
pixel per frame, often with a gradient across the detector) that pulls a plain centre of
mass toward the ROI centre. With ``background="auto"`` a plane (`background.fit_plane`) is
fitted to the per-pixel counts outside the ROI over all frames of the map, and its expected
contribution (the rotated moments of the ROI pixels weighted by the plane) is subtracted in
`finalize`; ``"flat"`` is one rate (the earlier rule), a float a fixed rate, an array
(rows, cols) a given per-pixel image (a measured dark/flat, counts per frame), None none.
An ROI covering the whole frame leaves no pixel outside it: the rate then comes from the map
points off the particle (`_background_inside`).

Monitor: frames given with their incident-beam monitor are divided by it before the sums, and
`finalize` multiplies by the map's mean monitor, so Σ I stays in counts (at the mean beam)
while a beam drop no longer dims half the map.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from opmon.errors import FrameShapeError, MapIndexError, OpmonError
from opmon.processors import kernels, kernels_rows
from opmon.processors.background import Plane, basis_images, fit_plane, outside_pixels
from opmon.processors.geometry import DetectorGeometry, pixel_q_lab_window
from opmon.processors.maps import FLAG_EDGE, LOW_COUNTS, MASK_FRACTION, MapResult, derive_maps, map_flags
from opmon.processors import powder_spots
from opmon.processors.powder_spots import SpotTable, correct_block
from opmon.processors.truncation import truncated

Roi = tuple[int, int, int, int]  # (r0, r1, c0, c1), half-open, frame pixels
Background = Literal["auto", "flat"] | float | npt.NDArray[np.float64] | None

log = logging.getLogger(__name__)
_WARNED_NO_BACKGROUND: set[tuple[int, int, int, int]] = set()

BACKGROUND_ROW_STRIDE = 32  # every 32nd row is read whole for the background outside the ROI
MIN_BACKGROUND_POINTS = 8   # map points outside the particle needed to fit the background inside the ROI

#: the sums of the moment kernel (bit for bit those of tests/processors/previous_kernels.py)
MOMENT_KEYS = ("sum_i", "sum_iq", "sum_iqq", "n_frames", "bg_counts", "bg_q", "bg_qq")
#: sums added for the background image, the rocking-curve flag and the monitor (see kernels._accumulate_one)
EXTRA_KEYS = ("bg_basis_q", "bg_basis_qq", "bg_image", "pixel_sums")
#: columns of `pixel_sums` (npix, 6), one array so the kernel stays within numba's inlining limit of 30 arguments:
#: all counts outside the ROI, Σ I·η, Σ I·η², Σ η, Σ η², Σ monitor
PIXEL_SUMS = ("bg_raw", "eta_sum_i", "eta_sum_i2", "eta_sum", "eta_sum2", "monitor_sum")
STATE_KEYS = MOMENT_KEYS + EXTRA_KEYS
#: the state arrays with one row per map pixel (the others, `bg_image`, are per detector row)
PER_PIXEL_KEYS = tuple(key for key in STATE_KEYS if key != "bg_image")
#: frames counted and their summed eta, phi, nu, delta: where the peaks sit on the detector (truncation flags)
ANGLE_KEY = "angle_sums"
SHIPPED_KEYS = (*STATE_KEYS, ANGLE_KEY)  # everything `state()` holds: additive, merged by addition
#: with no pixel outside the ROI, the background rate is this quantile of the map pixels' rates (map points
#: off the particle: a particle filling more than 90 % of the map would be partly subtracted), once the map
#: holds at least FULL_FRAME_MIN_PIXELS pixels with frames
FULL_FRAME_BACKGROUND_QUANTILE = 0.1
FULL_FRAME_MIN_PIXELS = 10


class MomentAccumulator:
    """Accumulate one map's moments frame by frame.

    Parameters
    ----------
    geometry : detector placement and energy.
    map_shape : (ny, nx) of the map grid.
    roi : (r0, r1, c0, c1) detector window summed around the peak; None = whole frame.
    detector_mask : (rows, cols) uint8, 1 = dead/hot pixel to ignore.
    threshold : counts below this value are ignored (0 keeps every count).
    background : "auto" (a plane fitted outside the ROI), "flat", a fixed rate in
        counts/pixel/frame, a (rows, cols) image in counts/pixel/frame, or None.
    despeckle : drop lone single counts (no counting 8-neighbour) before summing; see
        `kernels.frame_moments`. It removes a large share of a broad focused-beam peak's
        photons and shifts it, so it is off by default: the background image is subtracted
        in expectation instead.
    low_counts : map pixels whose Σ I is below this many counts get `maps.FLAG_LOW_COUNTS`.
    exact_kernel : always use the per-pixel kernel (`kernels`); by default, with threshold 0 and
        despeckle off, frames go through `kernels_rows` (q as a fitted quadratic along row
        segments, within `kernels_rows.REL_TOL` of the exact q) wherever its fit holds.
    spots : powder-arc spots (`powder_spots.SpotTable`, inside the ROI) replaced in every frame of
        their eta scan by the level around them (`powder_spots.correct_block`); None: none.
    """

    def __init__(self, geometry: DetectorGeometry, map_shape: tuple[int, int], *, roi: Roi | None = None,
                 detector_mask: npt.NDArray[np.uint8] | None = None, threshold: int = 0,
                 background: Background = "auto", despeckle: bool = False, low_counts: float = LOW_COUNTS,
                 exact_kernel: bool = False, spots: SpotTable | None = None) -> None:
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
        self.background = background
        if isinstance(background, np.ndarray):
            if background.shape != (rows, cols) or not np.isfinite(background).all():
                raise OpmonError(f"background image of shape {background.shape} must be finite and {rows} x {cols} (the frame)")
            basis = background[None].astype(np.float64)
        elif background is None or background in ("auto", "flat") or (
                isinstance(background, (int, float)) and not isinstance(background, bool) and background >= 0):
            basis = basis_images((rows, cols)) if background == "auto" else np.zeros((0, rows, cols))
        else:
            raise OpmonError(f"background {background!r} must be 'auto', 'flat', a rate >= 0, an image or None")
        self._basis = np.ascontiguousarray(basis[:, r0:r1, c0:c1] * (detector_mask[r0:r1, c0:c1] == 0))
        self.despeckle = bool(despeckle)
        self.low_counts = float(low_counts)
        self.exact_kernel = bool(exact_kernel) or self.threshold > 0 or self.despeckle   # per-pixel rules: exact kernel
        self._fast: tuple[np.ndarray, ...] | None = None   # the fast kernel's tables at the detector position
        self.spots = self._check_spots(spots)
        self.spot_counts_removed = 0.0   # counts of spot pixels replaced by their fill (monitor-normalised)
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
        k = self._basis.shape[0]
        self.bg_basis_q = np.zeros((npix, k, 3))
        self.bg_basis_qq = np.zeros((npix, k, 3, 3))
        self.bg_image = np.zeros((rows // BACKGROUND_ROW_STRIDE + 1, cols))
        self.pixel_sums = np.zeros((npix, len(PIXEL_SUMS)))
        self.angle_sums = np.zeros(5)             # frames, Σ eta, Σ phi, Σ nu, Σ delta (see ANGLE_KEY)
        self._angles = [0.0] * 5                  # the live path's per-frame share, folded into angle_sums on demand
        self._detector_angles: tuple[float, float] | None = None
        self._q_lab = np.zeros((0, 0, 3))
        self._roi_moments = np.zeros(kernels.N_MOMENTS + 1)
        self._basis_moments = np.zeros((k, kernels.N_MOMENTS + 2))

    def __getattr__(self, name: str) -> np.ndarray:
        """The columns of `pixel_sums` by name (`PIXEL_SUMS`), e.g. ``acc.monitor_sum``."""
        sums = self.__dict__.get("pixel_sums")
        if name in PIXEL_SUMS and sums is not None:
            return sums[:, PIXEL_SUMS.index(name)]  # type: ignore[no-any-return]
        raise AttributeError(name)

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
        self._basis_moments = basis_moments(self._basis, self._q_lab)
        poly = None if self.exact_kernel else kernels_rows.roi_polynomials(self.geometry, nu, delta, self.roi)
        self._fast = None if poly is None else poly.tables(roi_mask)
        self._detector_angles = (nu, delta)

    def _check_frames(self, frames: np.ndarray) -> None:
        if frames.shape[-2:] != self.geometry.frame_shape:
            raise FrameShapeError(f"frame shape {frames.shape[-2:]} differs from the detector's {self.geometry.frame_shape}")
        if frames.dtype not in (np.uint16, np.uint32, np.uint8):
            raise FrameShapeError(f"frame dtype {frames.dtype} is not an unsigned integer count type (uint8/16/32)")

    def process_frame(self, frame: npt.NDArray[Any], map_index: int, eta: float, phi: float, nu: float, delta: float,
                      monitor: float | None = None) -> None:
        """Add one frame (rows, cols) taken at the given angles (deg) to map pixel `map_index`;
        `monitor` is its incident-beam monitor reading (None: not normalised).

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
        reading = 1.0 if monitor is None else float(monitor)
        if not (math.isfinite(reading) and reading > 0):
            raise OpmonError(f"incident-beam monitor reads {monitor!r} on a frame of map pixel {map_index}: "
                             "cannot normalise by it (no beam?); process without the monitor")
        self._use_detector_angles(float(nu), float(delta))
        a = self._angles
        a[0] += 1.0; a[1] += eta; a[2] += phi; a[3] += nu; a[4] += delta  # noqa: E702 (plain floats: ~100 ns)
        r0, r1, c0, c1 = self.roi
        if self._fast is not None:
            kernels_rows.accumulate_frame_rows(frame, float(eta), float(phi), int(map_index), reading, self._fast,
                                               self.detector_mask, r0, r1, c0, c1, BACKGROUND_ROW_STRIDE,
                                               self._roi_moments, self._basis_moments, *self._sums())
        else:
            kernels.accumulate_frame(frame, float(eta), float(phi), int(map_index), reading, self._q_lab,
                                     self.detector_mask, r0, r1, c0, c1, self.threshold, self.despeckle,
                                     BACKGROUND_ROW_STRIDE, self._roi_moments, self._basis_moments, *self._sums())
        if self.spots is not None:
            self._replace_spots(frame[None], np.array([eta]), np.array([phi]), np.array([map_index]), np.array([reading]))

    def process_block(self, frames: npt.NDArray[Any], map_index: npt.ArrayLike, eta: npt.ArrayLike,
                      phi: npt.ArrayLike, nu: npt.ArrayLike, delta: npt.ArrayLike,
                      monitor: npt.ArrayLike | None = None) -> None:
        """Add a block of frames (k, rows, cols); angles (and the incident-beam `monitor`, None:
        not normalised) are per frame (k,) or scalars.

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
        npix = self.sum_i.shape[0]
        if k and (index.min() < 0 or index.max() >= npix):
            bad = (index < 0) | (index >= npix)
            raise MapIndexError(f"map index {int(index[np.argmax(bad)])} outside 0..{npix - 1} of map {self.map_shape}")
        # eta, phi, nu, delta and monitor as the rows of one array: a scalar or a (k,) array each; one
        # finiteness check and one sum for all (each separate numpy call costs ~1 µs: on ROI frames a
        # block's Python was ~1 µs a frame beside ~5 µs of kernel)
        angles = np.empty((5, k))
        angles[0], angles[1], angles[2], angles[3] = eta, phi, nu, delta
        angles[4] = 1.0 if monitor is None else monitor
        etas, phis, nus, deltas, monitors = angles
        if not np.isfinite(angles[:4]).all():
            raise OpmonError("non-finite angle among the frames' eta/phi/nu/delta")
        if not (np.isfinite(monitors).all() and (monitors > 0).all()):
            bad_at = int(np.argmin(np.isfinite(monitors) & (monitors > 0)))
            raise OpmonError(f"incident-beam monitor reads {float(monitors[bad_at]):g} on a frame of map pixel {int(index[bad_at])}: "
                             "cannot normalise by it (no beam?); process without the monitor")
        self.angle_sums[0] += k
        self.angle_sums[1:] += angles[:4].sum(axis=1)
        # Frames of one block usually share the detector position: one kernel call per run of it.
        moved = np.flatnonzero((nus[1:] != nus[:-1]) | (deltas[1:] != deltas[:-1])) + 1
        r0, r1, c0, c1 = self.roi
        for start, stop in zip([0, *moved.tolist()], [*moved.tolist(), k]):
            self._use_detector_angles(float(nus[start]), float(deltas[start]))
            if self._fast is not None:
                kernels_rows.accumulate_block_rows(frames[start:stop], etas[start:stop], phis[start:stop],
                                                   index[start:stop], monitors[start:stop], self._fast,
                                                   self.detector_mask, r0, r1, c0, c1, BACKGROUND_ROW_STRIDE,
                                                   self._roi_moments, self._basis_moments, *self._sums())
            else:
                kernels.accumulate_block(frames[start:stop], etas[start:stop], phis[start:stop], index[start:stop],
                                         monitors[start:stop], self._q_lab, self.detector_mask, r0, r1, c0, c1,
                                         self.threshold, self.despeckle, BACKGROUND_ROW_STRIDE, self._roi_moments,
                                         self._basis_moments, *self._sums())
            if self.spots is not None:
                self._replace_spots(frames[start:stop], etas[start:stop], phis[start:stop], index[start:stop],
                                    monitors[start:stop])

    def _check_spots(self, spots: SpotTable | None) -> SpotTable | None:
        """The spot table when it holds spots, all of whose pixels lie inside the ROI."""
        if spots is None or spots.n_spots == 0:
            return None
        r0, r1, c0, c1 = self.roi
        cols = self.geometry.frame_shape[1]
        if spots.cols != cols:
            raise OpmonError(f"powder-arc spots of {spots.cols}-column frames given for {cols}-column frames")
        for pix in (spots.core_pix, spots.ring_pix):
            rr, cc = pix // cols, pix % cols
            if not ((rr >= r0) & (rr < r1) & (cc >= c0) & (cc < c1)).all():
                raise OpmonError(f"powder-arc spot pixels outside the ROI {self.roi}: spots are found inside the ROI they are removed from")
        return spots

    def _replace_spots(self, frames: np.ndarray, etas: np.ndarray, phis: np.ndarray, index: np.ndarray,
                       monitors: np.ndarray) -> None:
        """Replace the powder-arc spots of these frames (already summed by the kernel) by their fill:
        the particle's local shape scaled to the counts of a ring around each (`powder_spots`)."""
        spots = self.spots
        assert spots is not None
        scans = spots.scans_of(etas)
        if (scans < 0).all():
            return
        self.spot_counts_removed += correct_block(
            frames, scans, np.ascontiguousarray(etas, dtype=np.float64), np.ascontiguousarray(phis, dtype=np.float64),
            np.ascontiguousarray(index, dtype=np.int64), np.ascontiguousarray(monitors, dtype=np.float64),
            spots.scan_ptr, spots.core_ptr, spots.core_pix, spots.ring_ptr, spots.ring_pix, spots.core_shape, spots.ring_shape,
            self._q_lab,
            self.roi[0], self.roi[2], self.threshold, powder_spots.FRAME_SIGMA, self.sum_i, self.sum_iq, self.sum_iqq, self.pixel_sums)

    def _sums(self) -> tuple[np.ndarray, ...]:
        """The sums arrays in the kernels' argument order (that of STATE_KEYS)."""
        return tuple(getattr(self, key) for key in STATE_KEYS)

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

    def mean_monitor(self) -> float:
        """The map's mean incident-beam monitor (1.0 when its frames came without one)."""
        frames = self.frames_seen
        return float(self.monitor_sum.sum()) / frames if frames else 1.0

    def measured_background(self, per_frame: float | None = None) -> float:
        """Counts per pixel per frame outside the ROI as the detector saw them (every count, before
        despeckle and threshold; at the mean monitor): what the background IS, for reports.
        ``per_frame``: the ROI's background per frame when the caller derived it already
        (`finalize`), so a full-frame ROI does not derive its plane twice."""
        frames = self.frames_seen
        if frames == 0:
            return 0.0
        if self.n_outside_pixels == 0:   # the whole frame is the ROI: what the map points off the particle saw
            return self.background_rate(per_frame)
        return float(self.bg_raw.sum()) / (frames * self.n_outside_pixels) * self.mean_monitor()

    def background_plane(self) -> Plane:
        """The background subtracted in `finalize`, per monitor count when frames carry a monitor
        (the kept counts: what despeckle and threshold leave of it, as in the ROI)."""
        frames = self.frames_seen
        if self.background is None or isinstance(self.background, np.ndarray):
            return Plane(0.0)
        if self.background not in ("auto", "flat"):
            return Plane(float(self.background) / self.mean_monitor())
        if frames == 0:
            return Plane(0.0)
        if self.n_outside_pixels == 0:     # the ROI is the whole frame: the map points off the particle
            return Plane(self._background_inside())
        flat = Plane(float(self.bg_counts.sum()) / (frames * self.n_outside_pixels), pixels=self.n_outside_pixels)
        if self.background == "flat":
            return flat
        keep = outside_pixels(self.geometry.frame_shape, self.roi, self.detector_mask, BACKGROUND_ROW_STRIDE)
        plane = fit_plane(self.bg_image, keep, self.geometry.frame_shape, BACKGROUND_ROW_STRIDE, frames) or flat
        return self._fit_map_points(plane)

    def _fit_map_points(self, plane: Plane) -> Plane:
        """Refit the plane inside the ROI from the map points outside the particle.

        The sampled rows outside the ROI are few, and a plane fitted there is extrapolated into
        the ROI (a 2 % error of its level there moves d by 1e-4 Å when the ROI is wide). The map
        points that hold no Bragg signal hold the background of the ROI itself, over every ROI
        pixel of every frame: their Σ I and Σ I·q are linear in the plane's coefficients through
        the same rotated basis moments `finalize` subtracts, so a least-squares fit to them
        measures the plane where it is used. Points whose Σ I stands 3 Poisson sigmas above the
        current plane are signal; the fit is repeated as the plane settles. Needs
        MIN_BACKGROUND_POINTS such points, else the outside fit stands.
        """
        seen = self.n_frames > 0
        n = self.n_frames.astype(np.float64)
        sizes = np.array([self.n_roi_pixels, *self._basis.sum(axis=(1, 2))])
        scale_q = float(np.linalg.norm(self.bg_q.sum(axis=0))) / max(float(self.n_roi_pixels * n.sum()), 1.0)
        if not scale_q > 0:
            return plane
        coef = np.array([plane.c0, plane.cu, plane.cv])
        points = 0
        counts = self.mean_monitor()     # the sums are per monitor count: Poisson sigmas are taken in counts
        for _ in range(3):
            expected = n * float(sizes @ coef)
            quiet = seen & ((self.sum_i - expected) * counts < 3.0 * np.sqrt(np.clip(expected * counts, 1.0, None)))
            points = int(quiet.sum())
            if points < MIN_BACKGROUND_POINTS:
                return plane
            rows0 = n[quiet, None] * sizes[None, :]                                       # Σ I = n·(c · sizes)
            rows1 = np.concatenate([self.bg_q[quiet, None, :], self.bg_basis_q[quiet]], axis=1) / scale_q  # Σ I·q
            design = np.concatenate([rows0, rows1.transpose(0, 2, 1).reshape(-1, 3)])
            target = np.concatenate([self.sum_i[quiet], (self.sum_iq[quiet] / scale_q).reshape(-1)])
            coef = np.linalg.lstsq(design, target, rcond=None)[0]
        return Plane(float(coef[0]), float(coef[1]), float(coef[2]), points)

    def background_rate(self, per_frame: float | None = None) -> float:
        """Mean background counts per ROI pixel per frame that finalize() subtracts (at the mean
        monitor); ``per_frame`` as `corrected_sums` returns it, derived here when not given."""
        if per_frame is None:
            per_frame = self._per_frame(self.background_plane())
        return per_frame / max(self.n_roi_pixels, 1) * self.mean_monitor()

    def _per_frame(self, plane: Plane) -> float:
        """Background counts the ROI holds per frame (per monitor count)."""
        return plane.c0 * self.n_roi_pixels + float(np.dot(self._basis_coefficients(plane), self._basis.sum(axis=(1, 2))))

    def _basis_coefficients(self, plane: Plane) -> npt.NDArray[np.float64]:
        if isinstance(self.background, np.ndarray):
            return np.array([1.0 / self.mean_monitor()])
        return plane.basis if self._basis.shape[0] else np.zeros(0)

    def corrected_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """Σ I, Σ I·q, Σ I·q⊗q of every summed row less the expected background image, at the map's
        mean monitor (flat, one row per pixel of the sums: additive, so they can be moved and
        added), with the background per frame (per monitor count) and the monitor scale used."""
        plane = self.background_plane()
        coef = self._basis_coefficients(plane)
        per_frame = self._per_frame(plane)
        scale = self.mean_monitor()
        s0 = (self.sum_i - per_frame * self.n_frames) * scale
        s1 = (self.sum_iq - plane.c0 * self.bg_q - np.einsum("k,pka->pa", coef, self.bg_basis_q)) * scale
        s2 = (self.sum_iqq - plane.c0 * self.bg_qq - np.einsum("k,pkab->pab", coef, self.bg_basis_qq)) * scale
        return s0, s1, s2, per_frame, scale

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
        """Derive the maps. The background is estimated over the whole map (all its frames)
        because one map pixel's outside-ROI counts are too few for a stable rate.

        partial=True allows a map without intensity yet (live previews)."""
        s0, s1, s2, per_frame, scale = self.corrected_sums()
        ny, nx = self.map_shape
        result = derive_maps(s0.reshape(ny, nx), s1.reshape(ny, nx, 3), s2.reshape(ny, nx, 3, 3),
                             self.n_frames.reshape(ny, nx), background=self.measured_background(per_frame),
                             require_signal=not partial,
                             background_counts=(per_frame * scale * self.n_frames).reshape(ny, nx))
        eta_i = (self.eta_sum_i - per_frame * self.eta_sum) * scale
        eta_i2 = (self.eta_sum_i2 - per_frame * self.eta_sum2) * scale
        result.flags = map_flags(s0.reshape(ny, nx), eta_i.reshape(ny, nx), eta_i2.reshape(ny, nx),
                                 self.eta_sum.reshape(ny, nx), self.eta_sum2.reshape(ny, nx),
                                 self.n_frames.reshape(ny, nx), self.low_counts)
        self.flag_truncated(result, s0.reshape(ny, nx), s2.reshape(ny, nx, 3, 3))
        return result

    def flag_truncated(self, result: MapResult, s0: npt.NDArray[np.float64], s2: npt.NDArray[np.float64]) -> None:
        """Set `maps.FLAG_EDGE` on the valid pixels whose peak the ROI or the detector edge cuts
        (`truncation.truncated`, at the map's mean angles; s0 (ny, nx), s2 (ny, nx, 3, 3) the
        corrected sums the maps came from)."""
        angles = self.mean_angles()
        valid = result.mask.astype(bool)
        if angles is None or not valid.any():    # only valid pixels have a peak to place
            return
        q = result.q[valid]
        cov = s2[valid] / s0[valid][:, None, None] - q[:, :, None] * q[:, None, :]
        cut = truncated(self.geometry, self.roi, q, cov, *angles)
        result.flags[valid] |= np.where(cut, FLAG_EDGE, 0).astype(np.uint8)


def basis_moments(basis: npt.NDArray[np.float64], q_lab: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(K, 12) lab moments [S0, S1 (3), S2 (6)] of each basis image (K, rows, cols) over the ROI's q table."""
    out = np.zeros((basis.shape[0], kernels.N_MOMENTS + 2))
    if basis.shape[0] == 0:
        return out
    qx, qy, qz = q_lab[..., 0], q_lab[..., 1], q_lab[..., 2]
    for k, weights in enumerate(basis):
        out[k, :10] = [weights.sum(), (weights * qx).sum(), (weights * qy).sum(), (weights * qz).sum(),
                       (weights * qx * qx).sum(), (weights * qx * qy).sum(), (weights * qx * qz).sum(),
                       (weights * qy * qy).sum(), (weights * qy * qz).sum(), (weights * qz * qz).sum()]
    return out


def warm_up_kernels() -> None:
    """Load the compiled kernels for every frame type a live service meets (writable and
    read-only ZeroMQ buffers, uint16 and uint32; the fast and the exact kernel) now, not on the
    first real frame: loading one specialization from numba's cache takes a few hundred ms, enough to back up a stream."""
    geometry = DetectorGeometry(10000.0, 1.0, (5.5e-5, 5.5e-5), (0.0, 0.0), (16, 16))
    for dtype, writeable, exact in itertools.product((np.uint16, np.uint32), (True, False), (False, True)):
        frame = np.ones((16, 16), dtype=dtype)
        frame.flags.writeable = writeable
        acc = MomentAccumulator(geometry, (1, 1), roi=(4, 12, 4, 12), exact_kernel=exact)
        acc.process_frame(frame, 0, 10.0, 0.0, 0.0, 30.0)
        acc.process_frame(frame, 0, 10.0, 0.0, 0.0, 30.0, monitor=2.0)
        acc.process_block(frame[None], [0], [10.0], [0.0], 0.0, 30.0)
        acc.finalize(partial=True)
