"""The three image filters of the powder-spot level (`spot_level.smooth_level`), compiled, as scipy.ndimage computes them.

Why not scipy.ndimage: importing it costs ~0.15 s (its array-API layer pulls in scipy.special and numpy.f2py), a
fifth of `opmon process` on a 17,000-frame map, paid by every map with the default `--powder-spots auto` although
most maps hold no spot; and each call on a small binned image is mostly call overhead (a map's 31 eta scans made
~190 calls). These kernels work on a stack of images (n, rows, cols), one call per filter, and follow scipy's
arithmetic step by step (the same weights, extensions and order of additions), so the level, hence every spot
found, is the same to the last bit (tests/processors/test_image_filters.py compares them with scipy).
scipy.ndimage is still what labels and widens spots once candidates stand out.
"""
from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

TRUNCATE = 4.0      # scipy.ndimage.gaussian_filter's default: the kernel reaches int(4 sigma + 0.5) pixels


def gaussian_weights(sigma: float) -> F64:
    """scipy's Gaussian kernel for `sigma` (``_gaussian_kernel1d``, order 0): normalised, radius int(4 sigma + 0.5)."""
    radius = int(TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    return phi / phi.sum()  # type: ignore[no-any-return]


def gaussian_nearest(images: npt.ArrayLike, sigma: float) -> F64:
    """Each image of a stack (n, rows, cols) smoothed as ``scipy.ndimage.gaussian_filter(image, sigma,
    mode="nearest")``: along the rows' axis, then the columns', edges extended by their value."""
    stack = np.ascontiguousarray(images, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"a stack of images (n, rows, cols) expected, got shape {stack.shape}")
    weights = gaussian_weights(sigma)
    return _correlate_both(stack, weights)  # type: ignore[no-any-return]


def opening_reflect(images: npt.ArrayLike, footprint: npt.ArrayLike) -> F64:
    """Each image of a stack (n, rows, cols) opened as ``scipy.ndimage.grey_opening(image, footprint=footprint)``
    (mode "reflect"): the minimum over the footprint, then the maximum over it mirrored. Odd-sized footprints."""
    stack = np.ascontiguousarray(images, dtype=np.float64)
    fp = np.asarray(footprint, dtype=bool)
    if stack.ndim != 3 or fp.ndim != 2 or not (fp.shape[0] % 2 and fp.shape[1] % 2):
        raise ValueError(f"a stack (n, rows, cols) and an odd-sized 2-D footprint expected, got {stack.shape}, {fp.shape}")
    dy, dx = (a - s // 2 for a, s in zip(np.nonzero(fp), fp.shape))
    eroded = _extreme(stack, dy.astype(np.int64), dx.astype(np.int64), True)
    return _extreme(eroded, -dy[::-1].astype(np.int64), -dx[::-1].astype(np.int64), False)  # type: ignore[no-any-return]


def upsample_bilinear(images: npt.ArrayLike, rows: F64, cols: F64) -> F64:
    """Each image of a stack (n, r, c) read at the grid rows x cols (coordinates within the image, as
    ``scipy.ndimage.map_coordinates(image, np.meshgrid(rows, cols, indexing="ij"), order=1, mode="nearest")``
    reads them there): (n, rows.size, cols.size)."""
    stack = np.ascontiguousarray(images, dtype=np.float64)
    r, c = (np.ascontiguousarray(v, dtype=np.float64) for v in (rows, cols))
    if stack.ndim != 3 or r.min(initial=0.0) < 0 or c.min(initial=0.0) < 0 or \
            r.max(initial=0.0) > stack.shape[1] - 1 or c.max(initial=0.0) > stack.shape[2] - 1:
        raise ValueError("a stack (n, rows, cols) read at coordinates inside it expected")
    return _bilinear(stack, r, c)  # type: ignore[no-any-return]


@numba.njit(cache=True, nogil=True)
def _correlate_both(stack: F64, weights: F64) -> F64:
    """scipy's symmetric correlation (NI_Correlate1D) along axis 1, then axis 2, of every image (scipy filters axis by
    axis in order), lines extended by their end values ("nearest"): each output the centre times its weight, then from
    the outermost pair inwards each pair's sum times their weight. Written tap by tap over a whole row of outputs (the
    same additions per output, in the same order; the compiler vectorises across outputs)."""
    n, rows, cols = stack.shape
    radius = weights.size // 2
    first = np.empty_like(stack)
    out = np.empty_like(stack)
    down = np.empty((rows + 2 * radius, cols))
    along = np.empty(cols + 2 * radius)
    for k in range(n):
        for r in range(rows + 2 * radius):             # the image's rows extended by the end rows
            src = min(max(r - radius, 0), rows - 1)
            for c in range(cols):
                down[r, c] = stack[k, src, c]
        for r in range(rows):
            for c in range(cols):
                first[k, r, c] = down[r + radius, c] * weights[radius]
            for j in range(-radius, 0):
                w = weights[radius + j]
                for c in range(cols):
                    first[k, r, c] += (down[r + radius + j, c] + down[r + radius - j, c]) * w
        for r in range(rows):
            for c in range(cols + 2 * radius):         # each row extended by its end values
                along[c] = first[k, r, min(max(c - radius, 0), cols - 1)]
            for c in range(cols):
                out[k, r, c] = along[c + radius] * weights[radius]
            for j in range(-radius, 0):
                w = weights[radius + j]
                for c in range(cols):
                    out[k, r, c] += (along[c + radius + j] + along[c + radius - j]) * w
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _reflected(i: int, n: int) -> int:
    """Index `i` folded into 0..n-1 as scipy's "reflect" mode extends (d c b a | a b c d | d c b a)."""
    period = 2 * n
    i = i % period
    return i if i < n else period - 1 - i


@numba.njit(cache=True, nogil=True)
def _extreme(stack: F64, dy: npt.NDArray[np.int64], dx: npt.NDArray[np.int64], lowest: bool) -> F64:
    """Minimum (`lowest`) or maximum of each pixel's neighbours at offsets (dy, dx), images extended by reflection
    (each image padded once: the fold per neighbour read was most of the opening's time)."""
    n, rows, cols = stack.shape
    ry, rx = 0, 0
    for m in range(dy.size):      # by hand: numpy's reductions here tie the cached kernel to numba's array-math module,
        ry, rx = max(ry, abs(dy[m])), max(rx, abs(dx[m]))    # whose import (and full refresh) cost each load ~0.25 s
    padded = np.empty((rows + 2 * ry, cols + 2 * rx))
    row = np.empty(cols)
    out = np.empty_like(stack)
    for k in range(n):
        for r in range(rows + 2 * ry):
            for c in range(cols + 2 * rx):
                padded[r, c] = stack[k, _reflected(r - ry, rows), _reflected(c - rx, cols)]
        for r in range(rows):
            for c in range(cols):
                row[c] = padded[r + ry + dy[0], c + rx + dx[0]]
            for m in range(1, dy.size):                 # offset by offset over a row (vectorised): per pixel the same
                at, off = r + ry + dy[m], rx + dx[m]    # comparisons in the same order as pixel by pixel
                if lowest:
                    for c in range(cols):
                        v = padded[at, c + off]
                        row[c] = v if v < row[c] else row[c]
                else:
                    for c in range(cols):
                        v = padded[at, c + off]
                        row[c] = v if v > row[c] else row[c]
            for c in range(cols):
                out[k, r, c] = row[c]
    return out


@numba.njit(cache=True, nogil=True)
def _bilinear(stack: F64, rows: F64, cols: F64) -> F64:
    """scipy's order-1 interpolation (NI_GeometricTransform): the four corners in C order, each value times its
    row weight times its column weight, added to 0; a neighbour past the last pixel (weight 0) read at it."""
    n, nr, nc = stack.shape
    out = np.empty((n, rows.size, cols.size))
    r0 = np.empty(rows.size, dtype=np.int64)
    r1 = np.empty(rows.size, dtype=np.int64)
    c0 = np.empty(cols.size, dtype=np.int64)
    c1 = np.empty(cols.size, dtype=np.int64)
    fr, fc = np.empty(rows.size), np.empty(cols.size)
    for i in range(rows.size):
        r0[i] = int(np.floor(rows[i]))
        fr[i] = rows[i] - r0[i]
        r1[i] = min(r0[i] + 1, nr - 1)
    for j in range(cols.size):
        c0[j] = int(np.floor(cols[j]))
        fc[j] = cols[j] - c0[j]
        c1[j] = min(c0[j] + 1, nc - 1)
    for k in range(n):                                  # image by image (each read where it lies)
        for i in range(rows.size):
            for j in range(cols.size):
                value = 0.0
                value += stack[k, r0[i], c0[j]] * (1.0 - fr[i]) * (1.0 - fc[j])
                value += stack[k, r0[i], c1[j]] * (1.0 - fr[i]) * fc[j]
                value += stack[k, r1[i], c0[j]] * fr[i] * (1.0 - fc[j])
                value += stack[k, r1[i], c1[j]] * fr[i] * fc[j]
                out[k, i, j] = value
    return out
