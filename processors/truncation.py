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
    sols = np.stack([base + half, base - half], axis=-1)
    wrapped = np.angle(np.exp(1j * (sols - target)))           # each solution's distance from eta
    best = target + np.take_along_axis(wrapped, np.argmin(np.abs(np.nan_to_num(wrapped, nan=np.inf)), axis=-1)[..., None],
                                       axis=-1)[..., 0]
    m = rotation("y-", np.rad2deg(best))                       # (..., 3, 3)
    q_lab = np.einsum("...ij,...j->...i", m, p)
    k_out = q_lab + np.array([k, 0.0, 0.0])
    d = k_out @ detector_matrix(nu, delta)                     # detector frame: x along its normal
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(d[..., 0] > 0, geometry.distance_m / d[..., 0], np.nan)
    col = geometry.beam_center[1] + d[..., 1] * scale / geometry.pixel_size_m[1]
    row = geometry.beam_center[0] - d[..., 2] * scale / geometry.pixel_size_m[0]
    return np.stack([row, col], axis=-1)


def edge_distance(position: F64, roi: tuple[int, int, int, int]) -> F64:
    """Distance (pixels) from each position (..., 2) to the nearest ROI edge; negative outside the ROI."""
    r0, r1, c0, c1 = roi
    row, col = position[..., 0], position[..., 1]
    return np.minimum.reduce([row - (r0 - 0.5), (r1 - 0.5) - row, col - (c0 - 0.5), (c1 - 0.5) - col])


def truncated(geometry: DetectorGeometry, roi: tuple[int, int, int, int], q: F64, width: F64, eta: float,
              phi: float, nu: float, delta: float) -> npt.NDArray[np.bool_]:
    """Map pixels (shape of `width`) whose peak (mean Q `q` (..., 3), width = √trace of its Q
    covariance) lies within EDGE_SIGMAS standard deviations of the ROI's edge, or outside it.
    Pixels with no valid Q are never flagged."""
    position = detector_position(geometry, q, eta, phi, nu, delta)
    pixel_dq = geometry.k * min(geometry.pixel_size_m) / geometry.distance_m   # Å⁻¹ per detector pixel
    sigma_px = width / np.sqrt(3.0) / pixel_dq           # one axis' standard deviation, in pixels
    margin = edge_distance(position, roi)
    with np.errstate(invalid="ignore"):
        return np.isfinite(margin) & np.isfinite(sigma_px) & (margin < EDGE_SIGMAS * sigma_px)
