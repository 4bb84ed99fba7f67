"""Sample drift between eta scans: where the particle sits when each rocking angle is mapped.

Real maps are taken one eta at a time over minutes each; the sample creeps between them, so
the intensity map of eta scan i is the particle's shifted by ``shift[i]`` map pixels. The
truth (``/entry/truth/drift``, (n_angles, 2) as (dy, dx) map pixels) is what a registration
step must find; it is given in the frame of the truth maps, where the shifts' mean weighted by
each scan's expected Σ I is zero (`centred_on`): the first scans of a rocking curve often see
nothing of the particle, so their frame could not be told from the data.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def drift_path(n_scans: int, largest_px: float, seed: int) -> F64:
    """(n_scans, 2) shifts in map pixels: a slow creep in a random direction plus a wobble,
    zero for the first scan and ``largest_px`` at its largest."""
    if n_scans < 1 or largest_px <= 0:
        return np.zeros((max(n_scans, 0), 2))
    rng = np.random.default_rng([seed, 0xD81F7])
    angle = rng.uniform(0, 2 * np.pi)
    t = np.linspace(0.0, 1.0, n_scans)
    creep = np.stack([np.sin(angle) * t, np.cos(angle) * t], axis=1)
    wobble = 0.15 * np.cumsum(rng.standard_normal((n_scans, 2)), axis=0)
    wobble -= wobble[0]
    path = creep + wobble * (t[:, None] > 0)
    size = np.abs(path).max()
    return path * (largest_px / size) if size > 0 else path


def centred_on(path: F64, weights: npt.ArrayLike) -> F64:
    """`path` less its `weights`-weighted mean: shifts relative to where the sample sat on average
    over the scans, weighted by what each scan sees (its Σ I). That frame, unlike the first
    scan's, can be told from the data when the first scans of the rocking curve see nothing."""
    w = np.clip(np.asarray(weights, dtype=np.float64).reshape(-1), 0.0, None)
    if path.shape[0] == 0 or not w.sum() > 0:
        return path.copy()
    return path - (w[:, None] * path).sum(axis=0) / w.sum()


def shift_arrays(map_shape: tuple[int, int], shift: tuple[float, float], q: F64, sigma: F64, counts: F64,
                 q2: F64, counts2: F64) -> tuple[F64, F64, F64, F64, F64]:
    """Per-map-pixel render arrays of a particle moved by ``shift`` (dy, dx) map pixels.

    Counts are interpolated bilinearly (a sub-pixel shift moves the intensity smoothly); Q
    and widths are the count-weighted bilinear means of the four particle pixels around (what
    a centre of mass sees of a beam between them), so the contrast inside the particle moves
    sub-pixel with it too. Outside the particle nothing is seen.
    """
    ny, nx = map_shape
    seen = counts > 0
    if seen.any():  # pixels off the particle carry the mean Q, so no interpolated edge gets Q = 0
        mean_q = (counts[seen, None] * q[seen]).sum(axis=0) / counts[seen].sum()
        q = np.where(seen[:, None], q, mean_q)
        seen2 = counts2 > 0
        q2 = np.where(seen2[:, None], q2, mean_q) if seen2.any() else q2
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    sy, sx = yy - shift[0], xx - shift[1]
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0

    def pick(a: F64, y: npt.NDArray[np.int64], x: npt.NDArray[np.int64]) -> F64:
        ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
        grid = a.reshape((ny, nx) + a.shape[1:])
        out = grid[np.clip(y, 0, ny - 1), np.clip(x, 0, nx - 1)]
        return np.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), out, 0.0)

    def bilinear(a: F64) -> F64:
        return ((1 - fy) * (1 - fx) * pick(a, y0, x0) + (1 - fy) * fx * pick(a, y0, x0 + 1)
                + fy * (1 - fx) * pick(a, y0 + 1, x0) + fy * fx * pick(a, y0 + 1, x0 + 1)).ravel()

    def weighted(a: F64, w: F64) -> F64:
        """Count-weighted bilinear mean of a per-pixel quantity: what a beam between pixels measures."""
        flat = a.reshape(ny * nx, -1)
        num = np.stack([bilinear(w * flat[:, k]) for k in range(flat.shape[1])], axis=1)
        den = bilinear(w)[:, None]
        near = pick(a, np.clip(np.rint(sy).astype(int), 0, ny - 1),
                    np.clip(np.rint(sx).astype(int), 0, nx - 1)).reshape(ny * nx, -1)
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), near)
        return out.reshape(a.shape)

    return (np.ascontiguousarray(weighted(q, counts)), np.ascontiguousarray(weighted(sigma, counts)),
            np.ascontiguousarray(bilinear(counts)), np.ascontiguousarray(weighted(q2, counts2)),
            np.ascontiguousarray(bilinear(counts2)))
