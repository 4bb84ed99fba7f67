"""The accumulator kernel as it was before session 19 (a per-word scan into an (11,) moments
array, then a second call that rotates and adds), kept only as the reference that
tests/processors/test_kernels.py compares today's kernel with: same frames, same sums, bit for
bit. Its parallel `block_moments` ran this same `frame_moments` per frame, so it is left out.
Not imported by opmon."""
from __future__ import annotations

import numba
import numpy as np

N_MOMENTS = 10


@numba.njit(cache=True, nogil=True, inline="always")
def _add_pixel(m, w, qx, qy, qz):  # type: ignore[no-untyped-def]
    m[0] += w
    m[1] += w * qx
    m[2] += w * qy
    m[3] += w * qz
    m[4] += w * qx * qx
    m[5] += w * qx * qy
    m[6] += w * qx * qz
    m[7] += w * qy * qy
    m[8] += w * qy * qz
    m[9] += w * qz * qz


@numba.njit(cache=True, nogil=True, inline="always")
def _isolated(frame, r, c):  # type: ignore[no-untyped-def]
    """True when no 8-neighbour of (r, c) holds a count: a lone photon of the diffuse background."""
    rows, cols = frame.shape
    for rr in range(max(r - 1, 0), min(r + 2, rows)):
        for cc in range(max(c - 1, 0), min(c + 2, cols)):
            if (rr != r or cc != c) and frame[rr, cc] != 0:
                return False
    return True


@numba.njit(cache=True, nogil=True)
def frame_moments(frame, q_lab, mask, r0, r1, c0, c1, threshold, despeckle, stride, out):  # type: ignore[no-untyped-def]
    """Lab-frame moments of the ROI and the counts outside it, for one frame.

    Parameters
    ----------
    frame : (rows, cols) uint16/uint32 counts.
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
    out : (11,) float64, receives the 10 moments then the counts outside the ROI.
    """
    for i in range(out.shape[0]):
        out[i] = 0.0
    rows, cols = frame.shape
    outside = 0.0
    # Scan 64-bit words (2 uint32 or 4 uint16 pixels each) so the zero test of a row and of
    # each word is a few wide ORs; rows whose byte length is not a multiple of 8 scan per pixel.
    wide = (cols * frame.itemsize) % 8 == 0
    if wide:
        words = frame.view(np.uint64)
        nw = words.shape[1]
        per = cols // nw
    else:
        words = np.zeros((rows, 1), dtype=np.uint64)  # unused
        nw = cols
        per = 1
    for r in range(rows):
        in_rows = r >= r0 and r < r1
        sampled = r % stride == 0
        if not in_rows and not sampled:
            continue
        # a sampled row is read whole; a row through the ROI only across the ROI's columns
        w_lo = 0 if sampled else c0 // per
        w_hi = nw if sampled else min(nw, (c1 + per - 1) // per)
        wr = words[r]
        if wide:
            # most rows of a sparse frame hold no count at all: one OR over the row's words
            # (a loop the compiler vectorizes) skips them before any per-pixel work
            any_counts = np.uint64(0)
            for w in range(w_lo, w_hi):
                any_counts |= wr[w]
            if any_counts == 0:
                continue
        for w in range(w_lo, w_hi):
            if wide and wr[w] == 0:
                continue
            for j in range(w * per, (w + 1) * per):
                v = frame[r, j]
                if v != 0 and v >= threshold and mask[r, j] == 0:
                    if despeckle and v == 1 and _isolated(frame, r, j):
                        continue
                    if in_rows and j >= c0 and j < c1:
                        q = q_lab[r - r0, j - c0]
                        _add_pixel(out, np.float64(v), q[0], q[1], q[2])
                    elif sampled:
                        outside += v
    out[10] = outside


@numba.njit(cache=True, nogil=True)
def sample_matrix(eta_deg, phi_deg):  # type: ignore[no-untyped-def]
    """M with q_lab = M @ q_sample: eta about −y (outer), phi about −z (inner)."""
    e = -np.deg2rad(eta_deg)
    p = -np.deg2rad(phi_deg)
    ce, se, cp, sp = np.cos(e), np.sin(e), np.cos(p), np.sin(p)
    # Ry(e) @ Rz(p) written out: numba's `@` needs scipy's BLAS, which is not a runtime dependency
    return np.array([[ce * cp, -ce * sp, se],
                     [sp, cp, 0.0],
                     [-se * cp, se * sp, ce]])


@numba.njit(cache=True, nogil=True)
def _rotate_moments(m, s1, s2, r1, r2):  # type: ignore[no-untyped-def]
    """r1 = Mᵀ s1 and r2 = Mᵀ s2 M, by hand (3x3; numba's `@` would need scipy)."""
    t = np.empty((3, 3))
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


@numba.njit(cache=True, nogil=True)
def add_rotated(moments, m, roi_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq, pixel):  # type: ignore[no-untyped-def]
    """Rotate one frame's lab moments into the sample frame and add them to a map pixel.

    q_sample = Mᵀ q_lab, so Σ I q_s = Mᵀ Σ I q_l and Σ I q_s q_sᵀ = Mᵀ (Σ I q_l q_lᵀ) M.
    The same rotation applied to the ROI's geometric moments (unit weight per pixel) gives
    what a flat background of one count per pixel would have added; finalize() scales it by
    the estimated background rate and subtracts it.
    """
    s1 = np.empty(3)
    s2 = np.empty((3, 3))
    r1 = np.empty(3)
    r2 = np.empty((3, 3))
    for src in range(2):
        mm = moments if src == 0 else roi_moments
        s1[0], s1[1], s1[2] = mm[1], mm[2], mm[3]
        s2[0, 0], s2[0, 1], s2[0, 2] = mm[4], mm[5], mm[6]
        s2[1, 0], s2[1, 1], s2[1, 2] = mm[5], mm[7], mm[8]
        s2[2, 0], s2[2, 1], s2[2, 2] = mm[6], mm[8], mm[9]
        _rotate_moments(m, s1, s2, r1, r2)
        if src == 0:
            sum_i[pixel] += mm[0]
            for a in range(3):
                sum_iq[pixel, a] += r1[a]
                for b in range(3):
                    sum_iqq[pixel, a, b] += r2[a, b]
        else:
            for a in range(3):
                bg_q[pixel, a] += r1[a]
                for b in range(3):
                    bg_qq[pixel, a, b] += r2[a, b]
    n_frames[pixel] += 1
    bg_counts[pixel] += moments[10]


@numba.njit(cache=True, nogil=True)
def add_block(moments, etas, phis, map_index, roi_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq):  # type: ignore[no-untyped-def]
    """`add_rotated` for every frame of a block (k, 11) with its angles and map pixel."""
    for f in range(moments.shape[0]):
        m = sample_matrix(etas[f], phis[f])
        add_rotated(moments[f], m, roi_moments, sum_i, sum_iq, sum_iqq, n_frames, bg_counts, bg_q, bg_qq, map_index[f])
