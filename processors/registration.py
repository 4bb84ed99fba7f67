"""Sub-pixel registration of intensity maps: how far the sample moved between two images of it.

`register` is the one public primitive (used for the eta scans of a map, and for maps against
each other: `opmon.processors.drift_tracker`): scikit-image's `phase_cross_correlation` (upsampled DFT, Guizar-Sicairos 2008) on
images made comparable first (negative values clipped, each scaled to unit sum, so a scan that
sees less of the rocking curve weighs the same). Shifts are *displacements*, (dy, dx) in map
pixels: an image that shows the reference's content moved by +1 row gets (1, 0), the sign of
the simulator's truth (`/entry/truth/drift`). With ``pad=True`` the images are zero-padded to
twice their size first: a small map (8-60 pixels a side) that the particle fills would otherwise
correlate the particle's edge with the opposite edge through the FFT's wrap-around (median error
0.05 instead of 0.19 map pixel on simulated 8 x 8 maps, maps to maps).

`register_eta_scans` finds the drift between the eta scans of one map: each scan against the
Σ I-weighted sum of all scans moved back by the shifts found so far, for a few rounds (XSOCS
registers each scan against a reference in the same spirit). Scans with too little signal
(< `MIN_SIGNAL` of the brightest) take the shift of the nearest scan that has it: they add
nothing to the moments either way. The shifts are given in the frame where their Σ I-weighted
mean is zero (where the particle sat, on average, while the map was taken): no single scan's
frame can be told from the data when the first scans of the rocking curve see nothing.

Limit (measured, see the stop-20 report): this finds the drift to ~0.1 map pixel when every
eta scan shows the same particle, scaled. On a strained or bent particle the part in Bragg
condition moves across it with eta (0.3-0.5 map pixel per 0.016° step on the simulator's
paper maps), and intensity cross-correlation cannot tell that from drift: a linear drift and
a linear Bragg-angle gradient give the same scans except at the particle's edges. Tried and
no better there: scans against their neighbours' geometric mean (exact for Gaussian rocking
curves but blind to that linear mode), saturated or edge-filtered (Sobel, Laplace, DoG)
images, the per-scan q-centroid maps. Hence `opmon process --register off` by default and a
manual override (`ManualShifts`).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError

F64 = npt.NDArray[np.float64]

UPSAMPLE = 50          # 1/50 map pixel: well below the 0.2 pixel the maps need
MIN_SIGNAL = 0.02      # scans with less Σ I than this share of the brightest scan's are not registered
ROUNDS = 6             # rounds of registration against the registered sum at most ...
SETTLED_PX = 0.01      # ... or until no shift changes by more than this


def comparable(image: npt.ArrayLike) -> F64:
    """An intensity map made comparable to others: finite, negative values (background
    over-subtracted) clipped to zero, scaled to unit sum (zero stays zero)."""
    a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0.0, None)
    total = a.sum()
    return a / total if total > 0 else a


def _padded(image: F64) -> F64:
    out = np.zeros((2 * image.shape[0], 2 * image.shape[1]))
    out[: image.shape[0], : image.shape[1]] = image
    return out


def has_intensity(image: npt.ArrayLike) -> bool:
    """Does the map hold anything to register (finite, positive Σ I somewhere)?"""
    return bool(comparable(image).sum() > 0)


def register(images: npt.ArrayLike, reference: npt.ArrayLike, upsample: int = UPSAMPLE, pad: bool = False) -> F64:
    """Displacement (dy, dx), map pixels, of each image relative to `reference`, sub-pixel.

    Parameters
    ----------
    images : (n, ny, nx) or one (ny, nx) intensity map (e.g. Σ I per map pixel).
    reference : (ny, nx) the image the shifts are measured from.
    upsample : sub-pixel precision is 1/upsample pixel.
    pad : zero-pad to twice the size first (no wrap-around; for maps the particle fills).

    Returns
    -------
    (n, 2) float array, or (2,) for one image: image ≈ reference moved by the shift (an image
    or reference without intensity gives (0, 0)). The images are not periodic: keep the
    object away from the edges by more than the shift, or pad them.
    """
    stack = np.asarray(images, dtype=np.float64)
    one = stack.ndim == 2
    stack = stack[None] if one else stack
    ref = comparable(reference)
    if stack.ndim != 3 or stack.shape[1:] != ref.shape:
        raise ConfigError(f"registration: images of shape {stack.shape[1:] if stack.ndim == 3 else stack.shape} do not match "
                         f"the reference's {ref.shape}")
    from skimage.registration import phase_cross_correlation   # scipy.fft and skimage: 0.26 s, only when registering

    shifts = np.zeros((stack.shape[0], 2))
    if pad:
        ref = _padded(ref)
    if ref.sum() > 0:
        for k, image in enumerate(stack):
            moving = _padded(comparable(image)) if pad else comparable(image)
            if moving.sum() > 0:
                found, _, _ = phase_cross_correlation(ref, moving, upsample_factor=upsample, normalization=None)
                shifts[k] = -np.asarray(found, dtype=np.float64)  # skimage: the shift that undoes the move
    return shifts[0] if one else shifts


def register_eta_scans(stack: npt.ArrayLike, upsample: int = UPSAMPLE) -> F64:
    """Drift (dy, dx), map pixels, of each eta scan of a map, from its intensity maps.

    Parameters
    ----------
    stack : (n_scans, ny, nx) Σ I per map pixel of each eta scan, in rocking (eta) order.

    Returns
    -------
    (n_scans, 2) displacements in the frame where their Σ I-weighted mean is zero. Each scan
    with signal is registered against the sum of all of them, each made comparable and weighted
    by its Σ I, moved back by the shifts found so far (a few rounds, until they settle).
    """
    scans = np.clip(np.nan_to_num(np.asarray(stack, dtype=np.float64)), 0.0, None)
    n = scans.shape[0]
    shifts = np.zeros((n, 2))
    weight = scans.sum(axis=(1, 2))
    if n < 2 or not weight.max() > 0:
        return shifts
    signal = np.flatnonzero(weight >= MIN_SIGNAL * weight.max())
    for _ in range(ROUNDS):
        before = shifts.copy()
        reference = sum(weight[k] * comparable(resample(scans[k], shifts[k])) for k in signal)
        shifts[signal] = register(scans[signal], reference, upsample)
        shifts[signal] -= (weight[signal, None] * shifts[signal]).sum(axis=0) / weight[signal].sum()
        if np.abs(shifts - before).max() <= SETTLED_PX:
            break
    for k in range(n):   # scans without signal: the nearest registered scan's shift
        if k not in signal:
            shifts[k] = shifts[signal[np.argmin(np.abs(signal - k))]]
    return shifts


def resample(values: npt.ArrayLike, shift: npt.ArrayLike) -> F64:
    """Additive per-map-pixel sums (ny, nx, ...) moved by -shift: what each pixel of the
    reference frame holds when the sample sat `shift` (dy, dx) away. Each pixel's sums are split
    bilinearly over the four pixels around their new place (photons are conserved); what lands
    outside the grid is dropped (see `coverage`)."""
    a = np.asarray(values, dtype=np.float64)
    ny, nx = a.shape[:2]
    dy, dx = (float(v) for v in np.asarray(shift, dtype=np.float64).reshape(2))
    out = np.zeros_like(a)
    iy, fy = int(np.floor(-dy)), -dy - np.floor(-dy)
    ix, fx = int(np.floor(-dx)), -dx - np.floor(-dx)
    for oy, wy in ((iy, 1.0 - fy), (iy + 1, fy)):
        for ox, wx in ((ix, 1.0 - fx), (ix + 1, fx)):
            w = wy * wx
            if w == 0.0:
                continue
            src_y = slice(max(0, -oy), min(ny, ny - oy))
            src_x = slice(max(0, -ox), min(nx, nx - ox))
            dst_y = slice(max(0, oy), min(ny, ny + oy))
            dst_x = slice(max(0, ox), min(nx, nx + ox))
            if src_y.start < src_y.stop and src_x.start < src_x.stop:
                out[dst_y, dst_x] += w * a[src_y, src_x]
    return out


def coverage(map_shape: tuple[int, int], shifts: npt.ArrayLike, weights: npt.ArrayLike) -> F64:
    """(ny, nx) share, in [0, 1], of the scans' weight (e.g. Σ I per scan) whose frames cover each
    pixel of the reference frame: below 1 where a drifted scan never measured that place."""
    s = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    w = np.clip(np.asarray(weights, dtype=np.float64).reshape(-1), 0.0, None)
    total = w.sum()
    ones = np.ones(map_shape)
    covered = sum((wk * resample(ones, sk) for sk, wk in zip(s, w) if wk > 0), np.zeros(map_shape))
    return np.clip(covered / total, 0.0, 1.0) if total > 0 else ones
