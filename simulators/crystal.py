"""A simulated LMNO single crystal whose local lithium content, strain and tilt follow the charge.

The model gives the renderer one Bragg peak per map pixel (centre ``Q_p``, width ``σ_p``,
integrated counts ``I_p``) and gives tests the ground truth the processors must recover.

Physics (SCIENCE.md §1, seed 000), with the choices made here:

* Lattice spacing d400 from the local lithium content x of Li_xNi0.5Mn1.5O4 by a piecewise
  linear (Vegard-like) map through (x, d/Å) = (1, 2.0409), (0.9, 2.0332), (0.5, 2.0184),
  (0, 2.0000), the paper's numbers (seed 000, SCIENCE.md §1): d evolves gradually from
  2.0409 Å (4.1 V) to 2.0332 Å (near 4.7 V) in the Li1 solid solution (x 1 → 0.9); the first
  plateau is the Li0.9/Li0.5 miscibility gap, 2.0184 Å the Li0.5 phase, unchanged on the
  second plateau (Li0.5/Li0). Li0 was not imaged: 2.0000 Å (cubic a ≈ 8.00 Å of
  Ni0.5Mn1.5O4) is our choice and only matters with ``window="all"``. Without
  ``mixed_fronts`` a pixel that straddles a front gets the interpolated d, which is what the
  centre of mass of its two peaks gives to first order. A static smooth "microstrain" of
  ±1e-4 Å RMS is added (the gradient-like pattern of pristine crystals).
* Detector window (``window``): ``"all"`` renders every phase; ``"one-phase"`` (the paper:
  "the detector was positioned to observe only one of the LMNO phases at a given time")
  renders only the phase being consumed on the current plateau (Li1 down to x = 0.5, then
  Li0.5), so transformed regions vanish and the integrated intensity per map falls
  (Supplementary Fig. 10); the truth ``imaged_fraction`` says how much of each column is seen.
* Mixed pixels (``mixed_fronts``): a front is a band ~``front_width`` pixels wide in which
  the beam column holds both phases (the new one nearer the surface, the old one deeper);
  such a pixel gives two peaks weighted by the volume fractions. Truth: ``d_parent`` (the
  phase being consumed), ``d_product`` (the phase forming), ``product_fraction`` and
  ``d_spacing`` = 2π/|Q̄| of the intensity-weighted mean Q of the peaks the detector sees
  (what an ideal centre of mass measures; it differs from the intensity-weighted mean of the
  two d's by w(1 − w)Δd²/d: < 3e-5 Å on the paper's first plateau).
* Modes: ``"paper"`` (default: nucleation and growth from a few surface points on the first
  plateau, a Li-poor shell moving inward on the second), ``"nucleated"`` (nucleation on both
  plateaus), ``"core-shell"`` (core-shell on both), ``"uniform"`` (x = x_mean everywhere),
  ``"two-phase-nucleated"`` / ``"two-phase-core-shell"`` (one synthetic two-phase reaction
  over the whole range between the paper's two imaged spacings, 2.0409/2.0184 Å, with
  d linear in x: not the chemistry, the clearest two-peak histograms for tests).
  Solid-solution regions get a small surface-to-core gradient. The mean of the local x over
  the particle support equals ``x_mean`` exactly.
* Tilts: Voronoi mosaic domains with fixed directions and relative magnitudes in [0.15, 1]
  (blurred by one pixel). On the second plateau (x < 0.55 → 0.45) the pattern reorganises
  into smaller, more numerous domains whose tilts are largest at the surface and vanish in
  the core, as the paper's Fig. 5 shows. Their scale is the largest altitude
  ``0.6° − 0.52° · exp(−c / 2.53)`` with ``c = cycles + (1 − x_mean)``: 0.08° pristine,
  0.25° at the end of the first charge, → 0.6° after many cycles (seed 000, Fig. 7).
* Intensity: projected thickness of a truncated octahedron (flat top, linear edges, blurred
  by the 80 nm beam), zero outside; ``I_p = peak_counts · envelope``.
* Peak (compact model; `peak_shape` gives the renderer a focused beam's broad, anisotropic
  or ring-like shape with the same σ_p as scale): isotropic 3D Gaussian of sigma ``σ_p = σ0 (1 + 0.25 b)`` where σ0 =
  ``setup.peak_sigma_q`` (1.25e-3 Å⁻¹: FWHM 2.9e-3 Å⁻¹, a Scherrer length
  0.9·2π/FWHM ≈ 190 nm, i.e. the coherently diffracting volume extends somewhat beyond the
  80 nm beam footprint, which alone would give σ ≈ 3e-3 Å⁻¹). It is also the smallest width
  the default 0.04° rocking step samples without aliasing: a centre of mass of a Gaussian
  sampled at spacing h is biased by up to 0.4 % of h at σ = 0.6 h (here 7e-6 Å⁻¹, 1e-4°),
  but by 2.7 % at σ = 0.49 h. b ∈ [0, 1] is the fraction of
  neighbours on the other side of a phase front (fronts broaden the peak). The truth
  ``peak_width`` is the 3D second-moment radius of SCIENCE.md §3, ``sqrt(3) σ_p``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.simulators import fields
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.optics import bragg_eta, q_sample_at, sample_rotation

F64 = npt.NDArray[np.float64]

X_POINTS = np.array([0.0, 0.5, 0.9, 1.0])
D_POINTS = np.array([2.0000, 2.0184, 2.0332, 2.0409])
X_GAP = 0.9  # end of the Li1 solid solution, start of the first plateau
X_HALF = 0.5  # Li0.5 phase, boundary between the two plateaus
MODES = ("paper", "nucleated", "core-shell", "uniform", "two-phase-nucleated", "two-phase-core-shell")
MICROSTRAIN_RMS = 1.0e-4  # Å
TWO_PHASE_D = (2.0184, 2.0409)  # d at x = 0 and x = 1 of the synthetic two-phase modes
WINDOWS = ("all", "one-phase")


def d_of_x(x: npt.ArrayLike) -> F64:
    """(400) spacing in Å of Li_xNi0.5Mn1.5O4 (piecewise linear, see the module docstring)."""
    return np.interp(np.asarray(x, dtype=np.float64), X_POINTS, D_POINTS)


def tilt_scale_deg(x_mean: float, cycles: float) -> float:
    """Largest domain tilt (deg): 0.08 pristine, 0.25 after one charge, → 0.6 with cycling."""
    c = max(0.0, float(cycles) + (1.0 - float(x_mean)))
    return 0.6 - 0.52 * math.exp(-c / 2.53)


def tilt_angles(q: F64, mean_q: F64) -> tuple[F64, F64]:
    """Altitude and azimuth (deg) of Q vectors (..., 3) about ``mean_q`` (SCIENCE.md §3)."""
    u = mean_q / np.linalg.norm(mean_q)
    e1 = np.array([1.0, 0.0, 0.0]) - u[0] * u
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    qn = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-300)
    alt = np.degrees(np.arccos(np.clip(qn @ u, -1.0, 1.0)))
    az = np.degrees(np.arctan2(q @ e2, q @ e1)) % 360.0
    return alt, az


class ParticleModel:
    """Seeded LMNO particle on the map grid of ``setup``, changeable between frames.

    Parameters
    ----------
    setup : SxdmSetup
        geometry, map grid and flux.
    seed : int
        fixes shape, domains, nuclei and roughness; the state then depends only on the
        arguments of `set_charge_state`.
    mode : str
        one of `MODES` (see the module docstring).
    x_mean, cycles : float
        initial state of charge (1 = fully lithiated, pristine) and cycle count.
    window : str
        ``"all"`` (every phase reaches the detector) or ``"one-phase"`` (only the phase being
        consumed on the current plateau, as in the paper).
    mixed_fronts : bool
        fronts ``front_width`` pixels wide whose pixels give two peaks (else one pixel per
        front holds the remainder and gets one peak at the interpolated d).
    """

    def __init__(self, setup: SxdmSetup, seed: int = 0, mode: str = "paper",
                 x_mean: float = 1.0, cycles: float = 0.0, window: str = "all",
                 mixed_fronts: bool = False, front_width: float = 3.0) -> None:
        if mode not in MODES:
            raise ConfigError(f"ParticleModel mode {mode!r}: expected one of {', '.join(MODES)}")
        if window not in WINDOWS:
            raise ConfigError(f"ParticleModel window {window!r}: expected one of {', '.join(WINDOWS)}")
        if not front_width > 0:
            raise ConfigError(f"ParticleModel front_width {front_width!r}: must be > 0")
        self.window = window
        self.mixed_fronts = bool(mixed_fronts)
        self.front_width = float(front_width)
        if int(seed) < 0:
            raise ConfigError(f"ParticleModel seed {seed!r}: must be >= 0")
        self.setup = setup
        self.seed = int(seed)
        self.mode = mode
        rng = np.random.default_rng(self.seed)
        shape = setup.map_shape
        self.envelope, self.depth = fields.particle_shape(shape, rng)
        self.support = self.envelope > 0
        depth_in = np.where(self.support, np.maximum(self.depth, 0.0), 0.0)
        near_surface = 1.0 - depth_in / max(depth_in.max(), 1e-12)
        self.tilt_fields = (fields.tilt_domains(self.support, rng),
                            fields.tilt_domains(self.support, rng, 50.0, weight=near_surface ** 2))
        self.order_nucleation = [fields.nucleation_order(self.support, self.depth, rng) for _ in range(2)]
        self.order_core_shell = [fields.core_shell_order(depth_in, rng) for _ in range(2)]
        gradient = depth_in / max(depth_in.max(), 1e-12)
        self.surface_gradient = gradient - gradient[self.support].mean()
        self.microstrain = MICROSTRAIN_RMS * fields.smooth_noise(rng, shape, 4.0)
        self.q_ref = self._reference_direction()
        self.version = 0
        self.x_mean = float("nan")
        self.cycles = 0.0
        self.set_charge_state(x_mean, cycles)

    def _reference_direction(self) -> F64:
        """Unit (400) direction in the sample frame: at Bragg on the beam-centre pixel at eta_center."""
        s = self.setup
        q = q_sample_at(s.beam_center[0], s.beam_center[1], s.eta_center, s.phi, s.nu, s.delta,
                        energy_ev=s.energy_ev, distance_m=s.distance_m, pixel_size_m=s.pixel_size_m,
                        beam_center=s.beam_center)
        return q / np.linalg.norm(q)

    # ---- state of charge ------------------------------------------------------------------
    def _two_phase(self, plateau: int, kind: str, fraction: float, x_old: float,
                   x_new: float) -> tuple[F64, F64, F64]:
        """(x of the parent phase, x of the product phase, product volume fraction) per pixel."""
        order = self.order_nucleation[plateau] if kind == "nucleated" else self.order_core_shell[plateau]
        if self.mixed_fronts:
            frac = fields.fractions_by_order(order, self.support, fraction, self.front_width)
        else:
            x = fields.transform_by_order(order, self.support, fraction, x_old, x_new)
            frac = (x - x_old) / (x_new - x_old)
        return (np.where(self.support, x_old, np.nan), np.where(self.support, x_new, np.nan),
                np.where(self.support, frac, np.nan))

    def _phases(self, x: float) -> tuple[F64, F64, F64]:
        """Parent x, product x and product fraction of every pixel at mean content ``x``."""
        mode = self.mode
        nan = np.full(self.support.shape, np.nan)
        zero = np.where(self.support, 0.0, np.nan)
        if mode == "uniform":
            return np.where(self.support, x, np.nan), nan, zero
        if mode.startswith("two-phase-"):
            return self._two_phase(0, mode.removeprefix("two-phase-"), 1.0 - x, 1.0, 0.0)
        first = "core-shell" if mode == "core-shell" else "nucleated"
        second = "nucleated" if mode == "nucleated" else "core-shell"
        if x >= X_GAP:
            # solid solution, surface slightly ahead of the core; stays inside [X_GAP, 1]
            amp = 0.5 * min(1.0 - x, x - X_GAP)
            return (np.where(self.support, x + amp * self.surface_gradient
                             / max(np.abs(self.surface_gradient).max(), 1e-12), np.nan), nan, zero)
        if x >= X_HALF:
            return self._two_phase(0, first, (X_GAP - x) / (X_GAP - X_HALF), X_GAP, X_HALF)
        return self._two_phase(1, second, (X_HALF - x) / X_HALF, X_HALF, 0.0)

    def _d(self, x: F64) -> F64:
        """d (Å) of lithium content ``x`` in this mode, microstrain included."""
        if self.mode.startswith("two-phase-"):
            d = TWO_PHASE_D[0] + np.asarray(x) * (TWO_PHASE_D[1] - TWO_PHASE_D[0])
        else:
            d = d_of_x(np.nan_to_num(x, nan=1.0))
        return np.where(np.isfinite(x), d + self.microstrain, np.nan)

    def set_charge_state(self, x_mean: float, cycles: float = 0.0) -> None:
        """Move the particle to mean lithium content ``x_mean`` (0..1) after ``cycles`` cycles.

        Deterministic for a given seed: calling it with decreasing x shows the fronts moving.

        Raises
        ------
        ConfigError
            if ``x_mean`` is outside [0, 1] or ``cycles`` is negative.
        """
        x_mean = float(x_mean)
        if not 0.0 <= x_mean <= 1.0:
            raise ConfigError(f"x_mean {x_mean!r}: lithium content must lie in [0, 1]")
        if not cycles >= 0.0:
            raise ConfigError(f"cycles {cycles!r}: must be >= 0")
        self.x_mean = x_mean
        self.cycles = float(cycles)
        x_parent, x_product, frac = self._phases(x_mean)
        self.product_fraction = frac
        self.lithium = np.where(frac > 0, x_parent + np.nan_to_num(frac) * (np.nan_to_num(x_product) - x_parent),
                                x_parent)
        if self.mixed_fronts:
            self.d_parent, self.d_product = self._d(x_parent), self._d(x_product)
            parent_w = 1.0 - frac
        else:  # one peak per pixel at the interpolated d (the compact model)
            self.d_parent, self.d_product = self._d(self.lithium), np.full(frac.shape, np.nan)
            parent_w = np.where(self.support, 1.0, np.nan)
        product_w = np.where(np.isfinite(self.d_product), np.nan_to_num(frac), 0.0)
        if self.window == "one-phase":
            product_w = np.zeros_like(product_w)
            if not self.mixed_fronts:
                parent_w = np.where(self.support, 1.0 - np.nan_to_num(frac), np.nan)
        self.weights = (np.where(self.support, np.nan_to_num(parent_w), 0.0), product_w)
        scale = math.radians(tilt_scale_deg(x_mean, cycles))
        w = float(np.clip((X_HALF + 0.05 - x_mean) / 0.1, 0.0, 1.0))
        (a1, a2), (b1, b2) = self.tilt_fields
        t1, t2 = (1 - w) * a1 + w * b1, (1 - w) * a2 + w * b2
        alt = scale * np.hypot(t1, t2)
        az = np.arctan2(t2, t1)
        u = self.q_ref
        e1 = np.array([1.0, 0.0, 0.0]) - u[0] * u
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        self.direction = (np.cos(alt)[..., None] * u + np.sin(alt)[..., None]
                          * (np.cos(az)[..., None] * e1 + np.sin(az)[..., None] * e2))
        self.q_parent = self.direction * (2 * np.pi / self.d_parent)[..., None]
        self.q_product = self.direction * (2 * np.pi / self.d_product)[..., None]
        wp, wn = self.weights
        total = wp + wn
        q_mean = (wp[..., None] * np.nan_to_num(self.q_parent) + wn[..., None] * np.nan_to_num(self.q_product)) \
            / np.maximum(total, 1e-300)[..., None]
        self.q = np.where((total > 0)[..., None], q_mean, self.q_parent)
        self.d_spacing = np.where(self.support, 2 * np.pi / np.linalg.norm(self.q, axis=-1), np.nan)
        self.sigma = self.setup.peak_sigma_q * (1.0 + 0.25 * self._front_fraction())
        self.version += 1
        self._arrays: tuple[F64, F64, F64] | None = None

    def _front_fraction(self) -> F64:
        """Fraction of the 4 neighbours inside the particle whose x differs by > 0.05."""
        x = np.where(self.support, self.lithium, np.nan)
        pad = np.pad(x, 1, constant_values=np.nan)
        diff = np.zeros(x.shape)
        count = np.zeros(x.shape)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            nb = pad[dy:dy + x.shape[0], dx:dx + x.shape[1]]
            ok = np.isfinite(nb) & np.isfinite(x)
            count += ok
            diff += ok & (np.abs(np.nan_to_num(nb) - np.nan_to_num(x)) > 0.05)
        return np.where(count > 0, diff / np.maximum(count, 1), 0.0)

    # ---- what the renderer and the tests read ----------------------------------------------
    def render_arrays(self) -> tuple[F64, F64, F64]:
        """Flat per-map-pixel ``(Q (n, 3) Å⁻¹, sigma (n,) Å⁻¹, counts (n,))`` of the first peak.

        ``counts`` is the expected Bragg intensity summed over a full rocking scan at
        ``setup.eta_step``; pixels outside the particle, or whose phase the detector window
        does not see, have zero counts. `second_peak` gives the other phase of mixed pixels.
        """
        if self._arrays is None:
            n = self.setup.n_points
            q = np.nan_to_num(self.q_parent).reshape(n, 3).copy()
            counts = (self.setup.peak_counts * self.envelope * self.weights[0]).reshape(n).copy()
            self._arrays = (q, self.sigma.reshape(n).copy(), counts)
        return self._arrays

    def second_peak(self) -> tuple[F64, F64]:
        """Flat ``(Q (n, 3), counts (n,))`` of the product phase's peak (zero counts: none)."""
        n = self.setup.n_points
        counts = (self.setup.peak_counts * self.envelope * self.weights[1]).reshape(n)
        return np.nan_to_num(self.q_product).reshape(n, 3).copy(), counts.copy()

    def truth(self) -> dict[str, Any]:
        """Ground-truth maps with the names of FORMATS.md (plus lithium, support, sigma, phases).

        ``intensity`` is the expected counts the detector sees; ``mask`` the SCIENCE.md §3
        validity (intensity >= 20 % of the maximum, and > 0), ``support`` the particle;
        ``mean_q`` and the tilts are taken over the valid pixels, as the processors do. d, q,
        tilts and lithium are NaN outside the support; ``d_spacing`` is 2π/|q| with q the
        intensity-weighted mean Q of the seen peaks (see the module docstring).
        """
        intensity = self.setup.peak_counts * self.envelope * (self.weights[0] + self.weights[1])
        valid = (intensity > 0) & (intensity >= 0.2 * intensity.max())
        seen = self.support & (intensity > 0)
        mean_q = self.q[valid].mean(axis=0) if valid.any() else np.full(3, np.nan)
        alt, az = tilt_angles(np.nan_to_num(self.q), mean_q)
        nan_out = np.where(self.support, 1.0, np.nan)
        return {
            "d_spacing": self.d_spacing.copy(),
            "tilt_altitude": alt * nan_out,
            "tilt_azimuth": az * nan_out,
            "intensity": intensity,
            "peak_width": np.sqrt(3.0) * self.sigma * nan_out,
            "sigma": self.sigma * nan_out,
            "q": self.q.copy(),
            "mask": valid.astype(np.uint8),
            "support": self.support.astype(np.uint8),
            "mean_q": mean_q,
            "lithium": self.lithium.copy(),
            "d_parent": self.d_parent.copy(),
            "d_product": self.d_product.copy(),
            "product_fraction": self.product_fraction.copy(),
            "imaged_fraction": np.where(self.support, self.weights[0] + self.weights[1], np.nan),
            "seen": seen.astype(np.uint8),
        }

    def bragg_eta(self, q: npt.ArrayLike | None = None) -> F64 | float:
        """Eta (deg) where the mean Q (or given Q vectors) meet the Ewald sphere."""
        s = self.setup
        if q is None:
            q = self.truth()["mean_q"]
        q = np.asarray(q, dtype=np.float64)
        if q.ndim == 1:
            return bragg_eta(q, s.energy_ev, s.phi, s.eta_center)
        return np.array([bragg_eta(v, s.energy_ev, s.phi, s.eta_center) for v in q.reshape(-1, 3)])

    def _bragg_spread(self) -> tuple[F64, F64]:
        """Bragg eta (deg) and rocking-curve sigma (deg) of every particle pixel."""
        s = self.setup
        q, sigma, counts = self.render_arrays()
        keep = counts > 0
        if not keep.any():
            return np.zeros(0), np.zeros(0)
        etab = np.asarray(self.bragg_eta(q[keep]))
        # rocking speed of the Ewald gap: |d gap / d eta| = |z'| of Q rotated to Bragg
        qz = np.array([(sample_rotation(e, s.phi) @ v)[2] for e, v in zip(etab, q[keep])])
        return etab, np.degrees(sigma[keep] / np.maximum(np.abs(qz), 1e-12))

    def scan_weights(self, etas: npt.ArrayLike) -> F64:
        """Expected Bragg counts of the whole particle at each eta (Gaussian rocking curves): how
        much each eta scan of a map sees of it."""
        etas = np.asarray(etas, dtype=np.float64).reshape(-1)
        etab, sig_eta = self._bragg_spread()
        if etab.size == 0:
            return np.zeros(etas.size)
        counts = self.render_arrays()[2]
        counts = counts[counts > 0]
        z = (etas[:, None] - etab[None, :]) / sig_eta[None, :]
        return (counts[None, :] * np.exp(-0.5 * z * z) / sig_eta[None, :]).sum(axis=1)

    def rocking_margin(self, etas: npt.ArrayLike | None = None) -> float:
        """Smallest distance, in peak sigmas, from a particle pixel's Bragg eta to the scan ends.

        A centre-of-mass analysis recovers the true centre only if this is >= ~4.
        """
        etas = self.setup.eta_values() if etas is None else np.asarray(etas, dtype=np.float64)
        etab, sig_eta = self._bragg_spread()
        margin = np.minimum(etab - etas.min(), etas.max() - etab) / sig_eta
        return float(margin.min()) if margin.size else float("inf")

    def rocking_range(self, margin_sigma: float = 4.0) -> tuple[float, float]:
        """Smallest (eta_min, eta_max) in deg holding every pixel's peak ± ``margin_sigma`` sigmas.

        For strongly cycled particles (tilts up to 0.6°) the default ±0.6° scan is too
        narrow; an acquisition can widen or re-centre its rocking scan from this.
        """
        etab, sig_eta = self._bragg_spread()
        if etab.size == 0:
            c = self.setup.eta_center
            return (c, c)
        return (float(np.min(etab - margin_sigma * sig_eta)), float(np.max(etab + margin_sigma * sig_eta)))
