"""numba kernels of the moment accumulator: one pass over each frame in its own integer type.

These are the exact kernels: every pixel's own q from the table. With threshold 0 and despeckle
off the accumulator takes `kernels_rows` instead (q as a fitted quadratic along row segments,
branch-free and vectorized); it shares `add_frame_moments` and `_outside_counts` with these.

A frame from a photon-counting detector is mostly zeros, so the scan is bound by reading the
frame: each row is OR-reduced (a loop the compiler vectorizes), an empty row is skipped, and a
row with counts is OR-reduced again in cache-line-sized pieces so that only the pieces holding
counts are read pixel by pixel, and there only the pixels with counts (listed as the bits of a
word, so a dense peak's zeros cost no mispredicted branch). The per-pixel wavevector table is touched only there. Sums are
taken in the lab frame (the pixel table does not change with the sample angles) and rotated
into the sample frame once per frame.

A block of frames is one call (`accumulate_block`): scan, rotation and the add into the map
pixel run without Python between frames and without temporaries per frame. Every float sum is
taken in the same order as the earlier per-word kernel (pixels row-major, then the rotation),
without fastmath, so the maps are bit-identical to it
(tests/processors/test_kernels.py checks this against a copy of that kernel).

Layout of the ten lab-frame moments of one frame: [S0, Sx, Sy, Sz, Sxx, Sxy, Sxz, Syy, Syz, Szz];
an 11th value holds the kept counts outside the ROI (on the sampled rows), a 12th all of them
(despeckle and threshold aside: the background as measured).
"""
from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

N_MOMENTS = 10
PIECE = 16  # pixels OR-reduced together inside a row with counts (64 bytes of uint32)


@numba.njit(cache=True, nogil=True, inline="always")
def _isolated(frame, r, c):  # type: ignore[no-untyped-def]
    """True when no 8-neighbour of (r, c) holds a count: a lone photon of the diffuse background."""
    rows, cols = frame.shape
    if r > 0 and r < rows - 1 and c > 0 and c < cols - 1:  # inside the frame: one branch-free OR
        up, row, down = frame[r - 1], frame[r], frame[r + 1]
        return (up[c - 1] | up[c] | up[c + 1] | row[c - 1] | row[c + 1] | down[c - 1] | down[c] | down[c + 1]) == 0
    for rr in range(max(r - 1, 0), min(r + 2, rows)):
        for cc in range(max(c - 1, 0), min(c + 2, cols)):
            if (rr != r or cc != c) and frame[rr, cc] != 0:
                return False
    return True


@numba.njit(cache=True, nogil=True, inline="always")
def _any_count(span):  # type: ignore[no-untyped-def]
    """OR of a 1-D span of counts, non-zero when it holds any count. Branch-free, so it
    vectorizes; the span is a slice indexed from 0, which lets the compiler drop numba's
    negative-index wraparound (with an offset index the loop runs ~7x slower)."""
    acc = np.uint64(0)
    for j in range(span.shape[0]):
        acc |= span[j]
    return acc


@numba.njit(cache=True, nogil=True, inline="always")
def _piece_empty(span, p):  # type: ignore[no-untyped-def]
    """True when the PIECE pixels from p hold no count (a fixed-length OR the compiler unrolls)."""
    acc = np.uint64(0)
    for i in range(PIECE):
        acc |= span[p + i]
    return acc == 0


@numba.njit(cache=True, nogil=True, inline="always")
def _span_counts(frame, r, lo, hi, threshold, mask_row, despeckle, image_row, weight):  # type: ignore[no-untyped-def]
    """Kept counts of row r between columns lo and hi (an integer: exact in any order), and all
    its unmasked counts (despeckle and threshold aside: the background as the detector saw it).

    Each kept count, times the frame's monitor weight, is also added to ``image_row[lo:hi]``: the
    per-pixel background image outside the ROI that `background.fit_plane` fits.
    """
    total = 0
    raw = 0
    if hi <= lo:
        return total, raw
    span = frame[r, lo:hi]
    if _any_count(span) == 0:
        return total, raw
    for i in range(hi - lo):
        v = span[i]
        if v == 0 or mask_row[i] != 0:
            continue
        raw += v
        if v < threshold or (despeckle and v == 1 and _isolated(frame, r, lo + i)):
            continue
        total += v
        image_row[lo + i] += weight * v
    return total, raw


@numba.njit(cache=True, nogil=True)   # a call per sampled row, not inlined: it keeps the ROI loop as lean as it was
def _outside_counts(frame, r, in_rows, c0, c1, threshold, mask, despeckle, image_row, weight):  # type: ignore[no-untyped-def]
    """Kept and all counts of sampled row r outside the ROI columns (the whole row outside the ROI rows)."""
    cols = frame.shape[1]
    if in_rows:
        kept, seen = _span_counts(frame, r, 0, c0, threshold, mask[r, 0:c0], despeckle, image_row, weight)
        kept2, seen2 = _span_counts(frame, r, c1, cols, threshold, mask[r, c1:cols], despeckle, image_row, weight)
        return kept + kept2, seen + seen2
    return _span_counts(frame, r, 0, cols, threshold, mask[r], despeckle, image_row, weight)


@numba.njit(cache=True, nogil=True)
def frame_moments(frame, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride, out):  # type: ignore[no-untyped-def]
    """Lab-frame moments of the ROI and the counts outside it, for one frame (see `frame_moments_image`)."""
    image = np.zeros((frame.shape[0] // stride + 1, frame.shape[1]))
    frame_moments_image(frame, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride, out, image, 1.0)


@numba.njit(cache=True, nogil=True)
def frame_moments_image(frame, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride, out, image,
                        weight):  # type: ignore[no-untyped-def]
    """Lab-frame moments of the ROI and the counts outside it, for one frame.

    Parameters
    ----------
    frame : (rows, cols) uint8/uint16/uint32 counts, C-contiguous.
    q_lab : (r1-r0, c1-c0, 3) float64 lab-frame q of the ROI pixels.
    mask : (rows, cols) uint8, 1 = ignore pixel.
    r0, r1, c0, c1 : ROI bounds (half-open) in frame pixels.
    threshold : counts below it are ignored (0 keeps everything).
    despeckle : drop single counts none of whose 8 neighbours holds a count. The diffuse
        background of a photon-counting detector (~1e-3 counts/pixel/frame) is almost only
        such lone photons, while a Bragg peak lights up clusters of pixels; like the median
        filter of XSOCS, this removes the background's lever arm on the centre of mass.
    stride : every `stride`-th row is read whole for the background counts outside the ROI;
        other rows through the ROI are read across the ROI only. The background rate is
        averaged over a whole map, so a sample of the rows measures it as well at a fraction
        of the cost.
    out : (12,) float64, receives the 10 moments, the kept counts outside the ROI, then all the
        unmasked counts outside it (despeckle and threshold aside).
    image : (rows // stride + 1, cols) float64; each kept count outside the ROI on a sampled
        row adds ``weight`` × count at its pixel (the background image).
    """
    rows, cols = frame.shape
    s0 = sx = sy = sz = sxx = sxy = sxz = syy = syz = szz = 0.0
    outside = 0
    raw = 0
    n = c1 - c0
    for r in range(rows):
        in_rows = r >= r0 and r < r1
        if in_rows:
            span = frame[r, c0:c1]
            if _any_count(span) != 0:  # most rows of a sparse frame hold no count at all
                q_row = q_lab[r - r0]
                for p in range(0, n, PIECE):
                    m = min(PIECE, n - p)
                    if m == PIECE and _piece_empty(span, p):
                        continue
                    # the piece's pixels with counts as bits, visited lowest first: in a dense peak a
                    # branch on each pixel's zero was mispredicted about every other pixel
                    bits = np.uint32(0)
                    for i in range(m):
                        bits |= np.uint32(span[p + i] != 0) << np.uint32(i)
                    while bits != 0:
                        i = p + trailing_zeros(bits)
                        bits &= bits - np.uint32(1)
                        v = span[i]
                        # the checks are written out here: behind an inlined helper they ran ~25 % slower
                        if v < threshold or mask[r, c0 + i] != 0 or (despeckle and v == 1 and _isolated(frame, r, c0 + i)):
                            continue
                        q = q_row[i]
                        w = np.float64(v)
                        qx, qy, qz = q[0], q[1], q[2]
                        s0 += w
                        sx += w * qx
                        sy += w * qy
                        sz += w * qz
                        sxx += w * qx * qx
                        sxy += w * qx * qy
                        sxz += w * qx * qz
                        syy += w * qy * qy
                        syz += w * qy * qz
                        szz += w * qz * qz
        if r % stride == 0:  # a sampled row: its counts outside the ROI measure the background
            kept, seen = _outside_counts(frame, r, in_rows, c0, c1, threshold, mask, despeckle, image[r // stride], weight)
            outside += kept
            raw += seen
    store_moments(out, s0, sx, sy, sz, sxx, sxy, sxz, syy, syz, szz, outside, raw)


@numba.njit(cache=True, nogil=True, inline="always")
def store_moments(out, s0, sx, sy, sz, sxx, sxy, sxz, syy, syz, szz, outside, raw):  # type: ignore[no-untyped-def]
    """Write a frame's ten moments, its kept counts outside the ROI and (when out has room) all of them."""
    out[0], out[1], out[2], out[3], out[4] = s0, sx, sy, sz, sxx
    out[5], out[6], out[7], out[8], out[9] = sxy, sxz, syy, syz, szz
    out[10] = outside
    if out.shape[0] > 11:
        out[11] = raw


@numba.njit(cache=True, nogil=True)
def sample_matrix(eta_deg, phi_deg):  # type: ignore[no-untyped-def]
    """M with q_lab = M @ q_sample: eta about −y (outer), phi about −z (inner)."""
    m = np.empty((3, 3))
    _sample_matrix_into(eta_deg, phi_deg, m)
    return m


@numba.njit(cache=True, nogil=True, inline="always")
def _sample_matrix_into(eta_deg, phi_deg, m):  # type: ignore[no-untyped-def]
    e = -np.deg2rad(eta_deg)
    p = -np.deg2rad(phi_deg)
    ce, se, cp, sp = np.cos(e), np.sin(e), np.cos(p), np.sin(p)
    # Ry(e) @ Rz(p) written out: numba's `@` needs scipy's BLAS, which is not a runtime dependency
    m[0, 0], m[0, 1], m[0, 2] = ce * cp, -ce * sp, se
    m[1, 0], m[1, 1], m[1, 2] = sp, cp, 0.0
    m[2, 0], m[2, 1], m[2, 2] = -se * cp, se * sp, ce


@numba.njit(cache=True, nogil=True, inline="always")
def _rotate_moments(m, s1, s2, r1, r2, t):  # type: ignore[no-untyped-def]
    """r1 = Mᵀ s1 and r2 = Mᵀ s2 M, by hand (3x3; numba's `@` would need scipy); t is scratch."""
    for a in range(3):
        acc = 0.0
        for k in range(3):
            acc += m[k, a] * s1[k]
        r1[a] = acc
        for b in range(3):
            acc = 0.0
            for k in range(3):
                acc += s2[a, k] * m[k, b]
            t[a, b] = acc
    for a in range(3):
        for b in range(3):
            acc = 0.0
            for k in range(3):
                acc += m[k, a] * t[k, b]
            r2[a, b] = acc


@numba.njit(cache=True, nogil=True, inline="always")
def _unpack(mm, s1, s2):  # type: ignore[no-untyped-def]
    """First and second lab moments of a moment vector as a 3-vector and a symmetric 3x3."""
    s1[0], s1[1], s1[2] = mm[1], mm[2], mm[3]
    s2[0, 0], s2[0, 1], s2[0, 2] = mm[4], mm[5], mm[6]
    s2[1, 0], s2[1, 1], s2[1, 2] = mm[5], mm[7], mm[8]
    s2[2, 0], s2[2, 1], s2[2, 2] = mm[6], mm[8], mm[9]


@numba.njit(cache=True, nogil=True, inline="always")
def _add_rotated(moments, m, scratch, pixel, into_q, into_qq):  # type: ignore[no-untyped-def]
    """Rotate one moment vector into the sample frame and add it to map pixel `pixel`.

    q_sample = Mᵀ q_lab, so Σ I q_s = Mᵀ Σ I q_l and Σ I q_s q_sᵀ = Mᵀ (Σ I q_l q_lᵀ) M.
    `scratch` is (5, 3, 3): s1, s2, r1, r2 and the product's scratch, reused frame after frame.
    """
    s1, s2, r1, r2, t = scratch[0, 0], scratch[1], scratch[2, 0], scratch[3], scratch[4]
    _unpack(moments, s1, s2)
    _rotate_moments(m, s1, s2, r1, r2, t)
    for a in range(3):
        into_q[pixel, a] += r1[a]
        for b in range(3):
            into_qq[pixel, a, b] += r2[a, b]


@numba.njit(cache=True, nogil=True)
def _add_basis(basis_moments, m, scratch, pixel, into_q, into_qq):  # type: ignore[no-untyped-def]
    """`_add_rotated` of each background basis image's moments (K, 12) into its plane of the (npix, K, ...) sums."""
    s1, s2, r1, r2, t = scratch[0, 0], scratch[1], scratch[2, 0], scratch[3], scratch[4]
    for k in range(basis_moments.shape[0]):
        _unpack(basis_moments[k], s1, s2)
        _rotate_moments(m, s1, s2, r1, r2, t)
        for a in range(3):
            into_q[pixel, k, a] += r1[a]
            for b in range(3):
                into_qq[pixel, k, a, b] += r2[a, b]


@numba.njit(cache=True, nogil=True, inline="always")
def _accumulate_one(frame, eta, phi, pixel, monitor, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride,
                    roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq,
                    bg_basis_q, bg_basis_qq, bg_image, pixel_sums, moments, scratch):  # type: ignore[no-untyped-def]
    """Scan one frame and add its rotated sums to its map pixel.

    The same rotation applied to the ROI's geometric moments (unit weight per pixel) gives
    what a flat background of one count per pixel would have added; likewise for each
    background basis image (`basis_moments`); finalize() scales them by the fitted background
    and subtracts them. The frame's moments are divided by its incident-beam `monitor` (1.0:
    none, the sums are then those of the frame itself, bit for bit). `scratch` is (6, 3, 3),
    its last plane the sample matrix.
    """
    frame_moments_image(frame, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride, moments, bg_image, 1.0 / monitor)
    add_frame_moments(moments, eta, phi, pixel, monitor, roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames,
                      bg_counts, bg_q, bg_qq, bg_basis_q, bg_basis_qq, pixel_sums, scratch)


@numba.njit(cache=True, nogil=True, inline="always")
def add_frame_moments(moments, eta, phi, pixel, monitor, roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames,
                      bg_counts, bg_q, bg_qq, bg_basis_q, bg_basis_qq, pixel_sums, scratch):  # type: ignore[no-untyped-def]
    """Add one frame's lab moments (12,) (see `frame_moments_image`) to its map pixel: divided by the
    monitor, rotated into the sample frame, with the ROI's and the basis images' geometric moments
    rotated alike. Shared by every frame kernel (kernels_rows too), so the sums agree by construction."""
    weight = 1.0 / monitor
    if monitor != 1.0:
        for k in range(N_MOMENTS + 2):
            moments[k] *= weight
    m = scratch[5]
    _sample_matrix_into(eta, phi, m)
    sum_i[pixel] += moments[0]
    _add_rotated(moments, m, scratch, pixel, sum_iq, sum_iqq)
    _add_rotated(roi_moments, m, scratch, pixel, bg_q, bg_qq)
    _add_basis(basis_moments, m, scratch, pixel, bg_basis_q, bg_basis_qq)
    n_frames[pixel] += 1
    bg_counts[pixel] += moments[10]
    extra = pixel_sums[pixel]      # PIXEL_SUMS of accumulate.py, in its order
    extra[0] += moments[11]
    extra[1] += moments[0] * eta
    extra[2] += moments[0] * eta * eta
    extra[3] += eta
    extra[4] += eta * eta
    extra[5] += monitor


@numba.njit(cache=True, nogil=True)
def accumulate_block(frames, etas, phis, pixels, monitors, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride,
                     roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq,
                     bg_basis_q, bg_basis_qq, bg_image, pixel_sums):  # type: ignore[no-untyped-def]
    """Add a block of frames (k, rows, cols), each at its angles (k,) (deg) with its monitor (k,)
    (ones: none), into its map pixel (k,).

    One call per block: no Python and no allocation between frames. The sums arrays are
    those of `MomentAccumulator.state()`; roi_moments are the ROI's geometric lab moments,
    basis_moments (K, 11) those of the background basis images.
    """
    moments = np.empty(N_MOMENTS + 2)
    scratch = np.empty((6, 3, 3))
    for f in range(frames.shape[0]):
        _accumulate_one(frames[f], etas[f], phis[f], pixels[f], monitors[f], q_lab, mask, r0, r1, c0, c1, threshold,
                        despeckle, stride, roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts,
                        bg_q, bg_qq, bg_basis_q, bg_basis_qq, bg_image, pixel_sums, moments, scratch)


@numba.njit(cache=True, nogil=True)
def accumulate_frame(frame, eta, phi, pixel, monitor, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride,
                     roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq,
                     bg_basis_q, bg_basis_qq, bg_image, pixel_sums):  # type: ignore[no-untyped-def]
    """`accumulate_block` for one frame (rows, cols) with scalar angles, monitor and map pixel: the live path."""
    moments = np.empty(N_MOMENTS + 2)
    scratch = np.empty((6, 3, 3))
    _accumulate_one(frame, eta, phi, pixel, monitor, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride,
                    roi_moments, basis_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq,
                    bg_basis_q, bg_basis_qq, bg_image, pixel_sums, moments, scratch)
