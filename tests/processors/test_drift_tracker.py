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


def test_fading_particle_stays_within_two_map_pixels_through_the_plateau():
    """The paper's one-phase window: the imaged reflection fades over the first plateau (nucleated
    fronts eat the particle from a few surface points), one map is taken across the switch of the
    imaged phase (its top rows faded, its bottom rows whole again), then the next phase is seen
    whole while its shell transforms. The stage creeps ~1 µm (2 map px) per map; each map's shift
    comes from the maps before it. Registering onto the previous map chained the fading bias and
    the odd map's error: the particle left its place by 4-10 px; here it stays within 2 px."""
    from opmon.processors.drift_tracker import Refused
    from opmon.simulators.stage_drift import StageDrift

    model = ParticleModel(SxdmSetup(map_shape=SHAPE, n_angles=3), seed=1, mode="paper", window="one-phase")
    rng = np.random.default_rng(101)
    states = [0.95, 0.85, 0.78, 0.70, 0.63, 0.57, 0.52, (0.51, 0.49), 0.45, 0.38, 0.30]
    creep = StageDrift(1.0, seed=1).path(len(states))          # (x, y) µm per map
    step = 0.5
    tracker, offset, moved, seen = DriftTracker(step, max_step_um=2.0), np.zeros(2), [], []

    def counts(x: float, shift: tuple[float, float]) -> np.ndarray:
        model.set_charge_state(x)
        q, sigma, c = model.render_arrays()
        q2, c2 = model.second_peak()
        return shift_arrays(SHAPE, shift, q, sigma, c, q2, c2)[2].reshape(SHAPE)

    for k, x in enumerate(states):
        where = (creep[k] - offset) / step                      # the particle in this map's pixels (x, y)
        moved.append(float(np.hypot(*(where - creep[0] / step))))
        shift = (float(where[1]), float(where[0]))
        if isinstance(x, tuple):                                # rows scanned before / after the switch
            image = counts(x[0], shift)
            image[SHAPE[0] // 2:] = counts(x[1], shift)[SHAPE[0] // 2:]
        else:
            image = counts(x, shift)
        image = rng.poisson(image).astype(np.float64)
        seen.append(tracker.add(k, image, tuple(offset), image >= 0.2 * image.max()))
        proposal = tracker.proposal(tuple(offset))
        if proposal is not None:
            offset = np.array(proposal.offset_um)
    assert np.hypot(*(creep[-1] - creep[0])) > 4.0                       # 8+ map px over the run
    assert max(moved) <= 2.0, np.round(moved, 2)
    refused = [s for s in seen if isinstance(s, Refused)]
    assert refused and all("not used for re-centring" in r.reason for r in refused)   # the faded maps, with why
    assert not isinstance(seen[-1], Refused)                    # the next phase is registered again


def test_what_is_left_of_a_fading_map_is_fitted_where_it_was_not_pulled_to_the_middle():
    """A third of the particle transformed (one-phase window, x = 0.7): cross-correlation with the
    whole particle pulls the rest towards the bright middle by 0.6-0.8 map px on these seeds; the
    fit on the map's valid pixels finds the displacement within 0.3 px."""
    from opmon.processors.drift_tracker import fit_on_valid

    truth = np.array([0.6, -1.2])
    errors = []
    for seed in (2, 3, 4, 5):
        model = ParticleModel(SxdmSetup(map_shape=SHAPE, n_angles=3), seed=seed, mode="paper", window="one-phase")
        rng = np.random.default_rng(7)
        maps = []
        for x, shift in ((0.95, (0.0, 0.0)), (0.7, tuple(truth))):
            model.set_charge_state(x)
            q, sigma, c = model.render_arrays()
            q2, c2 = model.second_peak()
            image = rng.poisson(shift_arrays(SHAPE, shift, q, sigma, c, q2, c2)[2].reshape(SHAPE)).astype(np.float64)
            maps.append((np.where(image >= 0.2 * image.max(), image, 0.0), image >= 0.2 * image.max()))
        (whole, _), (faded, valid) = maps
        start = register([faded], whole, pad=True)[0]
        errors.append(np.hypot(*(fit_on_valid(faded, valid, whole, start) - truth)))
    assert max(errors) < 0.3, errors


def test_a_position_off_the_creep_is_refused_once_and_believed_when_the_next_map_agrees(particle):
    from opmon.processors.drift_tracker import Refused

    tracker = DriftTracker(STEP, max_step_um=10.0)
    for k in range(3):                                         # creep of 0.3 px per map along x
        assert not isinstance(tracker.add(k, particle((0.0, 0.3 * k)), (0.0, 0.0)), Refused)
    odd = tracker.add(3, particle((0.0, 2.9)), (0.0, 0.0))    # 2 px beyond where the creep leads
    assert isinstance(odd, Refused) and "from where the creep" in odd.reason, odd
    proposal = tracker.proposal((0.0, 0.0))                    # map 4 from the creep of maps 0-2
    assert proposal.offset_um[0] == pytest.approx(1.2 * STEP, abs=0.05), proposal
    agrees = tracker.add(4, particle((0.0, 3.2)), (0.0, 0.0))  # the jump was real: two maps agree
    assert not isinstance(agrees, Refused) and agrees.particle_um[0] == pytest.approx(3.2 * STEP, abs=0.05)


def test_a_map_with_bright_pixels_off_the_particle_is_refused():
    """Valid pixels where the particle never was (a powder spot, a hot corner of the map) make
    the registration meaningless: the map is not used, and the reason says so."""
    from opmon.processors.drift_tracker import Refused

    yy, xx = np.mgrid[0:12, 0:12]
    blob = 1000.0 * np.exp(-((yy - 6.0) ** 2 + (xx - 6.5) ** 2) / (2 * 1.5 ** 2))
    blob = np.where(blob > 100.0, blob, 0.0)                   # a small particle in the middle
    tracker = DriftTracker(STEP, max_step_um=10.0)
    tracker.add(0, blob, (0.0, 0.0))
    spotted = blob.copy()
    spotted[:2, :2] = 1000.0                                    # 4 bright pixels in a corner
    refused = tracker.add(1, spotted, (0.0, 0.0))
    assert isinstance(refused, Refused) and "off the particle's footprint" in refused.reason, refused
    assert not isinstance(tracker.add(2, blob, (0.0, 0.0)), Refused)
