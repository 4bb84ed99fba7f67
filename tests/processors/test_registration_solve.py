"""The tilt registration's compiled internals equal what they replaced: the leave-one-out sharp field (band terms
built pixel by pixel, a banded Cholesky) equals the dense least squares it stands for, and the compiled pattern
search picks the shifts the Python search picked. Tiny maps: exact to rounding, so the shifts stay the same."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from opmon.processors import registration
from opmon.processors.registration import (_FieldCost, _fit_field, _LeaveOneOut, _normal_terms, _sharp_field,
                                           _smoothness)

SHIFTS = np.array([[0.0, 0.0], [1.0, -2.0], [0.37, 1.6], [-2.25, -0.8], [0.5, -0.5]])


def tiny_scans(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tilt fields and weights of five scans, about 70 % of their pixels lit."""
    rng = np.random.default_rng(seed)
    size = (SHIFTS.shape[0], *shape)
    return rng.normal(0.0, 1e-3, size), rng.uniform(50.0, 300.0, size) * (rng.random(size) < 0.7)


def moved(weight: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(lit pixels, ny*nx) dense B from its definition: a lit pixel (y, x) sees the sample frame at (y - dy, x - dx),
    bilinearly between the four pixels around it (those on the grid)."""
    ny, nx = weight.shape
    ys, xs = np.nonzero(weight > 0)
    out = np.zeros((ys.size, ny * nx))
    for row, (y, x) in enumerate(zip(ys - shift[0], xs - shift[1])):
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                if 0 <= yy < ny and 0 <= xx < nx:
                    out[row, yy * nx + xx] += wy * wx
    return out


def dense_sharp(field, weight, scans, strength):
    """min over F of Σ_scans Σ_lit w (f − B F)² + strength Σ_neighbours (F_a − F_b)², solved densely; and each
    pixel's Σ w b² (what `defined` thresholds)."""
    ny, nx = field.shape[1:]
    normal, rhs = np.zeros((ny * nx, ny * nx)), np.zeros(ny * nx)
    for k in scans:
        b, lit = moved(weight[k], SHIFTS[k]), weight[k] > 0
        normal += b.T @ (weight[k][lit][:, None] * b)
        rhs += b.T @ (weight[k][lit] * field[k][lit])
    index = np.arange(ny * nx).reshape(ny, nx)
    smooth = np.zeros_like(normal)
    for a, b in ((index[1:, :], index[:-1, :]), (index[:, 1:], index[:, :-1])):
        for p, q in zip(a.ravel(), b.ravel()):
            smooth[[p, q], [p, q]] += 1.0
            smooth[p, q] -= 1.0
            smooth[q, p] -= 1.0
    solved = np.linalg.solve(normal + strength * smooth, rhs)
    return solved.reshape(ny, nx), np.diag(normal).reshape(ny, nx), normal


@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])       # pixels numbered along rows, and along columns
def test_the_leave_one_out_sharp_field_is_the_dense_least_squares(shape, monkeypatch):
    field, weight = tiny_scans(shape)
    every = np.arange(SHIFTS.shape[0])
    strength = 1e-3 * float(np.median(weight[weight > 0]))
    system = _LeaveOneOut(field, weight, SHIFTS, every, strength)
    for k in every:
        expected, cover, _ = dense_sharp(field, weight, every[every != k], strength)
        level = float(np.median(cover))
        sharp, defined = system.without(int(k), level)
        np.testing.assert_allclose(sharp, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
        np.testing.assert_array_equal(defined, (cover >= level).astype(float))
    # the sparse path it replaced (`_normal_terms` summed, `_sharp_field`: SuperLU), one scan left out
    terms = [_normal_terms(field[j], weight[j], SHIFTS[j]) for j in every if j != 1]
    sparse, _ = _sharp_field(sum(t[0] for t in terms), sum(t[1] for t in terms), _smoothness(shape), strength, shape, 0.0)
    np.testing.assert_allclose(system.without(1, 0.0)[0], sparse, rtol=1e-9, atol=1e-12 * np.abs(sparse).max())
    # the fallback when the band is not positive definite: the same system through the sparse matrices and SuperLU
    np.testing.assert_allclose(system._sparse(system.all_terms).toarray(), dense_sharp(field, weight, every, strength)[2],
                               rtol=1e-12, atol=1e-9)
    monkeypatch.setattr(registration, "_band_solve", lambda *args: False)
    expected = dense_sharp(field, weight, every[every != 2], strength)[0]
    np.testing.assert_allclose(system.without(2, 0.0)[0], expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


def python_search(field, weight, reference, defined, start):
    """`_fit_field` as it was before it was compiled (stop 23): whole-pixel grid, then the halving pattern search."""
    penalty = float(reference[defined > 0].var()) if (defined > 0).any() else 0.0
    cost = _FieldCost(field, weight, reference, defined, penalty)
    if start is None:
        grid = [np.array((a, b), dtype=np.float64) for a in range(-4, 5) for b in range(-4, 5)]
        start = min(grid, key=cost)
    best, best_cost, step = np.asarray(start, dtype=np.float64), cost(start), 0.5
    while step >= 1 / 64:
        for move in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
            c = cost(best + move)
            if c < best_cost:
                best, best_cost = best + move, c
                break
        else:
            step /= 2
    return best


def test_the_compiled_pattern_search_picks_the_shifts_the_python_search_picked():
    """A smooth tilt ramp moved by a known shift, with noise: the whole-pixel start and the search from a given
    start land on the same 1/64-pixel shift as before, to the bit."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:14, 0:16].astype(float)
    sample = 4e-4 * xx - 2e-4 * yy + 3e-5 * xx * yy
    defined = ((yy - 7) ** 2 / 36 + (xx - 8) ** 2 / 42 <= 1).astype(float)
    for true, start in (((1.3, -0.7), None), ((-1.6, 1.4), None), ((0.4, 0.2), np.array([0.1, -0.3]))):
        scan = 4e-4 * (xx - true[1]) - 2e-4 * (yy - true[0]) + 3e-5 * (xx - true[1]) * (yy - true[0])
        field = scan + rng.normal(0.0, 2e-5, scan.shape)
        lit = (yy - 7 - true[0]) ** 2 / 16 + (xx - 8 - true[1]) ** 2 / 20 <= 1    # inside `defined` moved back
        weight = np.where(lit, rng.uniform(100, 400, scan.shape), 0.0)
        found = _fit_field(field, weight, sample * defined, defined, start)
        np.testing.assert_array_equal(found, python_search(field, weight, sample * defined, defined, start))
        assert np.hypot(*(found - true)) < 0.2                # and it found the move


def test_tilt_noise_is_declined_as_soon_as_the_fits_wander_off_each_others_support(monkeypatch, caplog):
    """A map whose tilt is noise over a uniformly lit field (the bench map of `opmon bench process`): the fits wander
    off each other's support within the mean-field rounds, so the registration is declined there, after the round
    that shows it, not after every round and the sharp-field refinement (shifts it would decline anyway)."""
    fits = []
    real_fit = registration._fit_field

    def refined(*args):
        raise AssertionError("the sharp-field refinement ran on shifts already off each other's support")

    monkeypatch.setattr(registration, "_refined", refined)
    monkeypatch.setattr(registration, "_fit_field", lambda *a: fits.append(1) or real_fit(*a))
    caplog.set_level(logging.DEBUG, logger="opmon.processors.registration")
    rng = np.random.default_rng(0)
    s0 = rng.poisson(800.0, (9, 12, 14)).astype(float)
    s1 = s0[..., None] * (np.array([0.0, 3.1, 0.4]) + rng.normal(0.0, 1e-4, (9, 12, 14, 3)))
    np.testing.assert_array_equal(registration.register_eta_scans_by_tilt(s0, s1, 0.0), 0.0)
    assert "found on the other scans' mean field (round" in caplog.text
    assert len(fits) < registration.FIELD_ROUNDS * s0.shape[0] / 2      # declined within the first half of the rounds


@pytest.mark.parametrize("shape", [(9, 11), (1, 12), (12, 1)])
def test_the_compiled_field_cost_reads_as_scipy_map_coordinates_even_on_a_grid_one_pixel_wide(shape):
    """`_field_cost` reads both images bilinearly as scipy's ``map_coordinates(order=1, mode="constant")`` does
    inside the grid, off-support and off-grid pixels paying the penalty; on a grid one row (column) wide the
    neighbour past the last pixel is never read (it would be memory outside the image)."""
    from scipy.ndimage import map_coordinates
    rng = np.random.default_rng(2)
    reference = rng.normal(size=shape)
    defined = (rng.uniform(size=shape) > 0.2).astype(float)
    ys, xs = (a.astype(float) for a in np.nonzero(np.ones(shape)))
    field, weight, penalty = rng.normal(size=ys.size), rng.uniform(size=ys.size), 0.7
    for dy, dx in [(0.0, 0.0), (0.3, -0.45), (-1.0, 2.0), (0.5, 0.0), (0.0, -0.25)]:
        at = [ys - dy, xs - dx]
        inside = (at[0] >= 0) & (at[0] <= shape[0] - 1) & (at[1] >= 0) & (at[1] <= shape[1] - 1)
        seen = map_coordinates(reference, at, order=1, mode="constant")
        on = inside & (map_coordinates(defined, at, order=1, mode="constant") > 0.999)
        expected = float((weight * np.where(on, (field - seen) ** 2, penalty)).sum())
        got = registration._field_cost(reference, defined, ys, xs, dy, dx, field, weight, penalty)
        assert got == pytest.approx(expected, rel=1e-12)


def test_the_compiled_resample_of_one_map_is_the_numpy_resample_bit_for_bit():
    """`resample` of a (ny, nx) map runs compiled (each registration round moves every scan's maps); the numpy path,
    which (ny, nx, ...) sums still take, is the reference: the same four corners added in the same order."""
    rng = np.random.default_rng(0)
    for shape in [(20, 28), (1, 9), (9, 1)]:
        for _ in range(50):
            a = rng.normal(size=shape) * rng.uniform(0, 100)
            shift = rng.uniform(-5, 5, 2) if rng.uniform() > 0.2 else np.round(rng.uniform(-3, 3, 2))
            np.testing.assert_array_equal(registration.resample(a, shift), registration.resample(a[..., None], shift)[..., 0])
