"""Optional per-pixel Gaussian peak fit along the rocking axis, beside the centre of mass.

Why: the centre of mass of a peak cut by the rocking range (maps.FLAG_ROCKING) is pulled inward,
towards the scanned side, and so are d, tilt and width. A Gaussian fitted to the pixel's rocking
profile finds the centre even when the scan ends before the peak does.

What it uses: the moments summed per eta scan (`EtaScanAccumulator`): per map pixel and scan i,
S0_i = Σ I, S1_i = Σ I·q, S2_i = Σ I·q⊗q (sample frame, background subtracted). Then per pixel:

1. the rocking profile S0_i(η) is fitted by A·exp(−(η − μ)²/2σ²): first a weighted least-squares
   parabola in ln S0 (Caruana's method, weights S0²/var over the scans holding signal), then a few
   Gauss–Newton steps on the counts themselves with Poisson weights 1/var (var = S0 + background
   counts), so noise in the faint tails does not steer the result;
2. each scan's q centroid S1_i/S0_i is fitted linearly in η (weights S0_i: the normal equations are
   sums of S0 and S1) and taken at the fitted centre μ: for a peak that is a Gaussian blob in q
   sliced by the Ewald sphere, each slice's centroid moves linearly with η and the slice through
   the blob's centre is the one at the rocking curve's maximum. Where the profile is whole the line
   passes through the centre of mass (a weighted regression line passes through the weighted mean),
   so fitted and centre-of-mass q agree there;
3. the width: the mean in-slice covariance (Σ (S2_i − S1_i S1_iᵀ/S0_i) / Σ S0_i, constant across
   the slices of a Gaussian blob) plus the spread of the slice centroids along the fitted rocking
   curve (slope ⊗ slope · σ²): sqrt of its trace, as the centre-of-mass `peak_width`.

4. overlapping peaks (two phases in one pixel, each at its own Bragg eta): where one Gaussian leaves
   a reduced χ² above `TWO_PEAK_CHI2`, a sum of two Gaussians is fitted and kept when it lowers χ²
   `TWO_PEAK_GAIN`-fold; each peak's q from the scans it dominates, both d values reported
   (`d_spacing_peak1`, the stronger, and `d_spacing_peak2`), the pixel's d from their
   intensity-weighted mean q (what the centre of mass of a whole scan measures).

5. peaks cut by the ROI or detector edge (`maps.FLAG_EDGE`, one-peak fits): the fitted centre and the
   in-slice width along each detector axis from the truncated-normal moments inverted (`roi_cut`).

A fit fails (NaN in every fitted map) where the centre-of-mass mask is 0, where fewer than
`MIN_SCANS` scans hold signal, where the log-profile is not concave, or where the centre lies more
than `MAX_EXTRAPOLATION` fitted widths beyond the scanned range, or the fitted width exceeds the range. Fit quality: reduced χ² of the
rocking-profile fit. Vectorised numpy over pixels (batched 3 x 3 solves): a map is fitted once.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import OpmonError
from opmon.processors.maps import tilt_angles
from opmon.processors.roi_cut import EdgeCut, correct_cut_peaks
from opmon.streaming.archive.maps_file import FitArrays
from opmon.streaming.archive.maps_file import read_fit as read_fit_group
from opmon.streaming.archive.maps_file import write_fit as write_fit_group

F64 = npt.NDArray[np.float64]
PeakFitModel = Literal["off", "gauss"]
PEAK_FIT_MODELS: tuple[str, ...] = ("off", "gauss")

MIN_SCANS = 3              # scans holding signal a pixel needs for a 3-parameter fit
SIGNAL_SIGMAS = 3.0        # a scan holds signal when its Σ I stands this many Poisson sigmas above zero
MAX_EXTRAPOLATION = 1.5    # fitted centre at most this many rocking widths beyond the scanned range
NEWTON_STEPS = 6           # Gauss–Newton refinements after the log-parabola start
TWO_PEAK_CHI2 = 4.0        # one Gaussian's reduced χ² above which a second Gaussian is tried (overlapping peaks) ...
TWO_PEAK_GAIN = 4.0        # ... and kept when it lowers the reduced χ² by this factor
TWO_PEAK_STEPS = 20        # Gauss–Newton steps of the two-Gaussian fit
PURE_SHARE = 0.95          # a scan tells a peak's q when that peak holds this share of its fitted counts
FIT_DESCRIPTION = ("per-pixel Gaussian fit of the rocking profile (Σ I per eta scan; log-parabola start, Gauss-Newton "
                   "with Poisson weights); q = the scans' q centroids fitted linearly in eta, taken at the fitted "
                   "centre; width = mean in-slice covariance + centroid spread along the fitted rocking curve; "
                   f"a second Gaussian where one leaves reduced chi2 > {TWO_PEAK_CHI2:g} and two lower it "
                   f"{TWO_PEAK_GAIN:g}-fold (peaks = 2; d_spacing_peak1/2 = the stronger/weaker peak's d, d_spacing = "
                   "their intensity-weighted mean q's; where two are not kept, one stands and reduced_chi2 tells its misfit). "
                   "One-peak pixels flagged cut by the ROI or detector edge (flags bit 1): the centre and in-slice width "
                   "along each detector axis from the truncated-normal moments inverted (edge_shift = detector pixels the "
                   "centre moved; 0 where not cut or not invertible). "
                   f"NaN where the centre-of-mass mask is 0, fewer than {MIN_SCANS} scans hold signal "
                   f"({SIGNAL_SIGMAS:g} sigma), the log-profile is not concave, the fitted rocking width exceeds the "
                   f"scanned eta range, or the centre lies more than {MAX_EXTRAPOLATION:g} fitted widths outside it")


def parse_peak_fit(value: str) -> PeakFitModel:
    """`off` or `gauss` (the `--peak-fit` / `[live] peak_fit` words)."""
    if value not in PEAK_FIT_MODELS:
        raise OpmonError(f"--peak-fit takes {' or '.join(PEAK_FIT_MODELS)}, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass
class PeakFitMaps:
    """Fitted maps of one map (NaN where the fit failed), beside the centre-of-mass `MapResult`."""

    d_spacing: F64
    tilt_altitude: F64
    tilt_azimuth: F64
    peak_width: F64
    rocking_centre: F64     # fitted μ, deg
    rocking_width: F64      # fitted σ, deg
    reduced_chi2: F64       # χ² / (scans − parameters) of the rocking-profile fit
    peaks: F64              # Gaussians fitted: 1, or 2 where one left a significant residual
    d_spacing_peak1: F64    # d of the stronger peak (the only one where peaks = 1)
    d_spacing_peak2: F64    # d of the weaker peak where peaks = 2, else NaN
    second_fraction: F64    # the weaker peak's share of the pixel's integrated intensity (0 where peaks = 1)
    edge_shift: F64         # detector pixels the ROI-cut correction moved the centre by (0: not cut, or not invertible)
    q: F64                  # (ny, nx, 3) fitted centre: the peaks' intensity-weighted mean q, sample frame

    def arrays(self) -> dict[str, F64]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def fitted(self) -> npt.NDArray[np.bool_]:
        return np.isfinite(self.d_spacing)


def fit_gauss(eta: npt.ArrayLike, s0: F64, s1: F64, s2: F64, var: F64, valid: npt.NDArray[np.bool_],
              edge: EdgeCut | None = None) -> PeakFitMaps:
    """Fit every valid map pixel (see the module docstring).

    Parameters
    ----------
    eta : (n,) eta of each scan, deg.
    s0, s1, s2 : (n, ny, nx), (n, ny, nx, 3), (n, ny, nx, 3, 3) background-subtracted sums per scan.
    var : (n, ny, nx) Poisson variance of each s0 (signal plus background counts).
    valid : (ny, nx) the centre-of-mass mask: only these pixels are fitted.
    edge : the map's window and angles, and its pixels flagged cut by the ROI or detector edge: their
        one-peak fits are corrected for the cut (`roi_cut`); None: no correction.
    """
    eta = np.asarray(eta, dtype=np.float64).reshape(-1)
    n, ny, nx = s0.shape
    if eta.shape != (n,):
        raise OpmonError(f"peak fit: {eta.size} eta values for {n} scans")
    nan_maps = np.full((ny, nx), np.nan)
    out = PeakFitMaps(*(nan_maps.copy() for _ in range(12)), q=np.full((ny, nx, 3), np.nan))
    pick = np.flatnonzero(np.asarray(valid, dtype=bool).reshape(-1))
    if n < MIN_SCANS or pick.size == 0:
        return out
    centre, step = 0.5 * (eta.max() + eta.min()), max(float(np.ptp(eta)) / max(n - 1, 1), 1e-12)
    t = (eta - centre) / step                                          # scans in step units: well conditioned
    y = s0.reshape(n, -1)[:, pick].T                                   # (P, n)
    v = np.clip(var.reshape(n, -1)[:, pick].T, 1.0, None)
    signal = y > SIGNAL_SIGMAS * np.sqrt(v)
    amp, mu, sig, ok = _log_parabola(t, y, v, signal)
    amp, mu, sig, ok = _gauss_newton(t, y, v, amp, mu, sig, ok)
    half = 0.5 * (t.max() - t.min())
    ok &= (signal.sum(axis=1) >= MIN_SCANS) & (np.abs(mu) - half <= MAX_EXTRAPOLATION * sig) & (sig <= 2.0 * half)
    model = amp[:, None] * np.exp(-0.5 * ((t[None, :] - mu[:, None]) / sig[:, None]) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = ((y - model) ** 2 / v).sum(axis=1) / (n - 3)
    trace2 = np.trace(s2.reshape(n, -1, 3, 3)[:, pick], axis1=-2, axis2=-1).T     # (P, n): the width needs only traces
    s1p = s1.reshape(n, -1, 3)[:, pick].transpose(1, 0, 2)
    q_fit, width = _centre_and_width(t, y, s1p, trace2, signal, mu, sig)
    ok &= np.isfinite(q_fit).all(axis=1) & np.isfinite(width)
    peaks = np.where(ok, 1.0, np.nan)
    q_peaks = np.stack([q_fit, np.full(q_fit.shape, np.nan)], axis=1)       # (P, 2, 3): each peak's q
    second = np.where(ok, 0.0, np.nan)
    two = ok & (chi2 > TWO_PEAK_CHI2) & (n >= 2 * MIN_SCANS + 1)
    if two.any():
        good = ok & ~two
        sig0 = float(np.median(sig[good])) if good.any() else float(np.median(sig[two]))
        fit2 = _two_peaks(t, y[two], v[two], s1p[two], trace2[two], signal[two], sig0, chi2[two], half)
        kept = np.flatnonzero(two)[fit2.kept]
        peaks[kept] = 2.0
        q_fit[kept], width[kept], chi2[kept] = fit2.q[fit2.kept], fit2.width[fit2.kept], fit2.chi2[fit2.kept]
        mu[kept], sig[kept] = fit2.mu[fit2.kept], fit2.sig[fit2.kept]
        q_peaks[kept], second[kept] = fit2.q_peaks[fit2.kept], fit2.second[fit2.kept]
        # where two are not kept, the one Gaussian stands and its reduced χ² says how badly it fits: a peak
        # that is not Gaussian in eta (a ring-shaped focused-beam peak: χ² ~5) still has its centre found
    shift = np.where(ok, 0.0, np.nan)
    if edge is not None:
        _correct_cut(edge, pick, ok & (peaks == 1.0), s0, s1, s2, signal, q_fit, width, shift)
    rows = pick[ok]

    def put(target: F64, values: F64) -> None:
        target.reshape(-1)[rows] = values[ok]
    put(out.rocking_centre, centre + mu * step)
    put(out.rocking_width, sig * step)
    put(out.reduced_chi2, chi2)
    put(out.peak_width, width)
    put(out.peaks, peaks)
    put(out.second_fraction, second)
    put(out.edge_shift, shift)
    out.q.reshape(-1, 3)[rows] = q_fit[ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        out.d_spacing = 2.0 * np.pi / np.linalg.norm(out.q, axis=-1)
        d_peaks = 2.0 * np.pi / np.linalg.norm(q_peaks, axis=-1)
    put(out.d_spacing_peak1, d_peaks[:, 0])
    put(out.d_spacing_peak2, d_peaks[:, 1])
    if rows.size:
        altitude, azimuth = tilt_angles(out.q, out.q.reshape(-1, 3)[rows].mean(axis=0))
        out.tilt_altitude, out.tilt_azimuth = altitude, azimuth
    return out


def _correct_cut(edge: EdgeCut, pick: npt.NDArray[np.int64], one: npt.NDArray[np.bool_], s0: F64, s1: F64, s2: F64,
                 signal: npt.NDArray[np.bool_], q_fit: F64, width: F64, shift: F64) -> None:
    """`roi_cut.correct_cut_peaks` on the one-peak fits of the pixels `edge` flags cut, in place: their q,
    width (the in-slice variance the cut hid added) and detector shift. The mean in-slice covariance is
    Σ (S2_i − S1_i S1_iᵀ/S0_i) / Σ S0_i over the scans holding signal (the full 3 x 3 of the width's trace)."""
    local = np.flatnonzero(one & edge.cut.reshape(-1)[pick])
    if local.size == 0:
        return
    n = s0.shape[0]
    rows = pick[local]
    w0 = s0.reshape(n, -1)[:, rows].T                                           # (P, n)
    w1 = s1.reshape(n, -1, 3)[:, rows].transpose(1, 0, 2)                       # (P, n, 3)
    w2 = s2.reshape(n, -1, 3, 3)[:, rows].transpose(1, 0, 2, 3)                 # (P, n, 3, 3)
    keep = signal[local]
    with np.errstate(invalid="ignore", divide="ignore"):
        slices = w2 - w1[..., :, None] * w1[..., None, :] / w0[..., None, None]
        inslice = np.where(keep[..., None, None], slices, 0.0).sum(axis=1) / np.where(keep, w0, 0.0).sum(axis=1)[:, None, None]
    q_new, added, moved = correct_cut_peaks(edge, q_fit[local], inslice)
    q_fit[local] = q_new
    width[local] = np.sqrt(width[local] ** 2 + added)
    shift[local] = moved


def _log_parabola(t: F64, y: F64, v: F64, signal: npt.NDArray[np.bool_]) -> tuple[F64, F64, F64, npt.NDArray[np.bool_]]:
    """Weighted least squares ln y = a + b t + c t² over the scans holding signal (weights y²/var):
    amplitude, centre, width per pixel (steps), and whether the parabola is concave."""
    w = np.where(signal, np.clip(y, 1e-300, None) ** 2 / v, 0.0)
    ly = np.where(signal, np.log(np.clip(y, 1e-300, None)), 0.0)
    powers = t[None, :, None] ** np.arange(5)[None, None, :]            # (1, n, 5): t^0..t^4
    m = (w[:, :, None] * powers).sum(axis=1)                            # (P, 5) Σ w t^k
    normal = np.stack([m[:, 0:3], m[:, 1:4], m[:, 2:5]], axis=1)        # (P, 3, 3)
    rhs = (w * ly)[:, :, None] * powers[:, :, :3]
    rhs = rhs.sum(axis=1)                                               # (P, 3)
    good = signal.sum(axis=1) >= MIN_SCANS
    normal[~good] = np.eye(3)
    coef = _solve(normal, rhs)
    a, b, c = coef[:, 0], coef[:, 1], coef[:, 2]
    ok = good & (c < 0) & np.isfinite(coef).all(axis=1)
    c = np.where(ok, c, -1.0)
    mu = -b / (2.0 * c)
    sig = np.sqrt(-0.5 / c)
    with np.errstate(over="ignore"):
        amp = np.exp(np.clip(a - b * b / (4.0 * c), -700.0, 700.0))
    return amp, mu, sig, ok & np.isfinite(mu) & np.isfinite(amp)


def _gauss_newton(t: F64, y: F64, v: F64, amp: F64, mu: F64, sig: F64,
                  ok: npt.NDArray[np.bool_]) -> tuple[F64, F64, F64, npt.NDArray[np.bool_]]:
    """A few Gauss–Newton steps of the Gaussian on the counts (weights 1/var); a pixel whose step
    would make the fit worse or leave the valid domain keeps its previous parameters."""
    p = np.stack([amp, mu, sig], axis=1)
    w = 1.0 / v

    def residual(p: F64) -> tuple[F64, F64]:
        g = np.exp(-0.5 * ((t[None, :] - p[:, 1:2]) / p[:, 2:3]) ** 2)
        return y - p[:, 0:1] * g, g
    r, g = residual(p)
    cost = (w * r * r).sum(axis=1)
    for _ in range(NEWTON_STEPS):
        dt = t[None, :] - p[:, 1:2]
        s = p[:, 2:3]
        jac = np.stack([g, p[:, 0:1] * g * dt / s ** 2, p[:, 0:1] * g * dt ** 2 / s ** 3], axis=2)   # (P, n, 3)
        weighted = jac.transpose(0, 2, 1) * w[:, None, :]                                     # (P, 3, n)
        normal = weighted @ jac
        normal[~ok] = np.eye(3)
        step = _solve(normal, (weighted @ r[:, :, None])[..., 0])
        trial = p + step
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            r_new, g_new = residual(trial)
            cost_new = (w * r_new * r_new).sum(axis=1)
        better = ok & np.isfinite(cost_new) & (cost_new <= cost) & (trial[:, 0] > 0) & (trial[:, 2] > 0)
        p = np.where(better[:, None], trial, p)
        r = np.where(better[:, None], r_new, r)
        g = np.where(better[:, None], g_new, g)
        cost = np.where(better, cost_new, cost)
    return p[:, 0], p[:, 1], p[:, 2], ok


@dataclass
class TwoPeaks:
    """Two-Gaussian fits of some pixels: which were kept, the combined q and width, and each peak's q."""

    kept: npt.NDArray[np.bool_]
    q: F64           # (P, 3) intensity-weighted mean of the two peaks' q
    width: F64       # (P,) sqrt(trace of the combined covariance)
    chi2: F64        # (P,) reduced χ² (6 parameters)
    mu: F64          # (P,) centre and width (steps) of the stronger peak
    sig: F64
    q_peaks: F64     # (P, 2, 3) q of the stronger and of the weaker peak
    second: F64      # (P,) the weaker peak's share of the integrated intensity


def _two_peaks(t: F64, y: F64, v: F64, s1: F64, trace2: F64, signal: npt.NDArray[np.bool_], sig0: float,
               chi2_one: F64, half: float) -> TwoPeaks:
    """A sum of two Gaussians fitted to profiles one Gaussian left a significant residual on (two phases in
    one pixel, each with its own Bragg eta): started at the profile's maximum and at the maximum of what a
    Gaussian of the map's typical width there leaves, refined by Gauss–Newton (weights 1/var). Each peak's
    q and width come from the scans it holds PURE_SHARE of the fitted counts of (a scan holding both peaks
    mixes their q); its intensity is its share of the measured counts plus its fitted tail beyond the scan,
    and the pixel's q is the peaks' intensity-weighted mean (what a centre of mass of a whole scan measures)."""
    n_pix, n = y.shape
    rows = np.arange(n_pix)
    i1 = np.argmax(y, axis=1)
    a1 = y[rows, i1]
    g1 = np.exp(-0.5 * ((t[None, :] - t[i1][:, None]) / sig0) ** 2)
    rest = np.where(np.abs(t[None, :] - t[i1][:, None]) > 2.5 * sig0, y - a1[:, None] * g1, -np.inf)   # away from peak 1
    i2 = np.argmax(rest, axis=1)
    p = np.stack([a1, t[i1], np.full(n_pix, sig0), np.clip(rest[rows, i2], 1.0, None), t[i2], np.full(n_pix, sig0)], axis=1)
    w = 1.0 / v

    def parts(p: F64) -> tuple[F64, F64]:
        g = np.exp(-0.5 * ((t[None, None, :] - p[:, [1, 4], None]) / p[:, [2, 5], None]) ** 2)   # (P, 2, n)
        return g, y - (p[:, [0, 3], None] * g).sum(axis=1)
    g, r = parts(p)
    cost = (w * r * r).sum(axis=1)
    damping = np.full(n_pix, 1e-3)          # Levenberg–Marquardt: six parameters from a rough start
    for _ in range(TWO_PEAK_STEPS):
        amp, dt, s = p[:, [0, 3], None], t[None, None, :] - p[:, [1, 4], None], p[:, [2, 5], None]
        jac = np.stack([g, amp * g * dt / s ** 2, amp * g * dt ** 2 / s ** 3], axis=2).reshape(n_pix, 6, n)
        weighted = jac * w[:, None, :]
        normal = weighted @ jac.transpose(0, 2, 1)
        normal += damping[:, None, None] * np.diagonal(normal, axis1=1, axis2=2)[:, :, None] * np.eye(6)
        step = _solve(normal, (weighted @ r[:, :, None])[..., 0])
        trial = p + step
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            g_new, r_new = parts(trial)
            cost_new = (w * r_new * r_new).sum(axis=1)
        better = (np.isfinite(cost_new) & (cost_new <= cost) & (trial[:, [0, 3]] > 0).all(axis=1)
                  & (trial[:, [2, 5]] > 0).all(axis=1))
        p = np.where(better[:, None], trial, p)
        g = np.where(better[:, None, None], g_new, g)
        r = np.where(better[:, None], r_new, r)
        cost = np.where(better, cost_new, cost)
        damping = np.where(better, damping / 3.0, damping * 4.0)
    chi2 = cost / max(n - 6, 1)
    amp, cen, wid = p[:, [0, 3]], p[:, [1, 4]], p[:, [2, 5]]
    counts = amp[:, :, None] * g                                                            # (P, 2, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    q_peaks, widths = np.empty((n_pix, 2, 3)), np.empty((n_pix, 2))
    for k in range(2):
        q_peaks[:, k], widths[:, k] = _centre_and_width(t, share[:, k] * y, share[:, k, :, None] * s1, share[:, k] * trace2,
                                                        signal & (share[:, k] > PURE_SHARE), cen[:, k], wid[:, k])
    from scipy.special import ndtr   # here, not at the top: scipy.special costs every `opmon process` 0.2 s of start-up
    beyond = ndtr((t.min() - 0.5 - cen) / wid) + ndtr((cen - t.max() - 0.5) / wid)
    integrated = (share * y[:, None, :]).sum(axis=2) + amp * wid * np.sqrt(2.0 * np.pi) * beyond
    order = np.argsort(-integrated, axis=1)                                                 # the stronger peak first
    q_peaks = np.take_along_axis(q_peaks, order[:, :, None], axis=1)
    widths, integrated = np.take_along_axis(widths, order, axis=1), np.take_along_axis(integrated, order, axis=1)
    cen, wid = np.take_along_axis(cen, order, axis=1), np.take_along_axis(wid, order, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = integrated / integrated.sum(axis=1, keepdims=True)
    q_mean = (fraction[:, :, None] * q_peaks).sum(axis=1)
    spread = (fraction * ((q_peaks - q_mean[:, None, :]) ** 2).sum(axis=2)).sum(axis=1)
    width = np.sqrt((fraction * widths ** 2).sum(axis=1) + spread)
    kept = (np.isfinite(q_mean).all(axis=1) & np.isfinite(width) & (chi2 * TWO_PEAK_GAIN < chi2_one)
            & (np.abs(cen) - half <= MAX_EXTRAPOLATION * wid).all(axis=1) & (wid <= 2.0 * half).all(axis=1))
    return TwoPeaks(kept, q_mean, width, chi2, cen[:, 0], wid[:, 0], q_peaks, fraction[:, 1])


def _centre_and_width(t: F64, s0: F64, s1: F64, trace2: F64, signal: npt.NDArray[np.bool_], mu: F64,
                      sig: F64) -> tuple[F64, F64]:
    """(P, 3) q at the fitted centre from the scans' centroids fitted linearly in t (weights S0), and
    (P,) the width sqrt(trace(mean in-slice covariance + slope slopeᵀ σ²)) (`trace2`: trace of each S2)."""
    w = np.where(signal, s0, 0.0)
    m0, m1, m2 = w.sum(axis=1), (w * t).sum(axis=1), (w * t * t).sum(axis=1)
    keep = signal[:, :, None]
    q0 = np.where(keep, s1, 0.0).sum(axis=1)                             # Σ S1 (= Σ w q_i)
    q1 = (np.where(keep, s1, 0.0) * t[None, :, None]).sum(axis=1)        # Σ t S1
    with np.errstate(invalid="ignore", divide="ignore"):
        det = m0 * m2 - m1 * m1
        slope = (m0[:, None] * q1 - m1[:, None] * q0) / det[:, None]
        offset = (q0 - m1[:, None] * slope) / m0[:, None]
        q_fit = offset + slope * mu[:, None]
        within = np.where(signal, trace2 - (s1 * s1).sum(axis=2) / s0, 0.0).sum(axis=1) / m0
        trace = within + (slope * slope).sum(axis=1) * sig * sig
        width = np.sqrt(np.clip(trace, 0.0, None))
    return q_fit, width


def _solve(a: F64, b: F64) -> F64:
    """Batched solve of (P, 3, 3) systems; singular ones give NaN instead of raising."""
    out = np.full(b.shape, np.nan)
    det = np.linalg.det(a)
    fine = np.isfinite(det) & (np.abs(det) > 1e-300)
    if fine.any():
        out[fine] = np.linalg.solve(a[fine], b[fine][..., None])[..., 0]
    return out


def fit_arrays(fit: PeakFitMaps, model: str = "gauss") -> FitArrays:
    """The fitted maps as the archive's ``maps/fit`` layout (and the map messages) take them."""
    return FitArrays(fit.arrays(), model, FIT_DESCRIPTION)


def write_fit(maps: h5py.Group, fit: PeakFitMaps, model: str = "gauss") -> h5py.Group:
    """``maps/fit``: an NXdata of the fitted maps, with the maps' x/y axes when they have them
    (`maps_file.write_fit`, the archiver's writer too)."""
    return write_fit_group(maps, fit_arrays(fit, model))


def read_fit(maps: h5py.Group) -> PeakFitMaps | None:
    """``maps/fit`` back, or None when the map was not fitted."""
    stored = read_fit_group(maps)
    if stored is None:
        return None
    return from_arrays(stored.arrays)


def from_arrays(arrays: Mapping[str, npt.ArrayLike]) -> PeakFitMaps:
    """`PeakFitMaps` from named arrays (a maps file's ``fit`` group, a map message's ``fit/`` fields).

    Raises
    ------
    OpmonError
        naming the fitted maps that are missing.
    """
    missing = [f.name for f in fields(PeakFitMaps) if f.name not in arrays]
    if missing:
        raise OpmonError(f"peak fit: missing fitted map(s) {', '.join(missing)}")
    return PeakFitMaps(**{f.name: np.asarray(arrays[f.name], dtype=np.float64) for f in fields(PeakFitMaps)})
