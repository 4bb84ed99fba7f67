"""Phase tracking's rules: when the imaged reflection has faded, where to survey, where the
survey found the next reflection."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.errors import ConfigError
from opmon.processors.phase import FadingRule, bright_points, locate_reflection


def test_fading_fires_after_n_maps_below_the_fraction_of_the_running_maximum_then_starts_afresh():
    rule = FadingRule(fraction=0.3, maps=2)
    ones = np.ones((4, 4))
    fired = [rule.update(n, ones * s) for n, s in enumerate([0.5, 1.0, 0.6, 0.25, 0.4, 0.2, 0.1])]
    # 0.25 is below 0.3 of the maximum 1.0, 0.4 is not: the count starts again; 0.2, 0.1 fire
    assert fired[:6] == [None] * 6 and fired[6] is not None and "map 6" in fired[6]
    assert rule.brightest is not None and rule.brightest.sum() == 16.0       # the brightest map is kept
    rule.reset()
    assert rule.update(7, ones * 0.1) is None and rule.maximum == pytest.approx(1.6)
    with pytest.raises(ConfigError, match="fraction"):
        FadingRule(fraction=1.5)
    with pytest.raises(ConfigError, match="maps"):
        FadingRule(maps=0)


def test_bright_points_are_the_brightest_pixels_in_order():
    image = np.zeros((3, 3))
    image[2, 1], image[0, 0], image[1, 2] = 9.0, 5.0, 7.0
    image[1, 1] = np.nan
    assert bright_points(image, 2) == [7, 5]
    assert bright_points(image, 10) == [7, 5, 0]          # only pixels with counts


def _rows(d, delta, etas, peak_eta, height, rng, background=100.0):
    sigma = 0.04
    return [{"d": d, "delta": delta, "eta": float(e),
             "total": float(rng.poisson(background + height * np.exp(-0.5 * ((e - peak_eta) / sigma) ** 2)))}
            for e in etas]


def test_the_survey_peak_is_found_at_the_candidate_with_the_strongest_reflection():
    rng = np.random.default_rng(3)
    etas = np.arange(18.7, 19.31, 0.05)
    rows = (_rows(2.0184, 35.77, etas, 19.022, 5000.0, rng) + _rows(2.0000, 36.11, etas, 19.2, 0.0, rng))
    found = locate_reflection(rows)
    assert found is not None and found.d_angstrom == 2.0184 and found.delta == 35.77
    assert abs(found.eta - 19.022) < 0.012, found          # between two steps: the centroid, not the step
    nothing = _rows(2.0184, 35.77, etas, 19.0, 0.0, rng)     # background only: no reflection
    assert locate_reflection(nothing) is None
