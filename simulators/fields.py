"""Static random fields of the simulated particle: shape, smooth noise, tilt domains, fronts.

Kept apart from `crystal` so that the state-of-charge logic there reads as physics and
these seeded geometric building blocks can be tested on their own.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError

F64 = npt.NDArray[np.float64]


def gaussian_blur(img: F64, sigma: float) -> F64:
    """Separable Gaussian blur with edge padding (no scipy needed)."""
    if sigma <= 0:
        return img.copy()
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    ker = np.exp(-0.5 * (x / sigma) ** 2)
    ker /= ker.sum()
    out = np.pad(img, r, mode="edge")
    out = np.apply_along_axis(lambda v: np.convolve(v, ker, mode="valid"), 0, out)
    out = np.apply_along_axis(lambda v: np.convolve(v, ker, mode="valid"), 1, out)
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> F64:
    """Zero-mean, unit-RMS smooth random field with correlation length ``scale_px``."""
    field = gaussian_blur(rng.standard_normal(shape), scale_px)
    field -= field.mean()
    rms = field.std()
    return field / rms if rms > 0 else field


def particle_shape(map_shape: tuple[int, int], rng: np.random.Generator) -> tuple[F64, F64]:
    """Projected thickness (max 1) of a truncated octahedron and its depth to the surface.

    Seen along a cube axis an octahedron |x|+|y|+|z| <= R projects to a diamond whose
    thickness falls linearly to the edges; the truncation gives a flat top. The edges are
    softened by the 80 nm beam (Gaussian blur of 0.8 map pixel). Returns
    ``(envelope, depth)``: envelope in [0, 1], exactly 0 outside the particle; depth is the
    in-plane distance to the particle edge in map pixels (negative outside).
    """
    ny, nx = map_shape
    radius = 0.4 * min(ny, nx)
    cy = 0.5 * (ny - 1) + rng.uniform(-0.03, 0.03) * ny
    cx = 0.5 * (nx - 1) + rng.uniform(-0.03, 0.03) * nx
    angle = rng.uniform(-0.35, 0.35)
    aspect = rng.uniform(0.85, 1.0)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / aspect
    depth = radius - np.abs(u) - np.abs(v)
    flat = 0.6 * radius
    thickness = np.clip(2.0 * depth / flat, 0.0, 1.0)
    envelope = gaussian_blur(thickness, 0.8)
    envelope[envelope < 2e-3] = 0.0
    if not envelope.max() > 0:
        raise ConfigError(f"map of {ny} x {nx} points is too small to hold a particle; use at least 3 x 3")
    envelope /= envelope.max()
    return envelope, depth


def tilt_domains(support: npt.NDArray[np.bool_], rng: np.random.Generator,
                 pixels_per_domain: float = 120.0, weight: F64 | None = None) -> tuple[F64, F64]:
    """Unit-scale mosaic tilt field as (t1, t2) components, |t| <= 1.

    Voronoi domains around seeded centres inside the particle, each with a random tilt
    direction and a magnitude in [0.15, 1]; a 1-pixel blur gives the gradual transitions
    (the "white space" between domains) seen in the paper's pristine maps. An optional
    ``weight`` map in [0, 1] scales the magnitudes (e.g. larger tilts near the surface).
    """
    ys, xs = np.nonzero(support)
    n_dom = int(np.clip(round(ys.size / pixels_per_domain), 3, 40))
    pick = rng.choice(ys.size, size=min(n_dom, ys.size), replace=False)
    cy, cx = ys[pick].astype(np.float64), xs[pick].astype(np.float64)
    az = rng.uniform(0.0, 2 * np.pi, size=pick.size)
    mag = rng.uniform(0.15, 1.0, size=pick.size)
    ny, nx = support.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    dist = (yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2
    owner = np.argmin(dist, axis=-1)
    w = np.ones(support.shape) if weight is None else weight
    t1 = gaussian_blur(w * mag[owner] * np.cos(az[owner]), 1.0)
    t2 = gaussian_blur(w * mag[owner] * np.sin(az[owner]), 1.0)
    norm = np.hypot(t1, t2)
    scale = np.where(norm > 1.0, 1.0 / np.maximum(norm, 1e-300), 1.0)
    return t1 * scale, t2 * scale


def nucleation_order(support: npt.NDArray[np.bool_], depth: F64, rng: np.random.Generator,
                     n_nuclei: int = 4) -> F64:
    """Arrival time of a new phase that nucleates at a few surface points and grows.

    The time at a pixel is the smallest of (distance to nucleus / speed + delay) over the
    nuclei, plus a smooth roughness, so fronts are irregular but grow monotonically.
    """
    ys, xs = np.nonzero(support & (depth <= np.percentile(depth[support], 20)))
    if ys.size == 0:
        ys, xs = np.nonzero(support)
    pick = rng.choice(ys.size, size=min(n_nuclei, ys.size), replace=False)
    ny, nx = support.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    size = max(np.sqrt(support.sum()), 1.0)
    times = []
    for i in pick:
        speed = rng.uniform(0.7, 1.3)
        delay = rng.uniform(0.0, 0.25) * size
        times.append(np.hypot(yy - ys[i], xx - xs[i]) / speed + delay)
    tau = np.min(times, axis=0) + 0.08 * size * smooth_noise(rng, support.shape, 3.0)
    return tau


def core_shell_order(depth: F64, rng: np.random.Generator) -> F64:
    """Arrival time of a Li-poor shell moving inward: depth below the surface plus roughness."""
    scale = max(float(depth.max()), 1.0)
    return depth + 0.06 * scale * smooth_noise(rng, depth.shape, 3.0)


def transform_by_order(order: F64, support: npt.NDArray[np.bool_], fraction: float,
                       x_old: float, x_new: float) -> F64:
    """Local x after a fraction of the support pixels, earliest first, turned into the new phase.

    The pixel on the front holds the remainder (a mixed pixel), so the mean over the support
    is exactly ``x_old + fraction * (x_new - x_old)``.
    """
    x = np.full(support.shape, np.nan)
    idx = np.flatnonzero(support.ravel())
    ranked = idx[np.argsort(order.ravel()[idx], kind="stable")]
    n = float(np.clip(fraction, 0.0, 1.0)) * ranked.size
    full = int(np.floor(n))
    flat = x.ravel()
    flat[ranked] = x_old
    flat[ranked[:full]] = x_new
    if full < ranked.size:
        flat[ranked[full]] = x_old + (n - full) * (x_new - x_old)
    return flat.reshape(support.shape)


def fractions_by_order(order: F64, support: npt.NDArray[np.bool_], fraction: float, width: float) -> F64:
    """New-phase volume fraction per pixel for a front ``width`` (order units ~ pixels) wide.

    A pixel's fraction ramps linearly from 1 to 0 as its arrival time crosses a threshold,
    found by bisection so that the mean over the support is exactly ``fraction``: the band
    of pixels with 0 < fraction < 1 is where a beam column holds both phases.
    """
    f = float(np.clip(fraction, 0.0, 1.0))
    vals = order[support]

    def mean_at(t: float) -> float:
        return float(np.clip((t - vals) / width + 0.5, 0.0, 1.0).mean())

    lo, hi = float(vals.min()) - width, float(vals.max()) + width
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mean_at(mid) < f:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    out = np.zeros(support.shape)
    out[support] = np.clip((t - vals) / width + 0.5, 0.0, 1.0)
    # the bisection leaves ~1e-16 of the mean: put it on the front so the mean is exact
    rest = f * vals.size - out[support].sum()
    front = np.flatnonzero(support.ravel() & (out.ravel() > 0) & (out.ravel() < 1))
    if front.size and abs(rest) < front.size:
        out.ravel()[front] = np.clip(out.ravel()[front] + rest / front.size, 0.0, 1.0)
    return out
