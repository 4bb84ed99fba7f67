"""The electrode's other grains, whose powder spots the ``powder-arcs`` effect draws: each grain is
at its own state of charge, so its d is that of a phase present in the cell, not the imaged
particle's (arcs at the particle's own d flatter a processing that leaves spot photons in a sum).

A real electrode does not charge evenly: its grains lead or lag the cell's mean lithium content
by ``GRAIN_X_SPREAD`` (standard deviation). A grain whose content falls inside a miscibility gap
holds both phases; a spot is one coherent domain, so it shows one phase: the lithium-poor one
with the lever rule's probability. Each grain's d also carries its own strain (``GRAIN_STRAIN``,
intergranular stress). In paper mode at x = 0.8 (first plateau, the particle imaged at Li0.9,
2.0332 Å) about 58 % of the spots are Li0.9 grains a few 1e-4 Å off the particle's d (on its
peak on the detector or beside it), 28 % Li0.5 grains (2.0184 Å, ~140 detector rows away), 13 %
Li1 solid solution up to 2.0409 Å (SCIENCE.md §1).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from opmon.simulators.crystal import TWO_PHASE_D, X_GAP, X_HALF, d_of_x

F64 = npt.NDArray[np.float64]
GRAIN_X_SPREAD = 0.1   # standard deviation of the grains' lithium content about the cell's
GRAIN_STRAIN = 3.0e-4  # Å, standard deviation of a grain's d about its phase's


def miscibility_gaps(mode: str) -> tuple[tuple[float, float], ...]:
    """Lithium contents (lo, hi) between which ``mode``'s chemistry holds two phases, not one."""
    if mode == "uniform":
        return ()
    if mode.startswith("two-phase-"):
        return ((0.0, 1.0),)
    return ((X_HALF, X_GAP), (0.0, X_HALF))


def phase_d(mode: str, x: npt.ArrayLike) -> F64:
    """d (Å) of lithium content ``x`` in ``mode`` (as `crystal.ParticleModel` maps it, no microstrain)."""
    x = np.asarray(x, dtype=np.float64)
    if mode.startswith("two-phase-"):
        return TWO_PHASE_D[0] + x * (TWO_PHASE_D[1] - TWO_PHASE_D[0])
    return d_of_x(x)


def grain_spacings(mode: str, x_mean: float, n: int, seed: int) -> F64:
    """d (Å) of ``n`` grains of an electrode charged to mean lithium content ``x_mean`` (seeded).

    Parameters
    ----------
    mode : a `crystal.MODES` name: which phases the chemistry has.
    x_mean : the cell's state of charge (0..1, 1 = fully lithiated).
    n : number of grains (one powder spot each).
    seed : the simulation's seed.
    """
    rng = np.random.default_rng([int(seed), 0x6A1])
    x = np.clip(float(x_mean) + GRAIN_X_SPREAD * rng.standard_normal(n), 0.0, 1.0)
    pick = rng.uniform(size=n)
    for lo, hi in miscibility_gaps(mode):
        inside = (x > lo) & (x < hi)
        x = np.where(inside, np.where(pick < (x - lo) / (hi - lo), hi, lo), x)
    return phase_d(mode, x) + GRAIN_STRAIN * rng.standard_normal(n)
