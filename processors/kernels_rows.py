"""The accumulator's fast kernel: branch-free per-segment column moments instead of a walk over pixels.

`kernels.frame_moments_image` visits every pixel with counts and adds its ten float moments
with the pixel's q from a table: per pixel a branch, a table read and ten multiply-adds that
the compiler cannot vectorize. Here each ROI row is cut into the fewest equal segments
(`RowPolynomials`) over which q is a quadratic in the column offset c from the segment's
centre, q(c) ≈ a + b·c + e·c², to within `REL_TOL` of |q| (fitted once per ROI and detector
position; none fits: the exact kernel). Then

    Σ v·q = a·M0 + b·M1 + e·M2,    Σ v·q⊗q = Σ_k P_k·M_k (P the product polynomial's coefficients)

with the segment's five column moments M_k = Σ v·c^k (k = 0..4): one branch-free loop over
the segment's counts that LLVM's loop vectorizer turns into packed AVX-512/AVX2 multiply-adds
(float64 with reassociation allowed: each product v·c^k and partial sum is an integer, exact
below 2^53, i.e. for counts below ~2 million per pixel on a 512-column segment, so the order
does not matter). Empty segments are skipped after a vectorized OR, as in `kernels`. The maps
are those of the exact kernel with q replaced by its fitted quadratic: the first and second
moments are both moments of that one q map, so the peak width (a difference of them) is not
thrown off (the products' c³ and c⁴ terms keep them consistent). `opmon bench process --accuracy` measures the maps against the
exact kernel's (|Δd| ~1e-12 Å on the truth harness's maps).

Masked pixels multiply their counts by 0 (only in segments whose mask holds one). Threshold
and despeckle (per-pixel decisions) and geometries whose quadratic misses `REL_TOL` use the
exact kernel (`MomentAccumulator` chooses). The background image of the sampled rows and
the rotation into the sample frame are the exact kernel's own functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from opmon.processors.geometry import DetectorGeometry, pixel_q_lab_window
from opmon.processors.kernels import N_MOMENTS, _outside_counts, add_frame_moments, store_moments

#: the quadratic's largest error over the ROI, relative to |q|: d moves by at most d x REL_TOL (1e-7 Å at d = 10 Å)
REL_TOL = 1e-8
MIN_SEGMENT = 16   # columns: narrower segments than this would not pay for their per-segment sums
N_POWERS = 5       # column moments M0..M4: enough for the products of two quadratics
PROBE_ROWS = 33    # ROI rows each segment count is tried on before the whole ROI (`row_polynomials`)
#: the ten moments in kernels' order [S0, Sx, Sy, Sz, Sxx, Sxy, Sxz, Syy, Syz, Szz] as q components (-1: none)
_PAIRS = ((-1, -1), (0, -1), (1, -1), (2, -1), (0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
FASTMATH = {"reassoc", "contract", "nsz"}  # reassociation lets the float reductions vectorize; no nnan/ninf assumed


@dataclass(frozen=True)
class RowPolynomials:
    """Per ROI row and segment, the coefficients turning five column moments into the ten moments.

    coef : (rows, segments, 10, 5) float64; moment j of a segment = Σ_k coef[.., j, k]·M_k.
    bounds : (segments + 1,) int64 column offsets of the segments inside the ROI.
    powers : (segments, 5, widest) float64, c^k of each segment's columns, c measured from its centre.
    residual : largest |q_fit − q| / |q| over the ROI's pixels.
    """

    coef: npt.NDArray[np.float64]
    bounds: npt.NDArray[np.int64]
    powers: npt.NDArray[np.float64]
    residual: float

    def tables(self, roi_mask: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[Any], ...]:
        """What the kernels take (one tuple argument), for the detector mask's ROI window (1 = ignore)."""
        return self.coef, self.bounds, self.powers, segment_mask(roi_mask, self.bounds)


def segment_mask(roi_mask: npt.NDArray[np.uint8], bounds: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """(ROI rows, segments) 1 where a row's segment holds a masked pixel (its counts then go through the masked loop)."""
    return np.ascontiguousarray(np.logical_or.reduceat(roi_mask != 0, bounds[:-1], axis=1), dtype=np.uint8)


def _fit(q_lab: npt.NDArray[np.float64], bounds: npt.NDArray[np.int64]) -> RowPolynomials:
    """Least-squares quadratics of q's components along each row segment, and their product coefficients."""
    rows, width, _ = q_lab.shape
    nseg = bounds.size - 1
    powers = np.zeros((nseg, N_POWERS, int(np.max(np.diff(bounds)))))
    coef = np.zeros((rows, nseg, N_MOMENTS, N_POWERS))
    worst = 0.0
    norm = np.linalg.norm(q_lab, axis=-1)
    for g in range(nseg):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        c = np.arange(hi - lo, dtype=np.float64) - (hi - lo) // 2      # integer offsets: exact powers
        powers[g, :, :hi - lo] = c[None, :] ** np.arange(N_POWERS)[:, None]
        design = powers[g, :3, :hi - lo].T                                   # (w, 3): 1, c, c²
        seg = q_lab[:, lo:hi, :]                                        # (rows, w, 3)
        fit = np.linalg.pinv(design) @ seg                              # (row, power, component): least squares
        quad = fit.transpose(0, 2, 1)                                   # (row, component, power)
        miss = np.linalg.norm(design @ fit - seg, axis=-1)
        worst = max(worst, float(np.max(miss / np.maximum(norm[:, lo:hi], 1e-300))))
        for j, (a, b) in enumerate(_PAIRS):
            if a < 0:
                coef[:, g, j, 0] = 1.0
            elif b < 0:
                coef[:, g, j, :3] = quad[:, a]
            else:
                for i in range(3):
                    coef[:, g, j, i:i + 3] += quad[:, a, i:i + 1] * quad[:, b]
    return RowPolynomials(np.ascontiguousarray(coef), bounds, np.ascontiguousarray(powers), worst)


def probe_rows(rows: int) -> npt.NDArray[np.int64]:
    """The ROI rows a segment count is first tried on: PROBE_ROWS evenly spaced ones, first and last included."""
    return np.unique(np.linspace(0, rows - 1, min(rows, PROBE_ROWS)).astype(np.int64))


def row_polynomials(q_lab: npt.NDArray[np.float64], rel_tol: float = REL_TOL) -> RowPolynomials | None:
    """The fewest equal segments per row whose quadratics meet `rel_tol` (a segment's sums cost about
    as much as its pixels' moments: fewer, wider segments are faster), None if even MIN_SEGMENT-wide
    ones miss it (the exact kernel is then used).

    Each segment count is tried on `probe_rows` first: a count that misses there misses on the whole
    ROI (its residual is a maximum over rows), so only the first count meeting it there is fitted on
    every row. The answer is the plain search's, at the cost of about one whole-ROI fit: trying up to
    a hundred counts on every row of a 16M-pixel detector's ROI took a minute (the tickit EIGER2)."""
    rows, width = q_lab.shape[:2]
    counts = range(1, max(width // MIN_SEGMENT, 1) + 1)
    probe = q_lab if rows <= PROBE_ROWS else q_lab[probe_rows(rows)]
    for nseg in counts:
        if probe is not q_lab and _fit(probe, _bounds(width, nseg)).residual > rel_tol:
            if nseg == 1 and _fit(probe, _bounds(width, counts[-1])).residual > rel_tol:
                return None              # the narrowest segments miss on the probe rows already
            continue
        poly = _fit(q_lab, _bounds(width, nseg))
        if poly.residual <= rel_tol:
            return poly
    return None


def _bounds(width: int, nseg: int) -> npt.NDArray[np.int64]:
    """Column offsets of `nseg` equal segments of a `width`-column row."""
    return (np.arange(nseg + 1, dtype=np.int64) * width) // nseg


# The helpers below index the frame with unsigned offsets instead of taking slices: a slice is a
# new array whose reference count numba raises and drops (two atomic operations, ~50 ns per
# segment, more than the segment's sums), and an unsigned index needs no negative-index wraparound,
# which would keep the loops from vectorizing.

@numba.njit(cache=True, nogil=True, inline="always")
def _any_in(a, r, lo, hi):  # type: ignore[no-untyped-def]
    """OR of a[r, lo:hi] (non-zero when it holds a count or a masked pixel): branch-free, vectorized."""
    acc = np.uint64(0)
    r, lo = np.uint64(r), np.uint64(lo)
    for i in range(np.uint64(hi) - lo):
        acc |= a[r, lo + i]
    return acc


@lru_cache(maxsize=16)
def roi_polynomials(geometry: DetectorGeometry, nu: float, delta: float,
                    roi: tuple[int, int, int, int]) -> RowPolynomials | None:
    """`row_polynomials` of an ROI's q table at a detector position (cached: the live service makes
    an accumulator per partial map, and a fit takes milliseconds)."""
    return row_polynomials(pixel_q_lab_window(geometry, nu, delta, roi))


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _segment_moments(frame, r, lo, hi, powers, g, m):  # type: ignore[no-untyped-def]
    """m[k] = Σ v·c^k over frame[r, lo:hi], powers[g, k, i] = c^k of segment g's i-th column."""
    m0 = m1 = m2 = m3 = m4 = 0.0
    r, lo = np.uint64(r), np.uint64(lo)
    for i in range(np.uint64(hi) - lo):
        v = np.float64(frame[r, lo + i])
        m0 += v
        m1 += v * powers[g, 1, i]
        m2 += v * powers[g, 2, i]
        m3 += v * powers[g, 3, i]
        m4 += v * powers[g, 4, i]
    m[0], m[1], m[2], m[3], m[4] = m0, m1, m2, m3, m4


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _segment_moments_masked(frame, mask, r, lo, hi, powers, g, m):  # type: ignore[no-untyped-def]
    """`_segment_moments` with the counts of masked pixels (mask != 0) multiplied by 0."""
    m0 = m1 = m2 = m3 = m4 = 0.0
    r, lo = np.uint64(r), np.uint64(lo)
    for i in range(np.uint64(hi) - lo):
        v = np.float64(frame[r, lo + i]) * np.float64(mask[r, lo + i] == 0)
        m0 += v
        m1 += v * powers[g, 1, i]
        m2 += v * powers[g, 2, i]
        m3 += v * powers[g, 3, i]
        m4 += v * powers[g, 4, i]
    m[0], m[1], m[2], m[3], m[4] = m0, m1, m2, m3, m4


@numba.njit(cache=True, nogil=True, inline="always")
def _dot(coef, rr, g, j, m0, m1, m2, m3, m4):  # type: ignore[no-untyped-def]
    """Moment j of segment g of ROI row rr from its column moments (indexed, not sliced: see above)."""
    return (coef[rr, g, j, 0] * m0 + coef[rr, g, j, 1] * m1 + coef[rr, g, j, 2] * m2 + coef[rr, g, j, 3] * m3
            + coef[rr, g, j, 4] * m4)


@numba.njit(cache=True, nogil=True)
def frame_moments_rows(frame, coef, bounds, powers, masked, mask, r0, r1, c0, c1, stride, out, image, weight,
                       m):  # type: ignore[no-untyped-def]
    """`kernels.frame_moments_image` with threshold 0 and despeckle off, by segment column moments.

    coef, bounds, powers : a `RowPolynomials` of the ROI at the frame's detector position.
    masked : (ROI rows, segments) uint8, non-zero where a segment of a row holds a masked pixel.
    m : (5,) float64 scratch. Other arguments and `out` (12,) as in `kernels.frame_moments_image`.
    """
    rows = frame.shape[0]
    nseg = bounds.shape[0] - 1
    s0 = sx = sy = sz = sxx = sxy = sxz = syy = syz = szz = 0.0
    outside = 0
    raw = 0
    for r in range(rows):
        in_rows = r >= r0 and r < r1
        if in_rows:
            for g in range(nseg):     # no OR of the whole row first: it would read a row with counts twice
                lo, hi = c0 + bounds[g], c0 + bounds[g + 1]
                if _any_in(frame, r, lo, hi) == 0:
                    continue
                if masked[r - r0, g] == 0:
                    _segment_moments(frame, r, lo, hi, powers, g, m)
                else:
                    _segment_moments_masked(frame, mask, r, lo, hi, powers, g, m)
                rr = r - r0
                m0, m1, m2, m3, m4 = m[0], m[1], m[2], m[3], m[4]
                s0 += m0
                sx += _dot(coef, rr, g, 1, m0, m1, m2, m3, m4)
                sy += _dot(coef, rr, g, 2, m0, m1, m2, m3, m4)
                sz += _dot(coef, rr, g, 3, m0, m1, m2, m3, m4)
                sxx += _dot(coef, rr, g, 4, m0, m1, m2, m3, m4)
                sxy += _dot(coef, rr, g, 5, m0, m1, m2, m3, m4)
                sxz += _dot(coef, rr, g, 6, m0, m1, m2, m3, m4)
                syy += _dot(coef, rr, g, 7, m0, m1, m2, m3, m4)
                syz += _dot(coef, rr, g, 8, m0, m1, m2, m3, m4)
                szz += _dot(coef, rr, g, 9, m0, m1, m2, m3, m4)
        if r % stride == 0:
            kept, seen = _outside_counts(frame, r, in_rows, c0, c1, 0, mask, False, image[r // stride], weight)
            outside += kept
            raw += seen
    store_moments(out, s0, sx, sy, sz, sxx, sxy, sxz, syy, syz, szz, outside, raw)


@numba.njit(cache=True, nogil=True)
def accumulate_block_rows(frames, etas, phis, pixels, monitors, tables, mask, r0, r1, c0, c1, stride,
                          roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq,
                          bg_basis_q, bg_basis_qq, bg_image, pixel_sums):  # type: ignore[no-untyped-def]
    """`kernels.accumulate_block` (threshold 0, despeckle off) with `frame_moments_rows` as the frame scan;
    `tables` is `RowPolynomials.tables`."""
    coef, bounds, powers, masked = tables
    moments = np.empty(N_MOMENTS + 2)
    scratch = np.empty((6, 3, 3))
    m = np.empty(N_POWERS)
    for f in range(frames.shape[0]):
        frame_moments_rows(frames[f], coef, bounds, powers, masked, mask, r0, r1, c0, c1, stride, moments, bg_image,
                           1.0 / monitors[f], m)
        add_frame_moments(moments, etas[f], phis[f], pixels[f], monitors[f], roi_moments, basis_moments, sum_i, sum_iq,
                          sum_iqq, n_frames, bg_counts, bg_q, bg_qq, bg_basis_q, bg_basis_qq, pixel_sums, scratch)


@numba.njit(cache=True, nogil=True)
def accumulate_frame_rows(frame, eta, phi, pixel, monitor, tables, mask, r0, r1, c0, c1, stride, roi_moments,
                          basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq, bg_basis_q,
                          bg_basis_qq, bg_image, pixel_sums):  # type: ignore[no-untyped-def]
    """`accumulate_block_rows` for one frame with scalar angles, monitor and map pixel: the live path."""
    coef, bounds, powers, masked = tables
    moments = np.empty(N_MOMENTS + 2)
    scratch = np.empty((6, 3, 3))
    m = np.empty(N_POWERS)
    frame_moments_rows(frame, coef, bounds, powers, masked, mask, r0, r1, c0, c1, stride, moments, bg_image, 1.0 / monitor, m)
    add_frame_moments(moments, eta, phi, pixel, monitor, roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames,
                      bg_counts, bg_q, bg_qq, bg_basis_q, bg_basis_qq, pixel_sums, scratch)
