"""Maps-to-maps registration and the re-centring rule, on the simulator's particle moved by known
amounts (bilinear shifts of its Σ I map, Poisson counts)."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.errors import ConfigError
from opmon.processors.drift_tracker import DriftTracker
from opmon.processors.registration import has_intensity, register
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.drift import shift_arrays
from opmon.simulators.instrument import SxdmSetup

SHAPE = (12, 12)
STEP = 0.25


@pytest.fixture(scope="module")
def particle():
    model = ParticleModel(SxdmSetup(map_shape=SHAPE, n_angles=3), seed=1, mode="paper")
    q, sigma, counts = model.render_arrays()
    q2, counts2 = model.second_peak()
    rng = np.random.default_rng(7)

    def seen(shift_px: tuple[float, float]) -> np.ndarray:
        """Σ I of the particle moved by (dy, dx) map pixels, with Poisson noise."""
        moved = shift_arrays(SHAPE, shift_px, q, sigma, counts, q2, counts2)[2]
        return rng.poisson(moved.reshape(SHAPE)).astype(np.float64)
    return seen


def test_register_finds_sub_pixel_displacements_of_small_maps(particle):
    truth = np.array([[0.4, -1.3], [-2.2, 0.7], [1.5, 1.5]])
    found = register([particle(tuple(t)) for t in truth], particle((0.0, 0.0)), pad=True)
    assert np.abs(found - truth).max() < 0.15, found          # displacements: the sign of the motion
    assert not has_intensity(np.zeros(SHAPE)) and not has_intensity(np.full(SHAPE, np.nan))
    with pytest.raises(ConfigError, match="shape"):
        register([np.ones((4, 4))], particle((0.0, 0.0)))


def test_tracker_follows_the_particle_through_region_shifts_and_predicts_the_creep(particle):
    tracker = DriftTracker(STEP, max_step_um=10.0)
    creep = np.array([0.2, -0.1])                      # µm per map, (x, y)
    offset = np.zeros(2)
    for k in range(5):
        particle_um = k * creep
        dx, dy = (particle_um - offset) / STEP         # where the map's pixels see it
        found = tracker.add(k, particle((dy, dx)), tuple(offset))
        assert np.allclose(found.particle_um, particle_um, atol=0.04), (k, found)
        proposal = tracker.proposal(tuple(offset))
        if k == 0:
            assert proposal is None                     # one map: nothing to compare yet
            offset = offset + creep                     # a user moved the region meanwhile
            continue
        assert np.allclose(proposal.offset_um, (k + 1) * creep, atol=0.08), (k, proposal)  # next map's place
        assert "drift re-centring" in proposal.reason and not proposal.limited
        late = tracker.proposal(tuple(offset), next_map=k + 2)   # map k + 1 began before map k was registered
        assert np.allclose(late.offset_um, (k + 2) * creep, atol=0.1), (k, late)
        offset = np.array(proposal.offset_um)


def test_tracker_limits_the_step_skips_empty_maps_and_ignores_tiny_moves(particle):
    tracker = DriftTracker(STEP, max_step_um=0.3, predict=False)
    tracker.add(0, particle((0.0, 0.0)), (0.0, 0.0))
    assert tracker.add(1, np.zeros(SHAPE), (0.0, 0.0)) is None       # faded out: skipped, not a jump
    tracker.add(2, particle((0.0, 4.0)), (0.0, 0.0))                 # 4 px = 1 µm in x
    proposal = tracker.proposal((0.0, 0.0))
    assert proposal.limited and np.hypot(*proposal.offset_um) == pytest.approx(0.3, abs=1e-3)
    assert proposal.offset_um[0] == pytest.approx(0.3, abs=0.01) and "step limited to 0.3" in proposal.reason
    still = DriftTracker(STEP, max_step_um=1.0)
    still.add(0, particle((0.0, 0.0)), (0.0, 0.0))
    still.add(1, particle((0.0, 0.0)), (0.0, 0.0))
    assert still.proposal((0.0, 0.0)) is None                        # noise, not drift
    with pytest.raises(ConfigError, match="step limit"):
        DriftTracker(STEP, max_step_um=0.0)
