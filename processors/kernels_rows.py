"""The accumulator's fast kernel: branch-free per-segment column moments instead of a walk over pixels.

`kernels.frame_moments_image` visits every pixel with counts and adds its ten float moments
with the pixel's q from a table: per pixel a branch, a table read and ten multiply-adds that
the compiler cannot vectorize. Here each ROI row is cut into the fewest equal segments
(`RowPolynomials`) over which q is a quadratic in the column offset c from the segment's
centre, q(c) ≈ a + b·c + e·c², to within `REL_TOL` of |q| (fitted once per ROI and detector
position; none fits: the exact kernel). Then

    t_a[j] = Σ v·q_a·c^j = a_a·M_j + b_a·M_(j+1) + e_a·M_(j+2),   Σ v·q_a = t_a[0],
    Σ v·q_a·q_b = a_b·t_a[0] + b_b·t_a[1] + e_b·t_a[2]

with the segment's five column moments M_k = Σ v·c^k (k = 0..4): one branch-free loop over
the segment's counts that LLVM's loop vectorizer turns into packed AVX-512/AVX2 multiply-adds
(float64 with reassociation allowed: each product v·c^k and partial sum is an integer, exact
below 2^53, i.e. for counts below ~2 million per pixel on a 512-column segment, so the order
does not matter), then 49 scalar multiply-adds from the segment's nine quadratic coefficients
(two cache lines; the expanded product coefficients, 50 a segment, missed the caches on wide
frames and cost 9-12 % more). Empty segments are skipped after a vectorized OR, as in `kernels`;
the rows PREFETCH_BYTES ahead are prefetched (`_prefetch`) so the memory keeps streaming while
rows with counts are summed. The maps
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
from llvmlite import binding as llvm, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from opmon.processors.geometry import DetectorGeometry, pixel_q_lab_window
from opmon.processors.kernels import N_MOMENTS, _outside_counts, add_frame_moments, store_moments

#: the quadratic's largest error over the ROI, relative to |q|: d moves by at most d x REL_TOL (1e-7 Å at d = 10 Å)
REL_TOL = 1e-8
MIN_SEGMENT = 16   # columns: narrower segments than this would not pay for their per-segment sums
N_POWERS = 5       # column moments M0..M4: enough for the products of two quadratics
PROBE_ROWS = 33    # ROI rows each segment count is tried on before the whole ROI (`row_polynomials`)
#: rows are prefetched this many bytes of ROI ahead of the scan (measured best of 4-16 KiB: 128x160 and 512² frames)
PREFETCH_BYTES = 8192
FASTMATH = {"reassoc", "contract", "nsz"}  # reassociation lets the float reductions vectorize; no nnan/ninf assumed


@dataclass(frozen=True)
class RowPolynomials:
    """Per ROI row and segment, the quadratic of each q component in the column offset c.

    quad : (rows, segments, 3, 3) float64; q_a(c) = Σ_i quad[.., a, i]·c^i along the segment.
    bounds : (segments + 1,) int64 column offsets of the segments inside the ROI.
    powers : (segments, 5, widest) float64, c^k of each segment's columns, c measured from its centre.
    residual : largest |q_fit − q| / |q| over the ROI's pixels.
    """

    quad: npt.NDArray[np.float64]
    bounds: npt.NDArray[np.int64]
    powers: npt.NDArray[np.float64]
    residual: float

    def tables(self, roi_mask: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[Any], ...]:
        """What the kernels take (one tuple argument), for the detector mask's ROI window (1 = ignore)."""
        return self.quad, self.bounds, self.powers, segment_mask(roi_mask, self.bounds)


def segment_mask(roi_mask: npt.NDArray[np.uint8], bounds: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """(ROI rows, segments) 1 where a row's segment holds a masked pixel (its counts then go through the masked loop)."""
    return np.ascontiguousarray(np.logical_or.reduceat(roi_mask != 0, bounds[:-1], axis=1), dtype=np.uint8)


def _fit(q_lab: npt.NDArray[np.float64], bounds: npt.NDArray[np.int64]) -> RowPolynomials:
    """Least-squares quadratics of q's components along each row segment."""
    rows, width, _ = q_lab.shape
    nseg = bounds.size - 1
    powers = np.zeros((nseg, N_POWERS, int(np.max(np.diff(bounds)))))
    quads = np.zeros((rows, nseg, 3, 3))
    worst = 0.0
    norm = np.linalg.norm(q_lab, axis=-1)
    for g in range(nseg):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        c = np.arange(hi - lo, dtype=np.float64) - (hi - lo) // 2      # integer offsets: exact powers
        powers[g, :, :hi - lo] = c[None, :] ** np.arange(N_POWERS)[:, None]
        design = powers[g, :3, :hi - lo].T                                   # (w, 3): 1, c, c²
        seg = q_lab[:, lo:hi, :]                                        # (rows, w, 3)
        fit = np.linalg.pinv(design) @ seg                              # (row, power, component): least squares
        quads[:, g] = fit.transpose(0, 2, 1)                            # (row, component, power)
        miss = np.linalg.norm(design @ fit - seg, axis=-1)
        worst = max(worst, float(np.max(miss / np.maximum(norm[:, lo:hi], 1e-300))))
    return RowPolynomials(quads, bounds, np.ascontiguousarray(powers), worst)


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


#: the intrinsic's name carries its pointer type: opaque `ptr` from LLVM 17 on (typed pointers removed), `i8*` before
_PREFETCH = "llvm.prefetch.p0" if llvm.llvm_version_info >= (17,) else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, a, r, c):  # type: ignore[no-untyped-def]
    """Ask the CPU to bring the cache line of a[r, c] in (LLVM's prefetch: read, keep in every level; no fault,
    no wait). The scan alternates a streaming read with bursts of arithmetic on rows with counts; during
    a burst the hardware prefetcher stalls and the memory idles. Asking for rows PREFETCH_BYTES ahead keeps
    the reads in flight: +18 % on 128x160 frames, +35 % on 512² (same-process A/B, loaded machine)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _PREFETCH)
        builder.call(fn, [builder.bitcast(ptr, cgutils.voidptr_t), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(a, r, c), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_row(frame, r, r0, r1, c0, c1):  # type: ignore[no-untyped-def]
    """Prefetch row r's ROI columns (the sampled rows' outside parts, 1 row in 32, are left to the hardware)."""
    if r >= r0 and r < r1:
        for c in range(c0, c1, 64 // frame.itemsize):
            _prefetch(frame, r, c)


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


@numba.njit(cache=True, nogil=True)
def frame_moments_rows(frame, quad, bounds, powers, masked, mask, r0, r1, c0, c1, stride, out, image, weight,
                       m):  # type: ignore[no-untyped-def]
    """`kernels.frame_moments_image` with threshold 0 and despeckle off, by segment column moments.

    quad, bounds, powers : a `RowPolynomials` of the ROI at the frame's detector position.
    masked : (ROI rows, segments) uint8, non-zero where a segment of a row holds a masked pixel.
    m : (5,) float64 scratch. Other arguments and `out` (12,) as in `kernels.frame_moments_image`.
    """
    rows, cols = frame.shape
    ahead = max(1, PREFETCH_BYTES // ((c1 - c0) * frame.itemsize))   # rows (the next frame's: tried, no gain)
    nseg = bounds.shape[0] - 1
    s0 = sx = sy = sz = sxx = sxy = sxz = syy = syz = szz = 0.0
    outside = 0
    raw = 0
    sampled = 0                       # the next row read whole for the background (a count, not r % stride:
    for r in range(rows):             # an integer division a row cost 4-8 % on 128x160 frames)
        if r + ahead < rows:
            _prefetch_row(frame, r + ahead, r0, r1, c0, c1)
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
                m0, m1, m2, m3, m4 = m[0], m[1], m[2], m[3], m[4]
                rr, gg = np.uint64(r - r0), np.uint64(g)    # indexed, not sliced: see above
                ax, bx, ex = quad[rr, gg, 0, 0], quad[rr, gg, 0, 1], quad[rr, gg, 0, 2]
                ay, by, ey = quad[rr, gg, 1, 0], quad[rr, gg, 1, 1], quad[rr, gg, 1, 2]
                az, bz, ez = quad[rr, gg, 2, 0], quad[rr, gg, 2, 1], quad[rr, gg, 2, 2]
                # t_a[j] = Σ v·q_a·c^j = Σ_i quad_a[i]·M[i+j]; then Σ v·q_a·q_b = Σ_j quad_b[j]·t_a[j]:
                # 9 coefficients a segment (two cache lines) instead of the 50 of the expanded products,
                # which on 512-px rows (3 x 512 segments) missed the caches the frames stream through
                tx0, tx1, tx2 = ax * m0 + bx * m1 + ex * m2, ax * m1 + bx * m2 + ex * m3, ax * m2 + bx * m3 + ex * m4
                ty0, ty1, ty2 = ay * m0 + by * m1 + ey * m2, ay * m1 + by * m2 + ey * m3, ay * m2 + by * m3 + ey * m4
                tz0, tz1, tz2 = az * m0 + bz * m1 + ez * m2, az * m1 + bz * m2 + ez * m3, az * m2 + bz * m3 + ez * m4
                s0 += m0
                sx += tx0
                sy += ty0
                sz += tz0
                sxx += ax * tx0 + bx * tx1 + ex * tx2
                sxy += ay * tx0 + by * tx1 + ey * tx2
                sxz += az * tx0 + bz * tx1 + ez * tx2
                syy += ay * ty0 + by * ty1 + ey * ty2
                syz += az * ty0 + bz * ty1 + ez * ty2
                szz += az * tz0 + bz * tz1 + ez * tz2
        if r == sampled:
            if not (in_rows and c0 == 0 and c1 == cols):   # a row the ROI spans whole has nothing outside it
                kept, seen = _outside_counts(frame, r, in_rows, c0, c1, 0, mask, False, image[r // stride], weight)
                outside += kept
                raw += seen
            sampled += stride
    store_moments(out, s0, sx, sy, sz, sxx, sxy, sxz, syy, syz, szz, outside, raw)


@numba.njit(cache=True, nogil=True)
def accumulate_block_rows(frames, etas, phis, pixels, monitors, tables, mask, r0, r1, c0, c1, stride,
                          roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq,
                          bg_basis_q, bg_basis_qq, bg_image, pixel_sums):  # type: ignore[no-untyped-def]
    """`kernels.accumulate_block` (threshold 0, despeckle off) with `frame_moments_rows` as the frame scan;
    `tables` is `RowPolynomials.tables`."""
    quad, bounds, powers, masked = tables
    moments = np.empty(N_MOMENTS + 2)
    scratch = np.empty((6, 3, 3))
    m = np.empty(N_POWERS)
    for f in range(frames.shape[0]):
        frame_moments_rows(frames[f], quad, bounds, powers, masked, mask, r0, r1, c0, c1, stride, moments, bg_image,
                           1.0 / monitors[f], m)
        add_frame_moments(moments, etas[f], phis[f], pixels[f], monitors[f], roi_moments, basis_moments, sum_i, sum_iq,
                          sum_iqq, n_frames, bg_counts, bg_q, bg_qq, bg_basis_q, bg_basis_qq, pixel_sums, scratch)


@numba.njit(cache=True, nogil=True)
def accumulate_frame_rows(frame, eta, phi, pixel, monitor, tables, mask, r0, r1, c0, c1, stride, roi_moments,
                          basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq, bg_basis_q,
                          bg_basis_qq, bg_image, pixel_sums):  # type: ignore[no-untyped-def]
    """`accumulate_block_rows` for one frame with scalar angles, monitor and map pixel: the live path."""
    quad, bounds, powers, masked = tables
    moments = np.empty(N_MOMENTS + 2)
    scratch = np.empty((6, 3, 3))
    m = np.empty(N_POWERS)
    frame_moments_rows(frame, quad, bounds, powers, masked, mask, r0, r1, c0, c1, stride, moments, bg_image, 1.0 / monitor, m)
    add_frame_moments(moments, eta, phi, pixel, monitor, roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames,
                      bg_counts, bg_q, bg_qq, bg_basis_q, bg_basis_qq, pixel_sums, scratch)
