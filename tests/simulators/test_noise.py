"""Counter-based random streams and the Poisson sampler used inside the parallel renderer."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from opmon.simulators.noise import poisson, randint, stream, uniform


@numba.njit
def draw_poisson(seed, key, lam, n):
    st = stream(seed, key)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = poisson(st, lam)
    return out


@numba.njit
def draw_uniform(seed, key, n):
    st = stream(seed, key)
    out = np.empty(n)
    for i in range(n):
        out[i] = uniform(st)
    return out


@numba.njit
def draw_int(seed, key, m, n):
    st = stream(seed, key)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = randint(st, m)
    return out


@pytest.mark.parametrize("lam", [1e-4, 0.3, 3.0, 9.99, 10.0, 37.0, 2500.0])
def test_poisson_mean_and_variance(lam):
    n = 200_000
    x = draw_poisson(1, 2, lam, n)
    assert x.min() >= 0
    se = np.sqrt(lam / n)
    assert x.mean() == pytest.approx(lam, abs=6 * se + 1e-12)
    assert x.var() == pytest.approx(lam, rel=0.05, abs=1e-3)


def test_poisson_small_mean_distribution():
    x = draw_poisson(4, 4, 1.5, 300_000)
    counts = np.bincount(x, minlength=6)[:6] / x.size
    from math import exp, factorial
    expected = [exp(-1.5) * 1.5 ** k / factorial(k) for k in range(6)]
    np.testing.assert_allclose(counts, expected, atol=4e-3)


def test_streams_are_uniform_reproducible_and_independent():
    a = draw_uniform(7, 11, 100_000)
    assert a.min() >= 0.0 and a.max() < 1.0
    assert a.mean() == pytest.approx(0.5, abs=0.005)
    np.testing.assert_array_equal(a, draw_uniform(7, 11, 100_000))
    b = draw_uniform(7, 12, 100_000)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    c = draw_uniform(8, 11, 100_000)
    assert not np.array_equal(a, c)
    ints = draw_int(1, 1, 5, 50_000)
    assert set(np.unique(ints)) == {0, 1, 2, 3, 4}
