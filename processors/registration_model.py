"""Eta-scan drift from a model of the sample: each pixel's rocking curve and each scan's shift fitted together.

Why: intensity cross-correlation (`registration.register_eta_scans`) cannot tell drift from the band of a
strained particle that is in Bragg condition and moves across it with eta, and the tilt maps
(`registration.register_eta_scans_by_tilt`) are noisy where a scan lights only that band (the flank scans
of the rocking curve, 10-25 % of the brightest scan's Σ I: 0.3-0.6 map pixel off on the truth harness's
``drift`` maps) and flat on a particle of one tilt. A model explains the moving band: every pixel of the
SAMPLE has a rocking curve, amplitude a(r), centre θ(r) and width w(r) in eta (Gaussian: the Σ I of a
compact peak crossed by the Ewald sphere), and scan s at eta_s sees the sample moved by its shift d_s,
each map pixel the sample's pixels around m − d_s mixed as a drifted beam mixes them (amplitude bilinear,
centre and width amplitude-weighted: what `simulators.drift.shift_arrays` renders). θ moves WITH the sample,
so a flank scan is placed where its band must be; the particle's edges and its θ(r) still place the scans
of a particle without tilt contrast.

`fit_rocking_model` fits the curves (3 per sample pixel with signal) and the shifts (2 per scan) at once:
weighted least squares over every scan's per-pixel Σ I (Poisson variance of the data plus the map's noise
floor), damped Gauss-Newton (Levenberg-Marquardt) on the sparse analytic Jacobian, from the given shifts
(the tilt registration's, or zero) and the curves their moved sums imply (moments). The shifts' Σ I-weighted
mean is held at zero (the frame `register_eta_scans` gives). Tried first (session 24): the curves given the
shifts and the shifts given the curves in turn converged slowly (0.03 map pixel per round after 8 rounds,
~35 s per 24 x 24 map); a leave-one-out log-parabola per pixel of the scans moved back (no sharp model)
was 0.1-0.35 map pixel off even from the true shifts (the move back blurs each scan by its own sub-pixel place).

Measured (truth harness, ``opmon process --register tilt --powder-spots auto`` on the maps of `opmon bench truth`,
scans with ≥ 10 % of the brightest scan's true Σ I): ``drift`` sizes 24/32 seeds 4-7, worst scan 0.12-0.60 → 0.01-0.09
map pixel, Σ I-weighted mean 0.02-0.11 → 0.01-0.03; the maps then match those made with the true shifts (median |Δd|
within 1.3e-6 Å of them, mask within 0.8 %). Every drift-free case (none, low-signal, every single effect, ``all``
without drift; seeds 4-5) declines: gain 0.96-1.07, the maps identical. ``all`` seeds 4-6 decline on χ² per datum
(1.42-1.52): the tilt fit's shifts stand, and seed 5's drift (the tilt fit declined: no tilt contrast) stays unfound;
fitted from zero anyway it is 0.28 map pixel off (weighted mean; 0.63 unregistered), worst scan 0.87. Which effect:
drift with one other effect, seed 5 (tilt fit → model): focused-beam 0.29/0.67 → 0.02/0.07 (weighted mean / worst
≥ 10 % scan), gradient 0.21/0.36 → 0.03/0.12, powder-arcs 0.28/0.71 → 0.04/0.16, all kept; maxipix 0.22/0.42, the model
0.05/0.18 but χ² 1.53: declined (the chip gaps cut each pixel's peak by an amount that varies with its q); ring 0.62/0.97
(declined tilt), the model 0.43/1.13 at χ² 1.98: the central stop's ring-like peak has no Gaussian rocking curve. A flat-
topped profile exp(−z²/2)(1 + c·z²), one c per map, brought ring's χ² to 1.13 but not its shifts (0.38/1.19), and let
``all`` seed 6 through the χ² test with worse shifts (0.06/0.30 against the tilt fit's 0.07/0.13): not kept. Cost (loaded
machine, 2 cores shared): 0.5-2 s per 24 x 24 map, 1.5-5 s per 32 x 32 (the damped solve: the curves' sparse block
factored, the shifts eliminated through it).

`register_eta_scans_by_model` keeps the fit only if the model explains the scans (χ² per datum at most
`MAX_REDUCED`) and `MIN_MODEL_GAIN` times better than the same model with every scan unmoved; otherwise the given
start comes back unchanged (zero when the tilt registration declined: the map `--register off` makes).
`EtaScanAccumulator._shifts` calls it only when the tilt registration kept shifts (stop 24, lead): from zero it found
no drift on any truth map (seed 5 ``all`` above: 0.28 map pixel off, declined), and a still map, the usual case once
registration is the default, would pay its cost for nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

MODEL_SIGNAL = 0.02    # scans with less Σ I than this share of the brightest are not fitted (they take the nearest one's shift)
SUPPORT = 0.02         # sample pixels whose Σ I (scans moved back) reaches this share of the brightest, dilated by one, carry a curve
MIN_WIDTH = 0.3        # rocking-curve width (sd) at least this many eta steps (a narrower one is one scan's noise)
GAUGE = 1e3            # weight of the residual holding the shifts' Σ I-weighted mean at zero
ITERATIONS = 60        # Levenberg-Marquardt steps at most ...
SETTLED = 1e-4         # ... or until an accepted step lowers χ² by less than this share
MAX_CURVE_PIXELS = 1500  # sample pixels with a curve beyond which the fit is not tried (its damped solve grows faster than
                         # the map: 232 / 373 / 1157 curve pixels on 24 / 32 / 64-pixel drift maps, 1-3 / 2-7 / 9-35 s loaded)
MIN_MODEL_GAIN = 1.2   # the shifts are kept only if χ² unmoved / χ² moved reaches this (truth harness, sizes 24/32 seeds 4-7:
                       # drift maps 2.6-16; every drift-free case 0.96-1.07) ...
MAX_REDUCED = 1.35     # ... and the model explains the scans moved to within this χ² per datum (drift maps 0.93-1.19; `all`
                       # 1.42-1.52, where its shifts wander along the drift that a Bragg-angle gradient mimics: 0.13-0.20 map
                       # pixel weighted mean, worst scans 0.5-0.9, against the tilt fit's 0.07-0.20)

log = logging.getLogger(__name__)


@dataclass
class ModelFit:
    """The fitted shifts (n_scans, 2), the fit's χ² (weighted squared residuals over the fitted scans' pixels) and
    the number of those residuals."""

    shifts: F64
    chi2: float
    n_data: int = 0

    @property
    def reduced(self) -> float:
        """χ² per datum: ~1 when the model explains the scans to their noise."""
        return self.chi2 / self.n_data if self.n_data else 0.0


class _Problem:
    """The scans' data, the sample pixels that carry a curve, and the model's residuals and Jacobian."""

    def __init__(self, s0: F64, eta: F64, signal: npt.NDArray[np.int64], start: F64) -> None:
        from scipy.ndimage import binary_dilation

        from opmon.processors.registration import resample

        self.n_scans, self.ny, self.nx = s0.shape
        self.signal, self.eta = signal, eta[signal]
        self.n_pix = self.ny * self.nx
        moved = np.clip(np.stack([resample(s0[k], start[k]) for k in signal]), 0.0, None)
        total = moved.sum(axis=0)
        lit = total >= SUPPORT * total.max()
        support = binary_dilation(lit, iterations=1)
        self.support = np.flatnonzero(support.ravel())
        self.index = np.full(self.n_pix, -1, dtype=np.int64)
        self.index[self.support] = np.arange(self.support.size)
        self.data = s0[signal].reshape(signal.size, -1)
        self.sigma = np.sqrt(np.clip(self.data, 0.0, None) + self._noise_floor(s0[signal], support) ** 2)
        weight = np.clip(self.data.sum(axis=1), 0.0, None)
        self.share = weight / weight.sum()
        a = total.ravel()[self.support]
        centre = (moved * self.eta[:, None, None]).sum(axis=0).ravel()[self.support] / np.where(a > 0, a, 1.0)
        sq = np.zeros_like(a)
        for k in range(signal.size):
            sq += moved[k].ravel()[self.support] * (self.eta[k] - centre) ** 2
        width = np.sqrt(np.clip(sq / np.where(a > 0, a, 1.0), MIN_WIDTH ** 2, None))
        self.x0 = np.concatenate([a / (np.sqrt(2 * np.pi) * width), centre, width, start[signal].ravel()])
        self.K = self.support.size

    @staticmethod
    def _noise_floor(scans: F64, support: npt.NDArray[np.bool_]) -> float:
        """The per-pixel noise of the scans away from the particle (robust sd of the background-corrected Σ I of
        the map pixels more than 4 from the support, where no drift of up to 3 map pixels brings it), at least 1."""
        from scipy.ndimage import binary_dilation

        far = ~binary_dilation(support, iterations=4)
        values = scans[:, far]
        if values.size < 10:
            return 1.0
        return max(1.0, 1.4826 * float(np.median(np.abs(values - np.median(values)))))

    def _sampling(self, shifts: F64) -> tuple[Any, Any, Any]:
        """Sparse (scans·pixels, K) B: map pixel m of scan j sees the sample's pixels around m − d_j (bilinear), and
        dB/d(dy_j), dB/d(dx_j) (same pattern)."""
        import scipy.sparse as sparse

        n = self.signal.size
        yy, xx = np.divmod(np.arange(self.n_pix), self.nx)
        py = yy[None, :] - shifts[:, 0:1]
        px = xx[None, :] - shifts[:, 1:2]
        y0, x0 = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
        fy, fx = py - y0, px - x0
        row = np.arange(n * self.n_pix).reshape(n, self.n_pix)
        rows, cols, vb, vy, vx = [], [], [], [], []
        for oy, wy, gy in ((0, 1.0 - fy, 1.0), (1, fy, -1.0)):
            for ox, wx, gx in ((0, 1.0 - fx, 1.0), (1, fx, -1.0)):
                yc, xc = y0 + oy, x0 + ox
                inside = (yc >= 0) & (yc < self.ny) & (xc >= 0) & (xc < self.nx)
                col = np.where(inside, self.index[np.clip(yc, 0, self.ny - 1) * self.nx + np.clip(xc, 0, self.nx - 1)], -1)
                keep = col >= 0
                rows.append(row[keep])
                cols.append(col[keep])
                vb.append((wy * wx)[keep])
                vy.append((gy * wx)[keep])
                vx.append((wy * gx)[keep])
        r, c = np.concatenate(rows), np.concatenate(cols)
        shape = (n * self.n_pix, self.K)
        return tuple(sparse.csr_matrix((np.concatenate(v), (r, c)), shape=shape) for v in (vb, vy, vx))  # type: ignore[return-value]

    def evaluate(self, x: F64, jacobian: bool) -> tuple[F64, Any]:
        """Residuals (weighted, plus the two gauge rows) and, if asked, the sparse Jacobian."""
        import scipy.sparse as sparse

        K, n = self.K, self.signal.size
        a, theta, width, shifts = x[:K], x[K:2 * K], x[2 * K:3 * K], x[3 * K:].reshape(n, 2)
        b, by, bx = self._sampling(shifts)
        amp, mom1, mom2 = b @ a, b @ (a * theta), b @ (a * width)
        seen = amp > 1e-12 * max(float(a.max()), 1e-300)
        inv = np.where(seen, 1.0 / np.where(seen, amp, 1.0), 0.0)
        t, u = mom1 * inv, np.where(seen, mom2 * inv, 1.0)
        e = np.repeat(self.eta, self.n_pix) - t
        g = np.where(seen, np.exp(-0.5 * (e / u) ** 2), 0.0)
        sigma, data = self.sigma.ravel(), self.data.ravel()
        res = np.concatenate([(amp * g - data) / sigma, GAUGE * (self.share[:, None] * shifts).sum(axis=0)])
        if not jacobian:
            return res, None
        c1, c2 = e / u ** 2, e ** 2 / u ** 3
        coo = b.tocoo()
        rr, cc, bb = coo.row, coo.col, coo.data
        alpha, beta, gamma = g * (1.0 - c1 * t - c2 * u) / sigma, g * c1 / sigma, g * c2 / sigma
        d_a = bb * (alpha[rr] + beta[rr] * theta[cc] + gamma[rr] * width[cc])
        d_theta, d_width = bb * beta[rr] * a[cc], bb * gamma[rr] * a[cc]
        shift_cols = []
        for bd in (by, bx):
            da, dm1, dm2 = bd @ a, bd @ (a * theta), bd @ (a * width)
            shift_cols.append((g * da + amp * g * (c1 * (dm1 - t * da) * inv + c2 * (dm2 - u * da) * inv)) / sigma)
        m = n * self.n_pix
        scan = np.repeat(np.arange(n), self.n_pix)
        all_rows = np.concatenate([rr, rr, rr, np.arange(m), np.arange(m), np.full(n, m), np.full(n, m + 1)])
        all_cols = np.concatenate([cc, cc + K, cc + 2 * K, 3 * K + 2 * scan, 3 * K + 2 * scan + 1,
                                   3 * K + 2 * np.arange(n), 3 * K + 2 * np.arange(n) + 1])
        values = np.concatenate([d_a, d_theta, d_width, shift_cols[0], shift_cols[1], GAUGE * self.share, GAUGE * self.share])
        return res, sparse.csr_matrix((values, (all_rows, all_cols)), shape=(m + 2, 3 * K + 2 * n))

    def bounded(self, x: F64) -> F64:
        """Amplitudes ≥ 0, widths ≥ `MIN_WIDTH` eta steps."""
        K = self.K
        out = x.copy()
        out[:K] = np.clip(out[:K], 0.0, None)
        out[2 * K:3 * K] = np.clip(out[2 * K:3 * K], MIN_WIDTH, None)
        return out


def _chi2(res: F64) -> float:
    """Squared residuals of the data rows (the two gauge rows left out)."""
    return float((res[:-2] ** 2).sum())


def _damped_step(normal: Any, grad: F64, damping: float, n_curves: int) -> F64:
    """The Levenberg-Marquardt step (normal + damping·diag) δ = −grad, the shifts (the parameters after the first
    `n_curves`) eliminated first: their columns are dense over their scan's pixels, and a direct solve of the
    whole system fills in (55 ms per solve on a 32 x 32 map); the curves' block alone is sparse (Schur complement)."""
    import scipy.sparse as sparse
    from scipy.sparse.linalg import splu

    diag = normal.diagonal()
    damped = (normal + sparse.diags(damping * diag + 1e-12 * (float(diag.max()) or 1.0))).tocsc()
    curves = splu(damped[:n_curves, :n_curves].tocsc())
    if damped.shape[0] == n_curves:
        return np.asarray(curves.solve(-grad), dtype=np.float64)
    coupling = damped[:n_curves, n_curves:].toarray()
    shifts_block = damped[n_curves:, n_curves:].toarray()
    solved = curves.solve(np.column_stack([coupling, grad[:n_curves]]))
    schur = shifts_block - coupling.T @ solved[:, :-1]
    d_shift = np.linalg.solve(schur, -grad[n_curves:] + coupling.T @ solved[:, -1])
    d_curve = curves.solve(-grad[:n_curves] - coupling @ d_shift)
    return np.concatenate([d_curve, d_shift])


def _levenberg_marquardt(problem: _Problem, x: F64, free: npt.NDArray[np.bool_]) -> tuple[F64, float]:
    """Damped Gauss-Newton from `x` over the parameters marked `free` (the curves always; the shifts or not):
    the parameters and χ²."""
    n_curves = 3 * problem.K
    res, jac = problem.evaluate(x, True)
    cost, damping = float((res ** 2).sum()), 1e-3
    for _ in range(ITERATIONS):
        j = jac[:, np.flatnonzero(free)]
        normal = (j.T @ j).tocsc()
        grad = j.T @ res
        accepted = False
        while damping < 1e8:
            trial = x.copy()
            trial[free] += _damped_step(normal, grad, damping, n_curves)
            trial = problem.bounded(trial)
            trial_res, _ = problem.evaluate(trial, False)
            trial_cost = float((trial_res ** 2).sum())
            if trial_cost < cost:
                accepted = True
                break
            damping *= 4.0
        if not accepted:
            break
        settled = cost - trial_cost < SETTLED * cost
        x, cost, damping = trial, trial_cost, max(damping / 3.0, 1e-7)
        res, jac = problem.evaluate(x, True)
        if settled:
            break
    return x, _chi2(res)


def fit_rocking_model(s0: npt.ArrayLike, eta: npt.ArrayLike, start: npt.ArrayLike, move: bool = True) -> ModelFit:
    """Per-pixel rocking curves and per-scan shifts fitted to the scans' Σ I together (see the module docstring).

    Parameters
    ----------
    s0 : (n_scans, ny, nx) background-corrected Σ I per map pixel of each eta scan, in increasing eta.
    eta : (n_scans,) the scans' eta (any unit; only their steps matter).
    start : (n_scans, 2) shifts (dy, dx) in map pixels to start from.
    move : False: the shifts are held at `start` and only the curves are fitted (the unmoved comparison).

    Returns
    -------
    `ModelFit`: shifts in the frame where their Σ I-weighted mean is zero (scans without signal take the nearest
    fitted scan's), and the fit's χ².
    """
    from opmon.processors.registration import centred_shifts, filled_shifts

    scans = np.nan_to_num(np.asarray(s0, dtype=np.float64))
    start = np.asarray(start, dtype=np.float64).reshape(-1, 2)
    steps = np.diff(np.asarray(eta, dtype=np.float64))
    step = float(np.median(steps)) if steps.size and np.median(steps) > 0 else 1.0
    angle = (np.asarray(eta, dtype=np.float64) - float(np.asarray(eta)[0])) / step
    total = np.clip(scans, 0.0, None).sum(axis=(1, 2))
    if scans.shape[0] < 3 or not total.max() > 0:
        return ModelFit(start.copy(), 0.0)
    signal = np.flatnonzero(total >= MODEL_SIGNAL * total.max())
    problem = _Problem(scans, angle, signal, start)
    if problem.K > MAX_CURVE_PIXELS:
        log.info("model registration not tried: %d sample pixels carry a rocking curve (> %d)", problem.K, MAX_CURVE_PIXELS)
        return ModelFit(start.copy(), 0.0)
    free = np.ones(problem.x0.size, dtype=bool)
    if not move:
        free[3 * problem.K:] = False
    x, chi2 = _levenberg_marquardt(problem, problem.bounded(problem.x0), free)
    shifts = start.copy()
    shifts[signal] = centred_shifts(x[3 * problem.K:].reshape(-1, 2), total[signal]) if move else start[signal]
    return ModelFit(filled_shifts(shifts, signal) if move else shifts, chi2, int(problem.data.size))


def register_eta_scans_by_model(s0: npt.ArrayLike, eta: npt.ArrayLike, start: npt.ArrayLike) -> F64:
    """Shifts of the eta scans from the joint fit of `fit_rocking_model`, started at `start`, kept only if the
    model fits the scans `MIN_MODEL_GAIN` times better (χ²) than with every scan unmoved; else `start` unchanged."""
    start = np.asarray(start, dtype=np.float64).reshape(-1, 2)
    try:
        moved = fit_rocking_model(s0, eta, start)
        fits = moved.n_data > 0 and moved.shifts.any() and moved.reduced <= MAX_REDUCED
        still = fit_rocking_model(s0, eta, np.zeros_like(start), move=False) if fits else None
    except (RuntimeError, np.linalg.LinAlgError) as exc:    # a singular damped system (SuperLU: RuntimeError)
        log.info("model registration declined: the fit failed (%s): the shifts found before are kept", exc)
        return start.copy()
    if still is None:
        if moved.n_data > 0 and moved.shifts.any():
            log.info("model registration declined: the rocking-curve model explains the scans only to χ² %.2f per "
                     "datum (> %.2f): the shifts found before are kept", moved.reduced, MAX_REDUCED)
        return start.copy()
    gain = still.chi2 / moved.chi2 if moved.chi2 > 0 else float("inf")
    if not gain >= MIN_MODEL_GAIN:
        log.info("model registration declined: the rocking-curve model fits the scans moved only %.2f times better than "
                 "unmoved (< %.2f): the shifts found before are kept", gain, MIN_MODEL_GAIN)
        return start.copy()
    log.info("model registration kept: χ² %.2f per datum, %.2f times better than unmoved", moved.reduced, gain)
    return moved.shifts
