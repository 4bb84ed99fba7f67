"""The ROI-truncation correction of the peak fit, for peaks cut by the ROI or detector edge (`maps.FLAG_EDGE`).

Why: moments summed inside a window that cuts the peak describe the part inside: the centre is pulled
inward and the spread shrinks, and nothing in the moments says so. Along each detector axis a Gaussian
peak cut by the window [a, b] is a truncated normal, whose mean m and variance s² are known in closed
form in the untruncated centre μ and width σ; so the measured (m, s) are inverted for (μ, σ)
(`invert_truncnorm`: vectorised Newton on the closed form; scipy.stats.truncnorm is the reference in
the tests). Each frame's slice of the peak is what the window cuts, so the moments taken to the
detector are the fitted centre's q and the mean in-slice covariance (`truncation.detector_spread`, at
the map's mean angles). The fitted q then moves by the detector shift μ − m taken back to Q (the
pseudo-inverse of d(row, col)/dQ: across the rocking direction, which the rocking fit handles), and
the in-slice variance along that direction grows by σ² − s².

A cut the moments cannot tell apart from a narrower uncut peak (a centre outside the window, an
inverted width above `MAX_STRETCH` times the measured one, no convergence) is left as measured.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opmon.processors.geometry import DetectorGeometry
from opmon.processors.truncation import detector_jacobian, detector_position

F64 = npt.NDArray[np.float64]
Roi = tuple[int, int, int, int]

NEWTON_STEPS = 30          # Newton iterations of the inversion (converges in < 10 where it can)
MAX_STRETCH = 3.0          # inverted width at most this many measured widths: deeper cuts are not trusted
TOLERANCE = 1e-7           # converged when the moments match to this many measured widths
_SQRT_2PI = np.sqrt(2.0 * np.pi)


@dataclass(frozen=True)
class EdgeCut:
    """What the correction needs of a map: its geometry, the window its frames were summed over, the
    mean angles (eta, phi, nu, delta; deg) and which map pixels are flagged `FLAG_EDGE` (ny, nx)."""

    geometry: DetectorGeometry
    roi: Roi
    angles: tuple[float, float, float, float]
    cut: npt.NDArray[np.bool_]


def truncnorm_moments(mu: F64, sigma: F64, a: F64, b: F64) -> tuple[F64, F64]:
    """Mean and variance of N(mu, sigma²) truncated to [a, b] (either bound may be infinite)."""
    from scipy.special import ndtr   # here, not at the top: scipy.special's ~0.09 s import was paid by every `opmon process`
    alpha, beta = (a - mu) / sigma, (b - mu) / sigma
    z = ndtr(beta) - ndtr(alpha)
    pa, pb = np.exp(-0.5 * alpha ** 2) / _SQRT_2PI, np.exp(-0.5 * beta ** 2) / _SQRT_2PI
    with np.errstate(invalid="ignore", divide="ignore"):
        lam = (pa - pb) / z
        tail = (np.where(np.isfinite(alpha), alpha * pa, 0.0) - np.where(np.isfinite(beta), beta * pb, 0.0)) / z
    return mu + sigma * lam, sigma ** 2 * (1.0 + tail - lam ** 2)


def invert_truncnorm(mean: F64, sd: F64, a: F64, b: F64) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """The (mu, sigma) of the normal whose truncation to [a, b] has this mean and standard deviation,
    and where that was found (Newton in (mu, log sigma), in units of the measured width)."""
    mean, sd, a, b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (mean, sd, a, b)))
    lo, hi = (a - mean) / sd, (b - mean) / sd          # the window in measured widths around the measured mean
    x, y = np.zeros(mean.shape), np.zeros(mean.shape)  # mu = mean + x sd, sigma = sd e^y
    h = 1e-6

    def residual(x: F64, y: F64) -> tuple[F64, F64]:
        m, v = truncnorm_moments(x, np.exp(y), lo, hi)
        return m, np.sqrt(np.clip(v, 0.0, None)) - 1.0
    for _ in range(NEWTON_STEPS):
        r1, r2 = residual(x, y)
        (a1, a2), (b1, b2) = residual(x + h, y), residual(x, y + h)
        j11, j12, j21, j22 = (a1 - r1) / h, (b1 - r1) / h, (a2 - r2) / h, (b2 - r2) / h
        with np.errstate(invalid="ignore", divide="ignore"):
            det = j11 * j22 - j12 * j21
            dx, dy = (j22 * r1 - j12 * r2) / det, (j11 * r2 - j21 * r1) / det
        step = np.isfinite(dx) & np.isfinite(dy)
        x = np.where(step, x - np.clip(dx, -1.0, 1.0), x)           # at most a measured width per step
        y = np.where(step, y - np.clip(dy, -0.5, 0.5), y)
    r1, r2 = residual(x, y)
    ok = (np.abs(r1) < TOLERANCE) & (np.abs(r2) < TOLERANCE) & (y < np.log(MAX_STRETCH)) & (lo < 0) & (hi > 0)
    return mean + x * sd, sd * np.exp(y), ok


def correct_cut_peaks(edge: EdgeCut, q: F64, inslice: F64) -> tuple[F64, F64, F64]:
    """Centre and in-slice covariance of cut peaks moved to their untruncated values.

    Parameters
    ----------
    q : (P, 3) fitted centres (sample frame, 1/Å) of the pixels to correct.
    inslice : (P, 3, 3) their mean in-slice covariance (measured, inside the window).

    Returns
    -------
    (P, 3) corrected q, (P,) the in-slice variance added (1/Å², trace), (P,) the detector shift applied
    (pixels; 0 where the cut could not be inverted).
    """
    eta, phi, nu, delta = edge.angles
    position = detector_position(edge.geometry, q, eta, phi, nu, delta)                   # (P, 2)
    jac = detector_jacobian(edge.geometry, q, eta, phi, nu, delta)                        # (P, 2, 3)
    spread = np.einsum("pij,pjk,plk->pil", jac, inslice, jac)
    sd = np.sqrt(np.clip(np.stack([spread[:, 0, 0], spread[:, 1, 1]], axis=1), 0.0, None))
    r0, r1, c0, c1 = edge.roi
    low, high = np.array([r0 - 0.5, c0 - 0.5]), np.array([r1 - 0.5, c1 - 0.5])
    usable = np.isfinite(position).all(axis=1) & (sd > 0).all(axis=1)
    mu, sigma, ok = invert_truncnorm(np.where(usable[:, None], position, 0.0), np.where(usable[:, None], sd, 1.0),
                                     low[None, :], high[None, :])
    ok &= usable[:, None]
    shift = np.where(ok, mu - position, 0.0)                                              # (P, 2) pixels
    grow = np.where(ok, sigma ** 2 - sd ** 2, 0.0)                                        # (P, 2) pixels²
    back = np.linalg.pinv(jac)                                                            # (P, 3, 2): dQ per pixel
    q_new = q + np.einsum("pik,pk->pi", back, shift)
    added = (grow * (back ** 2).sum(axis=1)).sum(axis=1)
    return q_new, added, np.hypot(shift[:, 0], shift[:, 1])
