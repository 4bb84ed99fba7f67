"""Speed of the optional per-pixel peak fit (`opmon process --peak-fit gauss`) beside the centre of mass.

Per-eta-scan moments of a map whose every pixel holds a Gaussian blob in q sliced by the rocking
scan (centres spread over the scan, some cut by its ends) are made once; then the fit
(`peak_fit.fit_gauss`) and, as the baseline in the same run, the centre-of-mass maps of the same
sums (`maps.derive_maps` of the scans added) are timed. Issue 13's target: a 100 x 100 map with 40
eta steps fitted in <= 2 s.

    opmon bench peak-fit [--size 100] [--scans 40] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

G = np.array([0.4, 0.2, 3.05])          # peak centre, Å⁻¹ (d ≈ 2.05 Å)
SLOPE = np.array([0.0, 6e-5, 2e-4])     # slice centroid per eta step, Å⁻¹: along Q, so a centre bias moves d
STEP = 0.016                            # eta step, deg (the paper's)
SIGMA_STEPS = 1.6                       # rocking σ in steps
WITHIN = 1e-6                           # in-slice variance per axis, Å⁻²


def sliced_moments(centres_steps: npt.ArrayLike, n_scans: int = 16, counts: npt.ArrayLike = 2e4,
                   seed: int = 1, g: F64 = G) -> tuple[F64, F64, F64, F64, F64]:
    """(eta, S0, S1, S2, var) per eta scan of pixels whose rocking curve is centred `centres_steps`
    (any shape: the map) steps from the first scan, peak centre `g` (Å⁻¹); Poisson counts, no background."""
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres_steps, dtype=np.float64)
    eta = 19.0 + STEP * np.arange(n_scans)
    t = np.arange(n_scans).reshape((n_scans,) + (1,) * centres.ndim) - centres[None]
    expected = counts * np.exp(-0.5 * (t / SIGMA_STEPS) ** 2) / (SIGMA_STEPS * np.sqrt(2 * np.pi))
    s0 = rng.poisson(expected).astype(np.float64)
    q = g + SLOPE * t[..., None]
    s1 = s0[..., None] * q
    s2 = s0[..., None, None] * (q[..., :, None] * q[..., None, :] + WITHIN * np.eye(3))
    return eta, s0, s1, s2, s0 + 1.0


def main(argv: list[str] | None = None) -> int:
    from opmon.processors.maps import derive_maps
    from opmon.processors.peak_fit import fit_gauss

    ap = argparse.ArgumentParser(prog="opmon bench peak-fit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100, help="map side in pixels (default 100)")
    ap.add_argument("--scans", type=int, default=40, help="eta scans (default 40)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (default 3)")
    ap.add_argument("--two-phase", type=float, default=0.2, metavar="SHARE",
                    help="share of pixels that also hold a second phase (d 0.7 %% smaller, 9 steps on, 30 %% of the "
                         "counts), fitted with two Gaussians (default 0.2)")
    args = ap.parse_args(argv)
    if args.size < 1 or args.scans < 3 or args.repeat < 1:
        ap.error("--size >= 1, --scans >= 3 and --repeat >= 1")
    rng = np.random.default_rng(0)
    centres = rng.uniform(-1.0, args.scans, (args.size, args.size))      # some cut by either end
    eta, s0, s1, s2, var = sliced_moments(centres, args.scans)
    mixed = (rng.random(centres.shape) < args.two_phase).astype(np.float64)
    _, *second = sliced_moments(centres + 9.0, args.scans, counts=6e3 * mixed, seed=2, g=G * 1.007)
    s0, s1, s2 = s0 + second[0], s1 + second[1], s2 + second[2]
    var = var + second[0]
    valid = np.ones((args.size, args.size), dtype=bool)
    frames = np.full(valid.shape, args.scans, dtype=np.int64)

    def best(run: object) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()     # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        return min(times)
    t_com = best(lambda: derive_maps(s0.sum(axis=0), s1.sum(axis=0), s2.sum(axis=0), frames))
    t_fit = best(lambda: fit_gauss(eta, s0, s1, s2, var, valid))
    fit = fit_gauss(eta, s0, s1, s2, var, valid)
    print(f"{args.size} x {args.size} map, {args.scans} eta scans (best of {args.repeat}):")
    print(f"  centre of mass (derive_maps of the summed scans): {t_com:.3g} s")
    print(f"  Gaussian peak fit (fit_gauss):                    {t_fit:.3g} s  ({t_fit / t_com:.1f}x; "
          f"{int(fit.fitted.sum())} of {valid.size} pixels fitted, {int((fit.peaks == 2).sum())} with two Gaussians "
          f"({int(mixed.sum())} hold two phases); target <= 2 s at 100 x 100 x 40)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
