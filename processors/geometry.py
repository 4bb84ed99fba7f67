"""Detector-pixel scattering vectors in the ID01 convention (SCIENCE.md §2).

The exit wavevector of every pixel depends only on the detector angles, so it is computed
once per detector position; per frame only the sample rotation changes, and the kernels fold
that rotation out of the pixel loop (they sum in the lab frame and rotate the sums).

Convention (identical to xrayutilities with ``QConversion(['y-','z-'], ['z-','y-'], [1,0,0])``):
lab x along the beam, z up, y = z × x; sample circles eta about −y then phi about −z;
detector circles nu about −z then delta about −y; detector rows grow toward −z, columns
toward +y; ``beam_center`` is the direct-beam pixel at nu = delta = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from opmon.streaming.archive.raw import RawMeta

HC_EV_ANGSTROM = 12398.419843320026  # h·c in eV·Å (CODATA 2018), as xrayutilities uses


def rotation(axis: str, angle_deg: float | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Right-handed rotation matrix about a signed lab axis such as 'y-' or 'z-'.

    Accepts a scalar or an array of angles; an array gives a stack (..., 3, 3).
    """
    sign = -1.0 if axis[1] == "-" else 1.0
    a = np.deg2rad(np.asarray(angle_deg, dtype=np.float64)) * sign
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    if axis[0] == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis[0] == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    elif axis[0] == "z":
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    else:
        raise ValueError(f"unknown rotation axis {axis!r}")
    return np.moveaxis(np.array(rows, dtype=np.float64), (0, 1), (-2, -1))


def sample_matrix(eta: float | npt.NDArray[np.float64], phi: float | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Matrix M with q_lab = M @ q_sample (eta outer about −y, phi inner about −z)."""
    return rotation("y-", eta) @ rotation("z-", phi)


def detector_matrix(nu: float, delta: float) -> npt.NDArray[np.float64]:
    """Rotation of the detector arm: nu outer about −z, then delta about −y."""
    return rotation("z-", nu) @ rotation("y-", delta)


@dataclass(frozen=True)
class DetectorGeometry:
    """The fixed part of the experiment: beam energy and detector placement.

    Parameters
    ----------
    energy_ev : photon energy in eV.
    distance_m : sample–detector distance in m.
    pixel_size_m : (row, column) pixel pitch in m.
    beam_center : (row0, col0) direct-beam pixel at nu = delta = 0, in pixels of the stored
        frame (may lie outside a cropped frame).
    frame_shape : (rows, cols) of the stored frames.
    """

    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]
    beam_center: tuple[float, float]
    frame_shape: tuple[int, int]

    @classmethod
    def from_meta(cls, meta: RawMeta) -> "DetectorGeometry":
        return cls(meta.energy_ev, meta.distance_m, meta.pixel_size_m, meta.beam_center, meta.frame_shape)

    @property
    def wavelength(self) -> float:
        """Wavelength in Å."""
        return HC_EV_ANGSTROM / self.energy_ev

    @property
    def k(self) -> float:
        """|k| = 2π/λ in Å⁻¹."""
        return 2.0 * np.pi / self.wavelength

    def pixel_q_lab(self, nu: float, delta: float) -> npt.NDArray[np.float64]:
        """q = k_out − k_in of every pixel, lab frame at sample angles zero, shape (rows, cols, 3), Å⁻¹."""
        return _pixel_q_lab_cached(self, float(nu), float(delta)).copy()

    def q_sample(self, eta: float, phi: float, nu: float, delta: float) -> npt.NDArray[np.float64]:
        """q of every pixel in the sample frame for one frame's angles, (rows, cols, 3)."""
        m = sample_matrix(eta, phi)
        return self.pixel_q_lab(nu, delta) @ m  # row-vector form of M.T @ q


def pixel_q_lab_window(geo: DetectorGeometry, nu: float, delta: float, window: tuple[int, int, int, int]) -> npt.NDArray[np.float64]:
    """`pixel_q_lab` of the pixels rows r0:r1, columns c0:c1 only (read-only, cached).

    The live processor needs q of its ROI only; computing the whole detector first would
    hold up the first frame of every run for tens of milliseconds. Every pixel's value is
    computed elementwise, so it does not depend on the window it is computed in."""
    return _pixel_q_lab_cached(geo, float(nu), float(delta), tuple(int(v) for v in window))  # type: ignore[arg-type]


@lru_cache(maxsize=16)
def _pixel_q_lab_cached(geo: DetectorGeometry, nu: float, delta: float,
                        window: tuple[int, int, int, int] | None = None) -> npt.NDArray[np.float64]:
    rows, cols = geo.frame_shape
    r0, r1, c0, c1 = window if window is not None else (0, rows, 0, cols)
    prow, pcol = geo.pixel_size_m
    r = (np.arange(r0, r1, dtype=np.float64) - geo.beam_center[0]) * prow
    c = (np.arange(c0, c1, dtype=np.float64) - geo.beam_center[1]) * pcol
    # Detector frame at nu = delta = 0: along the beam (+x), columns toward +y, rows toward −z.
    m = detector_matrix(nu, delta)
    x, y, z = geo.distance_m, c[None, :], -r[:, None]
    pos = np.empty((r1 - r0, c1 - c0, 3), dtype=np.float64)
    for axis in range(3):
        pos[..., axis] = m[axis, 0] * x + m[axis, 1] * y + m[axis, 2] * z
    pos /= np.sqrt(pos[..., 0] ** 2 + pos[..., 1] ** 2 + pos[..., 2] ** 2)[..., None]
    k = geo.k
    q = pos * k
    q[..., 0] -= k
    q.setflags(write=False)
    return q
