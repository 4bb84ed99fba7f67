"""Seeded geometric building blocks of the particle."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.simulators import fields


def test_gaussian_blur_keeps_the_mean_of_a_flat_image_and_spreads_a_point():
    flat = np.full((20, 30), 3.0)
    np.testing.assert_allclose(fields.gaussian_blur(flat, 2.0), flat)
    point = np.zeros((21, 21))
    point[10, 10] = 1.0
    blurred = fields.gaussian_blur(point, 1.5)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-6)
    assert blurred[10, 10] < 0.2 and blurred[10, 12] > 0


def test_particle_shape_is_zero_outside_and_one_at_the_top():
    env, depth = fields.particle_shape((40, 50), np.random.default_rng(0))
    assert env.max() == 1.0 and env.min() == 0.0
    assert np.all(env[depth < -3] == 0)
    assert np.all(env[depth > 0.4 * depth.max()] > 0.9)


def test_transform_by_order_keeps_the_mean_exactly():
    rng = np.random.default_rng(1)
    support = rng.random((15, 15)) > 0.3
    order = rng.random((15, 15))
    for f in (0.0, 0.123, 0.5, 0.999, 1.0):
        x = fields.transform_by_order(order, support, f, 0.9, 0.5)
        assert np.nanmean(x) == pytest.approx(0.9 + f * (0.5 - 0.9), abs=1e-12)
        assert np.all(np.isnan(x[~support]))
        # at most one mixed pixel on the front
        assert np.sum((x[support] > 0.5) & (x[support] < 0.9)) <= 1


def test_tilt_domains_are_bounded_and_piecewise():
    support = np.ones((30, 30), dtype=bool)
    t1, t2 = fields.tilt_domains(support, np.random.default_rng(3))
    mag = np.hypot(t1, t2)
    assert mag.max() <= 1.0 + 1e-12
    assert mag.mean() > 0.1
    # several distinct directions
    az = np.degrees(np.arctan2(t2, t1))
    assert np.ptp(az) > 90
