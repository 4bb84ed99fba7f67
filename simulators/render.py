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
from opmon.simulators.peak_shape import COMPACT, PeakShape
from opmon.simulators.noise import poisson, randint, stream, uniform
from opmon.simulators.drift import shift_arrays
from opmon.simulators.optics import (detector_rotation, peak_pixel, pixel_q_lab, q_sample_at,
                                     sample_rotation)

THRESHOLD = 1e-6  # expected counts below which a pixel is not evaluated
# indices into the packed geometry vector
(G_ROW0, G_COL0, G_PIX, G_DIST, G_K, G_ROFF, G_COFF, G_BG, G_THR, G_MAX, G_DQ, G_ISO, G_HOLE, G_HOLE_C2,
 G_WMAX, G_GRAD_R, G_GRAD_C, G_NX) = range(18)
N_GEO = 18


@numba.njit(cache=True, nogil=True, inline="always")
def _deposit(out: Any, st: Any, i: int, j: int, lam: float, maxval: float, noisy: bool) -> None:
    """Add Poisson(λ) counts (clipped at the dtype's maximum), or λ itself when not noisy."""
    if noisy:
        v = out[i, j] + poisson(st, lam)
        out[i, j] = v if v < maxval else maxval
    else:
        out[i, j] += lam


@numba.njit(cache=True, nogil=True)
def _add_peak(out: Any, st: Any, ql: Any, a: float, sigma: float, pinv: Any, rd: Any, geo: Any, noisy: bool) -> None:
    """Add one pixel's Bragg peak (lab-frame centre ``ql``, amplitude ``a``) to the frame."""
    nrows, ncols = out.shape
    maxval = geo[G_MAX]
    rc, cc, gap = peak_pixel(ql, rd, geo[G_ROW0], geo[G_COL0], geo[G_PIX], geo[G_DIST], geo[G_K])
    iso = geo[G_ISO] > 0.5
    s2 = 2.0 * sigma * sigma
    smax = sigma * geo[G_WMAX]
    rq2 = 2.0 * smax * smax * math.log(a / geo[G_THR]) - gap * gap
    if not (rq2 > 0.0) or math.isnan(rc):
        return
    rpix = 1.05 * math.sqrt(rq2) / geo[G_DQ] + 2.0
    r_lo = max(int(math.floor(rc - rpix)), int(geo[G_ROFF]))
    r_hi = min(int(math.ceil(rc + rpix)), int(geo[G_ROFF]) + nrows - 1)
    c_lo = max(int(math.floor(cc - rpix)), int(geo[G_COFF]))
    c_hi = min(int(math.ceil(cc + rpix)), int(geo[G_COFF]) + ncols - 1)
    inv_s2 = 1.0 / (sigma * sigma)
    hole = geo[G_HOLE]
    for r in range(r_lo, r_hi + 1):
        for c in range(c_lo, c_hi + 1):
            qx, qy, qz = pixel_q_lab(float(r), float(c), rd, geo[G_ROW0], geo[G_COL0], geo[G_PIX], geo[G_DIST], geo[G_K])
            dx = qx - ql[0]
            dy = qy - ql[1]
            dz = qz - ql[2]
            if iso:
                lam = a * math.exp(-(dx * dx + dy * dy + dz * dz) / s2)
            else:
                m2 = inv_s2 * (pinv[0, 0] * dx * dx + pinv[1, 1] * dy * dy + pinv[2, 2] * dz * dz
                               + 2.0 * (pinv[0, 1] * dx * dy + pinv[0, 2] * dx * dz + pinv[1, 2] * dy * dz))
                lam = a * math.exp(-0.5 * m2)
                if hole > 0.0:
                    lam -= a * hole * math.exp(-0.5 * m2 / geo[G_HOLE_C2])
            if lam > geo[G_THR]:
                _deposit(out, st, r - int(geo[G_ROFF]), c - int(geo[G_COFF]), lam, maxval, noisy)


@numba.njit(cache=True, nogil=True)
def _render_one(out: Any, m: int, eta: float, phi: float, nu: float, delta: float, scale: float, seed: int,
                key: int, q: Any, sigma: Any, amp: Any, q2: Any, amp2: Any, pinv: Any, spots: Any, geo: Any,
                dead: Any, hot: Any, hot_mean: Any, noisy: bool) -> None:
    """Render one frame into ``out`` (rows, cols); with ``noisy=False`` write λ only.

    ``scale`` is the incident intensity relative to nominal (it scales everything the beam
    makes, not the hot pixels); ``q2``/``amp2`` a second peak (mixed pixels, amp2 = 0: none);
    ``spots`` the powder-arc spots (k, ≥ 9): row, col, amplitude, size (px), eta centre,
    eta sigma, map row, map column, radius (map px).
    """
    nrows, ncols = out.shape
    maxval = geo[G_MAX]
    for i in range(nrows):
        for j in range(ncols):
            out[i, j] = 0
    st = stream(seed, key)
    rs = sample_rotation(eta, phi)
    rd = detector_rotation(nu, delta)
    plab = rs @ pinv @ rs.T
    a = amp[m] * scale
    if a > 0.0:
        _add_peak(out, st, rs @ q[m], a, sigma[m], plab, rd, geo, noisy)
    a2 = amp2[m] * scale
    if a2 > 0.0:
        _add_peak(out, st, rs @ q2[m], a2, sigma[m], plab, rd, geo, noisy)
    if spots.shape[0] > 0:
        nx = int(geo[G_NX])
        my = m // nx
        mx = m - my * nx
        for k in range(spots.shape[0]):
            if (my - spots[k, 6]) ** 2 + (mx - spots[k, 7]) ** 2 > spots[k, 8] ** 2:
                continue
            de = (eta - spots[k, 4]) / spots[k, 5]
            peak = spots[k, 2] * scale * math.exp(-0.5 * de * de)
            if peak <= geo[G_THR]:
                continue
            size = spots[k, 3]
            rr = int(math.ceil(4.0 * size))
            r0 = int(round(spots[k, 0]))
            c0 = int(round(spots[k, 1]))
            for r in range(max(r0 - rr, int(geo[G_ROFF])), min(r0 + rr, int(geo[G_ROFF]) + nrows - 1) + 1):
                for c in range(max(c0 - rr, int(geo[G_COFF])), min(c0 + rr, int(geo[G_COFF]) + ncols - 1) + 1):
                    dr = r - spots[k, 0]
                    dc = c - spots[k, 1]
                    lam = peak * math.exp(-0.5 * (dr * dr + dc * dc) / (size * size))
                    if lam > geo[G_THR]:
                        _deposit(out, st, r - int(geo[G_ROFF]), c - int(geo[G_COFF]), lam, maxval, noisy)
    if not noisy:
        return
    gr = geo[G_GRAD_R]
    gc = geo[G_GRAD_C]
    if gr == 0.0 and gc == 0.0:
        nbg = poisson(st, geo[G_BG] * scale * nrows * ncols)
        for _ in range(nbg):
            i = randint(st, nrows)
            j = randint(st, ncols)
            v = out[i, j] + 1
            out[i, j] = v if v < maxval else maxval
    else:  # density ∝ 1 + gr·u + gc·v over the whole detector (u, v in [-1, 1]): thinning
        top = 1.0 + abs(gr) + abs(gc)
        nbg = poisson(st, geo[G_BG] * scale * nrows * ncols * top)
        rows_full = 2.0 * geo[G_ROW0]
        cols_full = 2.0 * geo[G_COL0]
        for _ in range(nbg):
            i = randint(st, nrows)
            j = randint(st, ncols)
            u = 2.0 * (i + geo[G_ROFF]) / rows_full - 1.0
            w = 2.0 * (j + geo[G_COFF]) / cols_full - 1.0
            if uniform(st) * top < 1.0 + gr * u + gc * w:
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
def _render_many(out: Any, midx: Any, eta: Any, phi: Any, nu: Any, delta: Any, scale: Any, seed: int, key0: int,
                 q: Any, sigma: Any, amp: Any, q2: Any, amp2: Any, pinv: Any, spots: Any, geo: Any, dead: Any,
                 hot: Any, hot_mean: Any, noisy: bool) -> None:
    for f in numba.prange(out.shape[0]):
        _render_one(out[f], midx[f], eta[f], phi[f], nu[f], delta[f], scale[f], seed, key0 + f,
                    q, sigma, amp, q2, amp2, pinv, spots, geo, dead, hot, hot_mean, noisy)


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
        geometry, ROI, flux and the detector's chip gaps.
    particle : ParticleModel
        read at every call, so `ParticleModel.set_charge_state` between frames takes effect.
    seed : int
        fixes dead/hot pixels and the noise streams; frame n of a renderer's life (counted
        over `frame` and `frames` calls) is always the same for the same seed and inputs.
    dtype : uint32 (default) or uint16 (counts clipped at 65535).
    shape : the peak's 3-D shape (`peak_shape.COMPACT` by default).
    spots : powder-arc spots (k, ≥ 9) as `_render_one` reads them (`scene.powder_spots`; later columns ignored).
    gradient : background density slope (rows, columns) across the detector, 0 = uniform.
    unmasked_hot : extra hot pixels near the peak that the file's mask does not list.
    """

    def __init__(self, setup: SxdmSetup, particle: ParticleModel, seed: int = 0,
                 dtype: npt.DTypeLike = np.uint32, shape: PeakShape = COMPACT,
                 spots: npt.NDArray[np.float64] | None = None, gradient: tuple[float, float] = (0.0, 0.0),
                 unmasked_hot: int = 0) -> None:
        self.setup = setup
        self.particle = particle
        self.seed = int(seed)
        if self.seed < 0:
            raise ConfigError(f"FrameRenderer seed {seed!r}: must be >= 0")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ConfigError(f"FrameRenderer dtype {self.dtype}: expected uint16 or uint32")
        if unmasked_hot < 0:
            raise ConfigError(f"FrameRenderer unmasked_hot {unmasked_hot!r}: must be >= 0")
        self.shape = shape
        self.spots = np.zeros((0, 9)) if spots is None else np.ascontiguousarray(spots, dtype=np.float64)
        self._pinv = np.ascontiguousarray(shape.inverse)
        self._counter = 0
        self._volume = sample_volume(setup)
        r0, _, c0, _ = setup.roi_window
        geo = np.zeros(N_GEO)
        geo[:11] = [setup.beam_center[0], setup.beam_center[1], setup.pixel_size_m, setup.distance_m,
                    setup.k, r0, c0, setup.background_rate, THRESHOLD, float(np.iinfo(self.dtype).max), setup.pixel_dq]
        geo[G_ISO] = 1.0 if shape.isotropic else 0.0
        geo[G_HOLE] = shape.hole
        geo[G_HOLE_C2] = shape.hole_size ** 2
        geo[G_WMAX] = shape.largest_width
        geo[G_GRAD_R], geo[G_GRAD_C] = gradient
        geo[G_NX] = setup.map_shape[1]
        self._geo = geo
        self.dead, self.hot, self.hot_mean = self._defects()
        self.unmasked_hot = self._unmasked_hot(int(unmasked_hot))
        if self.unmasked_hot.size:
            self.hot = np.concatenate([self.hot, self.unmasked_hot])
            self.hot_mean = np.concatenate([self.hot_mean, np.full(len(self.unmasked_hot), setup.hot_mean_counts)])
        self._version = -1
        self._amp = np.zeros(0)
        self._drift = (0.0, 0.0)

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

    def _unmasked_hot(self, n: int) -> npt.NDArray[np.int64]:
        """``n`` hot pixels within ~40 pixels of the direct-beam centre, inside the rendered window."""
        if n == 0:
            return np.zeros((0, 2), dtype=np.int64)
        rng = np.random.default_rng([self.seed, 0x407])
        r0, r1, c0, c1 = self.setup.roi_window
        rc, cc = self.setup.beam_center
        rows = np.clip(np.round(rc + rng.uniform(-40, 40, n)), r0, r1 - 1)
        cols = np.clip(np.round(cc + rng.uniform(-40, 40, n)), c0, c1 - 1)
        return np.stack([rows, cols], axis=1).astype(np.int64)

    @property
    def detector_mask(self) -> npt.NDArray[np.uint8]:
        """(rows, cols) uint8 of the rendered window: 1 = dead or (known) hot pixel or chip gap."""
        r0, r1, c0, c1 = self.setup.roi_window
        mask = np.zeros(self.setup.frame_shape, dtype=np.uint8)
        known_hot = self.hot[: len(self.hot) - len(self.unmasked_hot)]
        for r, c in np.concatenate([self.dead, known_hot]):
            if r0 <= r < r1 and c0 <= c < c1:
                mask[r - r0, c - c0] = 1
        rows, cols = self._gaps()
        mask[rows, :] = 1
        mask[:, cols] = 1
        return mask

    def _gaps(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Chip-gap rows and columns in the coordinates of the rendered window."""
        r0, r1, c0, c1 = self.setup.roi_window
        rows = np.array([r - r0 for r in self.setup.gap_rows if r0 <= r < r1], dtype=np.int64)
        cols = np.array([c - c0 for c in self.setup.gap_cols if c0 <= c < c1], dtype=np.int64)
        return rows, cols

    def _zero_gaps(self, out: npt.NDArray[Any]) -> None:
        rows, cols = self._gaps()
        if rows.size:
            out[..., rows, :] = 0
        if cols.size:
            out[..., :, cols] = 0

    def set_drift(self, dy: float, dx: float) -> None:
        """Shift the sample by (dy, dx) map pixels: map pixel m then sees the particle at m − shift,
        and the powder grains around it move with it (their discs on the map shift by the same)."""
        self._drift = (float(dy), float(dx))
        self._version = -1

    def _spots_seen(self) -> npt.NDArray[np.float64]:
        """The powder spots with their map discs where the drifted sample puts them."""
        if self._drift == (0.0, 0.0) or not self.spots.shape[0]:
            return self.spots
        moved = self.spots.copy()
        moved[:, 6] += self._drift[0]
        moved[:, 7] += self._drift[1]
        return moved

    def _arrays(self) -> tuple[npt.NDArray[np.float64], ...]:
        if self._version != self.particle.version:
            q, sigma, counts = self.particle.render_arrays()
            q2, counts2 = self.particle.second_peak()
            if self._drift != (0.0, 0.0):
                q, sigma, counts, q2, counts2 = shift_arrays(self.setup.map_shape, self._drift,
                                                             q, sigma, counts, q2, counts2)
            norm = self.shape.norm * sigma ** 3
            self._cache = (q, sigma, counts * self._volume / norm, np.ascontiguousarray(q2),
                           counts2 * self._volume / norm)
            self._version = self.particle.version
        return self._cache

    def frame(self, map_index: int, eta: float, phi: float, nu: float, delta: float,
              out: npt.NDArray[Any] | None = None, scale: float = 1.0) -> npt.NDArray[Any]:
        """One noisy frame (rows, cols) of map pixel ``map_index`` at the given angles (deg)."""
        if not 0 <= int(map_index) < self.setup.n_points:
            raise ConfigError(f"map_index {map_index}: outside 0..{self.setup.n_points - 1}")
        if out is None:
            out = np.empty(self.setup.frame_shape, dtype=self.dtype)
        self._check_out(out, 2)
        q, sigma, amp, q2, amp2 = self._arrays()
        _render_one(out, int(map_index), float(eta), float(phi), float(nu), float(delta), float(scale), self.seed,
                    self._counter, q, sigma, amp, q2, amp2, self._pinv, self._spots_seen(), self._geo, self.dead, self.hot,
                    self.hot_mean, True)
        self._zero_gaps(out)
        self._counter += 1
        return out

    def frames(self, map_indices: npt.ArrayLike, etas: npt.ArrayLike, phis: npt.ArrayLike, nus: npt.ArrayLike,
               deltas: npt.ArrayLike, out: npt.NDArray[Any] | None = None,
               scales: npt.ArrayLike = 1.0) -> npt.NDArray[Any]:
        """A block of noisy frames (n, rows, cols), rendered in parallel; angles and scales broadcast."""
        midx, eta, phi, nu, delta, scale = self._broadcast(map_indices, etas, phis, nus, deltas, scales)
        if out is None:
            out = np.empty((midx.size,) + self.setup.frame_shape, dtype=self.dtype)
        self._check_out(out, 3, midx.size)
        q, sigma, amp, q2, amp2 = self._arrays()
        _render_many(out, midx, eta, phi, nu, delta, scale, self.seed, self._counter, q, sigma, amp, q2, amp2,
                     self._pinv, self._spots_seen(), self._geo, self.dead, self.hot, self.hot_mean, True)
        self._zero_gaps(out)
        self._counter += midx.size
        return out

    def expected(self, map_indices: npt.ArrayLike, etas: npt.ArrayLike, phis: npt.ArrayLike, nus: npt.ArrayLike,
                 deltas: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Noise-free Bragg counts λ (n, rows, cols) without background or defects (for checks)."""
        midx, eta, phi, nu, delta, scale = self._broadcast(map_indices, etas, phis, nus, deltas, 1.0)
        out = np.empty((midx.size,) + self.setup.frame_shape, dtype=np.float64)
        q, sigma, amp, q2, amp2 = self._arrays()
        geo = self._geo.copy()
        geo[G_MAX] = np.inf
        _render_many(out, midx, eta, phi, nu, delta, scale, self.seed, 0, q, sigma, amp, q2, amp2, self._pinv,
                     np.zeros((0, 9)), geo, self.dead, self.hot, self.hot_mean, False)
        return out

    def scan_counts(self, etas: npt.ArrayLike, chunk: int = 32) -> npt.NDArray[np.float64]:
        """Noise-free Bragg counts of the whole particle on the detector at each eta (n_etas,): how much
        each eta scan of a map sees of it, with the peak's real shape (a focused beam's broad peak widens
        the rocking curve, so the compact model's weights put faint scans' weight in the wrong place).
        Rendered where the particle is, `chunk` map pixels at a time, at the drift now set."""
        etas = np.asarray(etas, dtype=np.float64).reshape(-1)
        q, sigma, amp, q2, amp2 = self._arrays()
        lit = np.flatnonzero((np.asarray(amp) > 0) | (np.asarray(amp2) > 0))
        out = np.zeros(etas.size)
        for k, eta in enumerate(etas):
            for a in range(0, lit.size, chunk):
                out[k] += self.expected(lit[a:a + chunk], eta, self.setup.phi, self.setup.nu, self.setup.delta).sum()
        return out

    def _broadcast(self, *arrays: npt.ArrayLike) -> tuple[npt.NDArray[Any], ...]:
        midx = np.atleast_1d(np.asarray(arrays[0], dtype=np.int64))
        n = midx.size
        bad = (midx < 0) | (midx >= self.setup.n_points)
        if bad.any():
            raise ConfigError(f"map_index {int(midx[np.argmax(bad)])}: outside 0..{self.setup.n_points - 1}")
        rest = []
        for name, a in zip(("etas", "phis", "nus", "deltas", "scales"), arrays[1:]):
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
