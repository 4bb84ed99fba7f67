"""Where each map pixel's peak lands on the detector, and whether the ROI or the detector edge cuts it.

A centre of mass summed inside a window is pulled inward when the window cuts the peak, and
nothing in the moments says so. So each map pixel's mean Q is taken back to the detector: the
eta at which it meets the Bragg condition (nearest the map's mean eta), the exit beam k_f = k_in
+ Q_lab, and the pixel that beam hits. A peak whose centre lies within EDGE_SIGMAS widths of
the ROI's edge (the ROI never extends past the detector, so that is the detector's edge too), or
outside it, is flagged `FLAG_EDGE` in the map's `flags` (`opmon.processors.maps`).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from opmon.processors.geometry import DetectorGeometry, detector_matrix, rotation

F64 = npt.NDArray[np.float64]

#: a peak whose centre is closer than this many standard deviations (along the detector) to the
#: ROI's edge loses more than ~2 % of its photons on that side: flagged
EDGE_SIGMAS = 2.0


def detector_position(geometry: DetectorGeometry, q_sample: F64, eta: float, phi: float, nu: float,
                      delta: float) -> F64:
    """(..., 2) detector (row, column) where Q (sample frame, Å⁻¹, shape (..., 3)) diffracts, at the
    Bragg eta nearest `eta` (deg); NaN where Q cannot meet the Bragg condition or misses the detector."""
    k = geometry.k
    p = q_sample @ rotation("z-", phi).T                       # phi applied: the eta circle turns p
    r0, r90 = rotation("y-", 0.0), rotation("y-", 90.0)
    a, b = p @ r0[0], p @ r90[0]                               # Q_lab,x(eta) = a cos(eta) + b sin(eta)
    need = -np.einsum("...i,...i->...", q_sample, q_sample) / (2.0 * k)  # |k_in + Q| = k  <=>  Q_lab,x = -|Q|²/2k
    amp = np.hypot(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        base = np.arctan2(b, a)
        half = np.arccos(np.clip(need / amp, -2.0, 2.0))       # NaN when no eta satisfies Bragg
    target = np.deg2rad(eta)
    plus = np.mod(base + half - target + np.pi, 2 * np.pi) - np.pi     # each solution's distance from eta
    minus = np.mod(base - half - target + np.pi, 2 * np.pi) - np.pi
    best = target + np.where(np.abs(plus) <= np.abs(minus), plus, minus)
    m = rotation("y-", np.rad2deg(best))                       # (..., 3, 3)
    q_lab = np.einsum("...ij,...j->...i", m, p)
    k_out = q_lab + np.array([k, 0.0, 0.0])
    d = k_out @ detector_matrix(nu, delta)                     # detector frame: x along its normal
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(d[..., 0] > 0, geometry.distance_m / d[..., 0], np.nan)
    col = geometry.beam_center[1] + d[..., 1] * scale / geometry.pixel_size_m[1]
    row = geometry.beam_center[0] - d[..., 2] * scale / geometry.pixel_size_m[0]
    return np.stack([row, col], axis=-1)


def detector_spread(geometry: DetectorGeometry, q: F64, cov: F64, eta: float, phi: float, nu: float,
                    delta: float) -> tuple[F64, F64]:
    """(position (..., 2), standard deviations (..., 2) in pixels) on the detector of peaks with mean
    Q `q` (..., 3) and Q covariance `cov` (..., 3, 3), sample frame: the covariance taken through the
    Jacobian of `detector_position` (the rocking direction maps to where the Bragg condition puts it)."""
    position = detector_position(geometry, q, eta, phi, nu, delta)
    jac = detector_jacobian(geometry, q, eta, phi, nu, delta)
    spread = np.einsum("...ij,...jk,...lk->...il", jac, cov, jac)
    sigma = np.sqrt(np.clip(np.stack([spread[..., 0, 0], spread[..., 1, 1]], axis=-1), 0.0, None))
    return position, sigma


def detector_jacobian(geometry: DetectorGeometry, q: F64, eta: float, phi: float, nu: float, delta: float) -> F64:
    """(..., 2, 3) d(row, column)/dQ of `detector_position` at `q` (..., 3), by central differences. Its
    null direction is the rocking one (turning eta moves Q there without moving it on the detector)."""
    step = 1e-6 * geometry.k
    jac = np.empty(q.shape[:-1] + (2, 3))
    for axis in range(3):
        dq = np.zeros(3)
        dq[axis] = step
        jac[..., axis] = (detector_position(geometry, q + dq, eta, phi, nu, delta)
                          - detector_position(geometry, q - dq, eta, phi, nu, delta)) / (2 * step)
    return jac


def truncated(geometry: DetectorGeometry, roi: tuple[int, int, int, int], q: F64, cov: F64, eta: float,
              phi: float, nu: float, delta: float) -> npt.NDArray[np.bool_]:
    """Map pixels whose peak (mean Q `q` (..., 3), Q covariance `cov` (..., 3, 3)) lies within
    EDGE_SIGMAS standard deviations (along rows or columns) of the ROI's edge, or outside it.
    Pixels with no valid Q are never flagged."""
    (row, col), (s_row, s_col) = np.moveaxis(np.stack(detector_spread(geometry, q, cov, eta, phi, nu, delta)), -1, 1)
    r0, r1, c0, c1 = roi
    with np.errstate(invalid="ignore"):
        near = ((row - (r0 - 0.5) < EDGE_SIGMAS * s_row) | ((r1 - 0.5) - row < EDGE_SIGMAS * s_row)
                | (col - (c0 - 0.5) < EDGE_SIGMAS * s_col) | ((c1 - 0.5) - col < EDGE_SIGMAS * s_col))
    return near & np.isfinite(row) & np.isfinite(col)
