"""Eta-scan drift from the rocking-curve model (`registration_model`): the tilt fit, then each pixel's rocking curve
and each scan's shift fitted together, in the accumulator's path (`EtaScanAccumulator._shifts`, ``--register tilt``).

The scans are per-scan sums (Σ I and Σ I·q per map pixel) made directly, without frames: a small strained particle
whose Bragg angle changes across it (the lit band moves 0.4 map pixel per eta step) and whose tilt varies only
weakly, moved by the simulator's own drift renderer (`simulators.drift.shift_arrays`: amplitude bilinear, Bragg
angle and width amplitude-weighted).
"""
from __future__ import annotations

import numpy as np

from opmon.processors.eta_scans import EtaScanAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.registration_model import register_eta_scans_by_model
from opmon.simulators.drift import centred_on, drift_path, shift_arrays
from tests.processors.conftest import FRAME, GEOMETRY

MAP = (16, 16)
N_SCANS = 14
STEP = 0.016                                  # deg, the paper's rocking step
ETAS = 18.9 + STEP * np.arange(N_SCANS)
WIDTH = 3.0 * STEP                            # rocking curve sd
Q0 = 3.09                                     # 1/Å


def particle():
    """Per map pixel (flattened): (Bragg eta, tilt along the eta axis, 0), rocking width, counts."""
    yy, xx = np.mgrid[0:MAP[0], 0:MAP[1]].astype(float)
    y, x = yy - 7.6, xx - 8.2
    counts = np.where((y / 5.0) ** 2 + (x / 5.6) ** 2 <= 1.0, 2000.0, 0.0).ravel()
    bragg = ETAS.mean() + STEP * (0.8 * y + 0.6 * x)
    tilt = 2e-4 * (x + 0.2 * y + 0.06 * x * y)
    return np.stack([bragg.ravel(), tilt.ravel(), np.zeros(counts.size)], axis=1), np.full(counts.size, WIDTH), counts


def scans(drift, seed):
    """(n, ny, nx) Σ I and (n, ny, nx, 3) Σ I·q of each eta scan of the particle moved by `drift` (Poisson counts)."""
    q, sigma, counts = particle()
    rng = np.random.default_rng(seed)
    s0, s1 = [], []
    for eta, shift in zip(ETAS, drift):
        qm, sm, cm, _, _ = shift_arrays(MAP, tuple(shift), q, sigma, counts, np.zeros_like(q), np.zeros_like(counts))
        seen = rng.poisson((cm * np.exp(-0.5 * ((eta - qm[:, 0]) / sm) ** 2)).reshape(MAP)).astype(float)
        centroid = np.stack([Q0 * np.radians(eta - qm[:, 0]), qm[:, 1], np.full(qm.shape[0], Q0)], axis=1)
        s0.append(seen)
        s1.append(seen[..., None] * centroid.reshape(MAP + (3,)))   # the tilt (lab y, the eta axis at phi 0) moves with the sample
    return np.stack(s0), np.stack(s1)


def truth(seed):
    """Drift of up to 3 map pixels in the Σ I-weighted frame, and each scan's Σ I."""
    q, sigma, counts = particle()
    weights = np.array([(counts * np.exp(-0.5 * ((eta - q[:, 0]) / sigma) ** 2)).sum() for eta in ETAS])
    return centred_on(drift_path(N_SCANS, 3.0, seed), weights), weights


def tilt_then_model(s0, s1):
    """The shifts `opmon process --register tilt` finds: the accumulator's own path on these sums."""
    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], FRAME)
    accumulator = EtaScanAccumulator(geometry, MAP, registration="tilt")
    accumulator._slots(ETAS)
    return accumulator._shifts(s0, s1)


def test_flank_scans_of_a_strained_drifting_particle_are_placed_within_0_2_pixel():
    true, weights = truth(9)
    s0, s1 = scans(true, 9)
    bright = weights >= 0.1 * weights.max()          # the scans the must-show counts
    found = tilt_then_model(s0, s1)
    assert np.hypot(*(found - true)[bright].T).max() < 0.2     # the tilt fit alone: 0.34 (a flank scan)


def test_the_model_moves_no_scan_of_a_still_particle():
    """A still strained particle: its moving band is explained by the Bragg angles, so no drift is invented (the
    model's χ² moved is no better than unmoved) and the map stays the one `--register off` makes."""
    s0, s1 = scans(np.zeros((N_SCANS, 2)), 5)
    np.testing.assert_array_equal(register_eta_scans_by_model(s0, ETAS, np.zeros((N_SCANS, 2))), 0.0)
    np.testing.assert_array_equal(tilt_then_model(s0, s1), 0.0)
