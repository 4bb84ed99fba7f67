"""Counter-based random numbers and Poisson sampling usable inside parallel numba loops.

Each frame draws from its own stream seeded by (renderer seed, frame key), so a rendered
frame does not depend on which thread made it or on how frames were split into blocks.
The generator is splitmix64 (Steele et al. 2014); Poisson variates use inversion for small
means and Hörmann's PTRS transformed rejection (as numpy does) for means >= 10.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0


@numba.njit(cache=True, nogil=True)
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True, nogil=True)
def stream(seed: int, key: int) -> npt.NDArray[np.uint64]:
    """A one-word generator state for stream ``key`` of ``seed``."""
    st = np.empty(1, dtype=np.uint64)
    st[0] = _mix(_mix(np.uint64(seed) + _GOLDEN) ^ (np.uint64(key) * _M2 + _GOLDEN))
    return st


@numba.njit(cache=True, nogil=True)
def uniform(st: npt.NDArray[np.uint64]) -> float:
    """Uniform double in [0, 1), advancing the state in place."""
    st[0] = st[0] + _GOLDEN
    return float(_mix(st[0]) >> _S11) * _INV53


@numba.njit(cache=True, nogil=True)
def randint(st: npt.NDArray[np.uint64], n: int) -> int:
    """Uniform integer in [0, n)."""
    i = int(uniform(st) * n)
    return i if i < n else n - 1


@numba.njit(cache=True, nogil=True)
def poisson(st: npt.NDArray[np.uint64], lam: float) -> int:
    """Poisson variate of mean ``lam`` (>= 0)."""
    if lam <= 0.0:
        return 0
    if lam < 10.0:
        u = uniform(st)
        if u <= 1.0 - lam:  # implies u <= exp(-lam): zero counts without an exp
            return 0
        p = math.exp(-lam)
        s = p
        k = 0
        while u > s and k < 200:
            k += 1
            p *= lam / k
            s += p
        return k
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = uniform(st) - 0.5
        v = uniform(st)
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return int(k)
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)) <= (-lam + k * loglam - math.lgamma(k + 1.0)):
            return int(k)
