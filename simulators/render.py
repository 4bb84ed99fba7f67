"""Detector frames of the simulated SXDM experiment, fast enough to stand in for a Maxipix.

For a map pixel whose crystal has reciprocal vector ``Q_p`` (sample frame), the expected
counts in detector pixel j of a frame at (eta, phi, nu, delta) are

    λ_j = A_p · exp(−|q_j − Q_p|² / (2 σ_p²)),

with ``q_j`` the sample-frame q of pixel j (`optics`, SCIENCE.md §2) and ``A_p`` chosen so
that the peak summed over a rocking scan at ``setup.eta_step`` holds the particle's
expected counts ``I_p`` (``A_p = I_p V / ((2π)^{3/2} σ_p³)`` with V the q-volume of one
(eta step × pixel × pixel) sample). Only a window around the point where ``Q_p`` meets the
Ewald sphere is evaluated: where λ > 1e-6 counts. Then come Poisson noise, a diffuse
background of ``setup.background_rate`` counts per pixel per frame drawn sparsely
(Poisson(rate · npix) photons at uniform random pixels), dead pixels (always 0) and hot
pixels (Poisson of ~5e3 counts), fixed per detector by the seed.

Flux choice: 1e9 ph/s × 10 ms = 1e7 photons per frame; a Bragg efficiency of ~7e-5 per
frame gives ``peak_counts`` = 2e4 counts over the 30 frames of the thickest map pixel.
"""
from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.noise import poisson, randint, stream
from opmon.simulators.optics import (detector_rotation, peak_pixel, pixel_q_lab, q_sample_at,
                                     sample_rotation)

THRESHOLD = 1e-6  # expected counts below which a pixel is not evaluated
# indices into the packed geometry vector
G_ROW0, G_COL0, G_PIX, G_DIST, G_K, G_ROFF, G_COFF, G_BG, G_THR, G_MAX, G_DQ = range(11)


@numba.njit(cache=True, nogil=True)
def _render_one(out: Any, m: int, eta: float, phi: float, nu: float, delta: float, seed: int, key: int,
                q: Any, sigma: Any, amp: Any, geo: Any, dead: Any, hot: Any, hot_mean: Any,
                noisy: bool) -> None:
    """Render one frame into ``out`` (rows, cols); with ``noisy=False`` write λ only."""
    nrows, ncols = out.shape
    maxval = geo[G_MAX]
    for i in range(nrows):
        for j in range(ncols):
            out[i, j] = 0
    st = stream(seed, key)
    a = amp[m]
    if a > 0.0:
        rs = sample_rotation(eta, phi)
        rd = detector_rotation(nu, delta)
        ql = rs @ q[m]
        rc, cc, gap = peak_pixel(ql, rd, geo[G_ROW0], geo[G_COL0], geo[G_PIX], geo[G_DIST], geo[G_K])
        s2 = 2.0 * sigma[m] * sigma[m]
        rq2 = s2 * math.log(a / geo[G_THR]) - gap * gap
        if rq2 > 0.0 and not math.isnan(rc):
            rpix = 1.05 * math.sqrt(rq2) / geo[G_DQ] + 2.0
            r_lo = max(int(math.floor(rc - rpix)), int(geo[G_ROFF]))
            r_hi = min(int(math.ceil(rc + rpix)), int(geo[G_ROFF]) + nrows - 1)
            c_lo = max(int(math.floor(cc - rpix)), int(geo[G_COFF]))
            c_hi = min(int(math.ceil(cc + rpix)), int(geo[G_COFF]) + ncols - 1)
            for r in range(r_lo, r_hi + 1):
                for c in range(c_lo, c_hi + 1):
                    qx, qy, qz = pixel_q_lab(float(r), float(c), rd, geo[G_ROW0], geo[G_COL0], geo[G_PIX], geo[G_DIST], geo[G_K])
                    dx = qx - ql[0]
                    dy = qy - ql[1]
                    dz = qz - ql[2]
                    lam = a * math.exp(-(dx * dx + dy * dy + dz * dz) / s2)
                    if lam > geo[G_THR]:
                        i = r - int(geo[G_ROFF])
                        j = c - int(geo[G_COFF])
                        if noisy:
                            n = poisson(st, lam)
                            out[i, j] = n if n < maxval else maxval
                        else:
                            out[i, j] = lam
    if not noisy:
        return
    nbg = poisson(st, geo[G_BG] * nrows * ncols)
    for _ in range(nbg):
        i = randint(st, nrows)
        j = randint(st, ncols)
        v = out[i, j] + 1
        out[i, j] = v if v < maxval else maxval
    for h in range(hot.shape[0]):
        i = hot[h, 0] - int(geo[G_ROFF])
        j = hot[h, 1] - int(geo[G_COFF])
        if 0 <= i < nrows and 0 <= j < ncols:
            n = poisson(st, hot_mean[h])
            out[i, j] = n if n < maxval else maxval
    for h in range(dead.shape[0]):
        i = dead[h, 0] - int(geo[G_ROFF])
        j = dead[h, 1] - int(geo[G_COFF])
        if 0 <= i < nrows and 0 <= j < ncols:
            out[i, j] = 0


@numba.njit(cache=True, nogil=True, parallel=True)
def _render_many(out: Any, midx: Any, eta: Any, phi: Any, nu: Any, delta: Any, seed: int, key0: int,
                 q: Any, sigma: Any, amp: Any, geo: Any, dead: Any, hot: Any, hot_mean: Any, noisy: bool) -> None:
    for f in numba.prange(out.shape[0]):
        _render_one(out[f], midx[f], eta[f], phi[f], nu[f], delta[f], seed, key0 + f,
                    q, sigma, amp, geo, dead, hot, hot_mean, noisy)


def sample_volume(setup: SxdmSetup) -> float:
    """q-space volume (Å⁻³) of one (eta step × pixel × pixel) sample near the reference peak."""
    s = setup
    r0, c0 = s.beam_center

    def q(row: float, col: float, eta: float) -> npt.NDArray[np.float64]:
        return q_sample_at(row, col, eta, s.phi, s.nu, s.delta, energy_ev=s.energy_ev,
                           distance_m=s.distance_m, pixel_size_m=s.pixel_size_m, beam_center=s.beam_center)

    jac = np.stack([q(r0 + 0.5, c0, s.eta_center) - q(r0 - 0.5, c0, s.eta_center),
                    q(r0, c0 + 0.5, s.eta_center) - q(r0, c0 - 0.5, s.eta_center),
                    (q(r0, c0, s.eta_center + 0.5 * s.eta_step) - q(r0, c0, s.eta_center - 0.5 * s.eta_step))])
    return float(abs(np.linalg.det(jac)))


class FrameRenderer:
    """Renders detector frames of a `ParticleModel` at any motor position.

    Parameters
    ----------
    setup : SxdmSetup
        geometry, ROI and flux.
    particle : ParticleModel
        read at every call, so `ParticleModel.set_charge_state` between frames takes effect.
    seed : int
        fixes dead/hot pixels and the noise streams; frame n of a renderer's life (counted
        over `frame` and `frames` calls) is always the same for the same seed and inputs.
    dtype : uint32 (default) or uint16 (counts clipped at 65535).
    """

    def __init__(self, setup: SxdmSetup, particle: ParticleModel, seed: int = 0,
                 dtype: npt.DTypeLike = np.uint32) -> None:
        self.setup = setup
        self.particle = particle
        self.seed = int(seed)
        if self.seed < 0:
            raise ConfigError(f"FrameRenderer seed {seed!r}: must be >= 0")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ConfigError(f"FrameRenderer dtype {self.dtype}: expected uint16 or uint32")
        self._counter = 0
        self._volume = sample_volume(setup)
        r0, _, c0, _ = setup.roi_window
        self._geo = np.array([setup.beam_center[0], setup.beam_center[1], setup.pixel_size_m, setup.distance_m,
                              setup.k, r0, c0, setup.background_rate, THRESHOLD,
                              float(np.iinfo(self.dtype).max), setup.pixel_dq])
        self.dead, self.hot, self.hot_mean = self._defects()
        self._version = -1
        self._amp = np.zeros(0)

    def _defects(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Dead and hot pixels in full-detector coordinates: half near the centre, half anywhere."""
        rng = np.random.default_rng([self.seed, 0xDE7EC7])
        rows, cols = self.setup.detector_shape
        n_dead, n_hot = self.setup.n_dead, self.setup.n_hot
        n = n_dead + n_hot
        central = rng.integers([rows // 4, cols // 4], [3 * rows // 4, 3 * cols // 4], size=(n, 2))
        anywhere = rng.integers([0, 0], [rows, cols], size=(n, 2))
        pick = np.where((np.arange(n) % 2 == 0)[:, None], central, anywhere)
        pick = np.unique(pick, axis=0)
        rng.shuffle(pick)
        dead = pick[:n_dead].astype(np.int64)
        hot = pick[n_dead:n].astype(np.int64)
        hot_mean = self.setup.hot_mean_counts * rng.uniform(0.5, 2.0, size=hot.shape[0])
        return dead.reshape(-1, 2), hot.reshape(-1, 2), hot_mean

    @property
    def detector_mask(self) -> npt.NDArray[np.uint8]:
        """(rows, cols) uint8 of the rendered window: 1 = dead or hot pixel."""
        r0, r1, c0, c1 = self.setup.roi_window
        mask = np.zeros(self.setup.frame_shape, dtype=np.uint8)
        for r, c in np.concatenate([self.dead, self.hot]):
            if r0 <= r < r1 and c0 <= c < c1:
                mask[r - r0, c - c0] = 1
        return mask

    def _arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        q, sigma, counts = self.particle.render_arrays()
        if self._version != self.particle.version:
            self._amp = counts * self._volume / ((2 * np.pi) ** 1.5 * sigma ** 3)
            self._version = self.particle.version
        return q, sigma, self._amp

    def frame(self, map_index: int, eta: float, phi: float, nu: float, delta: float,
              out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """One noisy frame (rows, cols) of map pixel ``map_index`` at the given angles (deg)."""
        if not 0 <= int(map_index) < self.setup.n_points:
            raise ConfigError(f"map_index {map_index}: outside 0..{self.setup.n_points - 1}")
        if out is None:
            out = np.empty(self.setup.frame_shape, dtype=self.dtype)
        self._check_out(out, 2)
        q, sigma, amp = self._arrays()
        _render_one(out, int(map_index), float(eta), float(phi), float(nu), float(delta), self.seed, self._counter,
                    q, sigma, amp, self._geo, self.dead, self.hot, self.hot_mean, True)
        self._counter += 1
        return out

    def frames(self, map_indices: npt.ArrayLike, etas: npt.ArrayLike, phis: npt.ArrayLike, nus: npt.ArrayLike,
               deltas: npt.ArrayLike, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """A block of noisy frames (n, rows, cols), rendered in parallel; angles broadcast."""
        midx, eta, phi, nu, delta = self._broadcast(map_indices, etas, phis, nus, deltas)
        if out is None:
            out = np.empty((midx.size,) + self.setup.frame_shape, dtype=self.dtype)
        self._check_out(out, 3, midx.size)
        q, sigma, amp = self._arrays()
        _render_many(out, midx, eta, phi, nu, delta, self.seed, self._counter, q, sigma, amp,
                     self._geo, self.dead, self.hot, self.hot_mean, True)
        self._counter += midx.size
        return out

    def expected(self, map_indices: npt.ArrayLike, etas: npt.ArrayLike, phis: npt.ArrayLike, nus: npt.ArrayLike,
                 deltas: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Noise-free Bragg counts λ (n, rows, cols) without background or defects (for checks)."""
        midx, eta, phi, nu, delta = self._broadcast(map_indices, etas, phis, nus, deltas)
        out = np.empty((midx.size,) + self.setup.frame_shape, dtype=np.float64)
        q, sigma, amp = self._arrays()
        geo = self._geo.copy()
        geo[G_MAX] = np.inf
        _render_many(out, midx, eta, phi, nu, delta, self.seed, 0, q, sigma, amp, geo,
                     self.dead, self.hot, self.hot_mean, False)
        return out

    def _broadcast(self, *arrays: npt.ArrayLike) -> tuple[npt.NDArray[Any], ...]:
        midx = np.atleast_1d(np.asarray(arrays[0], dtype=np.int64))
        n = midx.size
        bad = (midx < 0) | (midx >= self.setup.n_points)
        if bad.any():
            raise ConfigError(f"map_index {int(midx[np.argmax(bad)])}: outside 0..{self.setup.n_points - 1}")
        rest = []
        for name, a in zip(("etas", "phis", "nus", "deltas"), arrays[1:]):
            arr = np.asarray(a, dtype=np.float64)
            try:
                rest.append(np.ascontiguousarray(np.broadcast_to(arr, (n,))))
            except ValueError as exc:
                raise ConfigError(f"{name}: shape {arr.shape} does not match {n} map indices") from exc
        return (np.ascontiguousarray(midx), *rest)

    def _check_out(self, out: npt.NDArray[Any], ndim: int, n: int = 1) -> None:
        shape = ((n,) if ndim == 3 else ()) + self.setup.frame_shape
        if out.shape != shape or out.dtype != self.dtype:
            raise ConfigError(f"out: shape {out.shape} dtype {out.dtype}, expected {shape} {self.dtype}")
