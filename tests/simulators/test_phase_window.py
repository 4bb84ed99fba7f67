"""The detector window follows delta: with every phase rendered at its own Bragg angles
(window "all"), a 64-row detector window set on one phase's 2θ does not see the other phase's
reflection; moving delta (and eta) to the other phase's Bragg angles brings it in. This is what
phase tracking's survey finds and re-centres on (acquisition.survey)."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.acquisition.survey import two_theta_deg
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.optics import two_theta_deg as optics_two_theta
from opmon.simulators.render import FrameRenderer

LI09, LI05 = 2.0332, 2.0184


def test_the_li05_reflection_is_seen_only_with_delta_and_eta_on_its_bragg_angles():
    setup = SxdmSetup(map_shape=(4, 4), n_angles=5, roi=(224, 288, 224, 288), delta=two_theta_deg(LI09, 10000.0))
    particle = ParticleModel(setup, seed=0, x_mean=0.5, window="all")       # all Li0.5
    renderer = FrameRenderer(setup, particle, seed=0)
    points = np.arange(setup.n_points)
    eta_li05 = float(particle.bragg_eta(particle.q_ref * 2 * np.pi / LI05))
    eta_li09 = float(particle.bragg_eta(particle.q_ref * 2 * np.pi / LI09))

    def seen(eta: float, delta: float) -> float:
        etas = eta + 0.04 * np.arange(-3, 4)
        return float(sum(renderer.expected(points, e, 0.0, 0.0, delta).sum() for e in etas))

    on_li09 = seen(eta_li09, two_theta_deg(LI09, 10000.0))
    on_li05 = seen(eta_li05, two_theta_deg(LI05, 10000.0))
    assert on_li05 > 1e4 and on_li09 < 1e-3 * on_li05, (on_li09, on_li05)
    assert two_theta_deg(LI05, 10000.0) == pytest.approx(optics_two_theta(LI05, 10000.0), abs=1e-9)
