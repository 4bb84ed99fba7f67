"""Diffractometer geometry of SCIENCE.md §2, written independently for the simulator.

The simulator needs its own copy of the geometry so that a bug in the processors'
geometry cannot hide behind a shared implementation; tests compare this module with
xrayutilities (``Ang2Q.area``) instead.

Convention (ID01, identical to xrayutilities with ``QConversion(['y-','z-'], ['z-','y-'],
[1,0,0])``, ``HXRD([1,0,0],[0,0,1])`` and ``init_area('z-','y+', ...)``):

* lab frame: x along the beam (downstream), z up, y = z × x;
* sample circles: eta about −y (outer), then phi about −z;
* detector circles: nu about −z (outer), then delta about −y;
* detector rows grow along −z, columns along +y; ``(row0, col0)`` is the direct-beam pixel
  at nu = delta = 0;
* ``q_lab = k_f − k_i`` and ``q_sample = R_sample^T q_lab`` with ``R_sample = R_eta R_phi``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

#: h·c in eV·Å (CODATA), the same value xrayutilities uses.
HC_EV_ANGSTROM = 12398.419843320026


def wavelength_angstrom(energy_ev: float) -> float:
    """Photon wavelength (Å) for an energy in eV."""
    return HC_EV_ANGSTROM / float(energy_ev)


def wavenumber(energy_ev: float) -> float:
    """|k| = 2π/λ in Å⁻¹."""
    return 2.0 * math.pi / wavelength_angstrom(energy_ev)


def two_theta_deg(d_angstrom: float, energy_ev: float) -> float:
    """Bragg scattering angle 2θ (deg) of a spacing d (Å) at a photon energy (eV)."""
    s = wavelength_angstrom(energy_ev) / (2.0 * float(d_angstrom))
    if not 0.0 < s < 1.0:
        raise ValueError(f"no Bragg reflection for d={d_angstrom} Å at {energy_ev} eV")
    return math.degrees(2.0 * math.asin(s))


@numba.njit(cache=True, nogil=True)
def rot_minus_y(angle_deg: float) -> npt.NDArray[np.float64]:
    """Right-handed rotation matrix about −y by ``angle_deg``."""
    a = math.radians(angle_deg)
    c = math.cos(a)
    s = math.sin(a)
    r = np.zeros((3, 3))
    # rotation about +y by -a
    r[0, 0] = c
    r[0, 2] = -s
    r[1, 1] = 1.0
    r[2, 0] = s
    r[2, 2] = c
    return r


@numba.njit(cache=True, nogil=True)
def rot_minus_z(angle_deg: float) -> npt.NDArray[np.float64]:
    """Right-handed rotation matrix about −z by ``angle_deg``."""
    a = math.radians(angle_deg)
    c = math.cos(a)
    s = math.sin(a)
    r = np.zeros((3, 3))
    # rotation about +z by -a
    r[0, 0] = c
    r[0, 1] = s
    r[1, 0] = -s
    r[1, 1] = c
    r[2, 2] = 1.0
    return r


@numba.njit(cache=True, nogil=True)
def sample_rotation(eta: float, phi: float) -> npt.NDArray[np.float64]:
    """R_sample = R_eta R_phi: maps sample-frame vectors to the lab frame."""
    return rot_minus_y(eta) @ rot_minus_z(phi)


@numba.njit(cache=True, nogil=True)
def detector_rotation(nu: float, delta: float) -> npt.NDArray[np.float64]:
    """R_det = R_nu R_delta: maps detector-frame vectors (at zero angles) to the lab frame."""
    return rot_minus_z(nu) @ rot_minus_y(delta)


@numba.njit(cache=True, nogil=True)
def pixel_q_lab(row: float, col: float, rdet: npt.NDArray[np.float64], row0: float, col0: float,
                pixel_m: float, distance_m: float, k: float) -> tuple[float, float, float]:
    """Lab-frame q (Å⁻¹) seen by detector pixel (row, col) for a detector rotation ``rdet``.

    Row and column are full-detector indices (an ROI only offsets them).
    """
    px = distance_m
    py = (col - col0) * pixel_m
    pz = -(row - row0) * pixel_m
    lx = rdet[0, 0] * px + rdet[0, 1] * py + rdet[0, 2] * pz
    ly = rdet[1, 0] * px + rdet[1, 1] * py + rdet[1, 2] * pz
    lz = rdet[2, 0] * px + rdet[2, 1] * py + rdet[2, 2] * pz
    inv = k / math.sqrt(lx * lx + ly * ly + lz * lz)
    return lx * inv - k, ly * inv, lz * inv


def q_sample_area(eta: float, phi: float, nu: float, delta: float, *, energy_ev: float,
                  distance_m: float, pixel_size_m: float, beam_center: tuple[float, float],
                  frame_shape: tuple[int, int], roi_origin: tuple[int, int] = (0, 0)) -> npt.NDArray[np.float64]:
    """Sample-frame q (rows, cols, 3) in Å⁻¹ of every pixel of a (cropped) detector frame.

    ``roi_origin`` is the full-detector (row, col) of the frame's first pixel; ``beam_center``
    is always given in full-detector pixels.
    """
    k = wavenumber(energy_ev)
    rows = np.arange(frame_shape[0], dtype=np.float64) + roi_origin[0]
    cols = np.arange(frame_shape[1], dtype=np.float64) + roi_origin[1]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    pos = np.stack([np.full_like(rr, distance_m), (cc - beam_center[1]) * pixel_size_m,
                    -(rr - beam_center[0]) * pixel_size_m], axis=-1)
    lab = pos @ detector_rotation(float(nu), float(delta)).T
    kf = lab * (k / np.linalg.norm(lab, axis=-1, keepdims=True))
    q_lab = kf - np.array([k, 0.0, 0.0])
    # q_sample = R^T q_lab; for row vectors that is q_lab @ R
    return q_lab @ sample_rotation(float(eta), float(phi))


def q_sample_at(row: float, col: float, eta: float, phi: float, nu: float, delta: float, *,
                energy_ev: float, distance_m: float, pixel_size_m: float,
                beam_center: tuple[float, float]) -> npt.NDArray[np.float64]:
    """Sample-frame q (3,) of one full-detector pixel position (fractional allowed)."""
    q_lab = np.array(pixel_q_lab(float(row), float(col), detector_rotation(float(nu), float(delta)),
                                 float(beam_center[0]), float(beam_center[1]), float(pixel_size_m),
                                 float(distance_m), wavenumber(energy_ev)))
    return sample_rotation(float(eta), float(phi)).T @ q_lab


@numba.njit(cache=True, nogil=True)
def peak_pixel(q_lab: npt.NDArray[np.float64], rdet: npt.NDArray[np.float64], row0: float, col0: float,
               pixel_m: float, distance_m: float, k: float) -> tuple[float, float, float]:
    """Where a lab-frame Q comes closest to the Ewald sphere, as (row, col, distance).

    ``distance`` (Å⁻¹) is | |Q + k_i| − k |, the gap between the reciprocal-lattice point
    and the Ewald sphere; (row, col) is the full-detector pixel hit by the direction of
    ``Q + k_i``, or NaN when that direction points away from the detector.
    """
    fx = q_lab[0] + k
    fy = q_lab[1]
    fz = q_lab[2]
    norm = math.sqrt(fx * fx + fy * fy + fz * fz)
    gap = abs(norm - k)
    # direction in the detector frame: R_det^T f
    vx = rdet[0, 0] * fx + rdet[1, 0] * fy + rdet[2, 0] * fz
    vy = rdet[0, 1] * fx + rdet[1, 1] * fy + rdet[2, 1] * fz
    vz = rdet[0, 2] * fx + rdet[1, 2] * fy + rdet[2, 2] * fz
    if vx <= 0.0:
        return math.nan, math.nan, gap
    t = distance_m / vx
    return row0 - t * vz / pixel_m, col0 + t * vy / pixel_m, gap


def bragg_eta(q_sample: npt.ArrayLike, energy_ev: float, phi: float = 0.0, guess: float = 19.0) -> float:
    """Eta (deg) near ``guess`` at which a sample-frame Q touches the Ewald sphere.

    Solved by Newton steps on f(eta) = |R(eta) Q + k_i| − k, which is smooth and monotonic
    within a few degrees of the Bragg angle.
    """
    q = np.asarray(q_sample, dtype=np.float64)
    k = wavenumber(energy_ev)
    ki = np.array([k, 0.0, 0.0])

    def f(eta: float) -> float:
        return float(np.linalg.norm(sample_rotation(eta, phi) @ q + ki) - k)

    eta = float(guess)
    for _ in range(50):
        h = 1e-4
        fe = f(eta)
        slope = (f(eta + h) - f(eta - h)) / (2 * h)
        if slope == 0.0:
            break
        step = fe / slope
        eta -= step
        if abs(step) < 1e-12:
            break
    return eta
