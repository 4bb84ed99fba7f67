"""The simulated particle: lithium bookkeeping, phases, fronts, tilts and truth maps."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.errors import ConfigError
from opmon.simulators.crystal import MODES, ParticleModel, d_of_x, tilt_angles, tilt_scale_deg
from opmon.simulators.instrument import SxdmSetup


@pytest.fixture(scope="module")
def setup():
    return SxdmSetup(map_shape=(40, 40))


@pytest.mark.parametrize("mode", MODES)
def test_mean_lithium_equals_x_mean(setup, mode):
    p = ParticleModel(setup, seed=3, mode=mode)
    for x in (1.0, 0.97, 0.9, 0.77, 0.5, 0.31, 0.0):
        p.set_charge_state(x)
        li = p.truth()["lithium"]
        assert np.nanmean(li) == pytest.approx(x, abs=1e-12)
        assert np.all(np.isfinite(li) == (p.support))
        assert np.nanmin(li) >= -1e-12 and np.nanmax(li) <= 1 + 1e-12


def test_d_of_x_follows_the_paper():
    assert d_of_x(1.0) == pytest.approx(2.0409)
    assert d_of_x(0.9) == pytest.approx(2.0332)
    assert d_of_x(0.5) == pytest.approx(2.0184)  # Li0.5; 2.0260 Å is not in the paper
    assert d_of_x(0.0) < 2.0184  # Li0: not imaged in the paper
    assert np.all(np.diff(d_of_x(np.linspace(0, 1, 101))) > 0)


def test_nucleated_first_plateau_shows_two_phases_at_their_d(setup):
    p = ParticleModel(setup, seed=1, mode="paper", x_mean=0.7)
    d = p.truth()["d_spacing"]
    d = d[np.isfinite(d)]
    hist, edges = np.histogram(d, bins=np.arange(2.0164, 2.0360, 0.0004))
    centres = 0.5 * (edges[1:] + edges[:-1])
    top2 = centres[np.argsort(hist)[-2:]]
    assert np.min(np.abs(top2 - 2.0184)) < 5e-4
    assert np.min(np.abs(top2 - 2.0332)) < 5e-4
    near = lambda v: np.mean(np.abs(d - v) < 5e-4)
    assert near(2.0184) + near(2.0332) > 0.97
    assert near(2.0184) == pytest.approx(0.5, abs=0.05)  # (0.9 - 0.7) / 0.4 of the particle


def test_nucleation_starts_at_several_surface_points_and_grows(setup):
    p = ParticleModel(setup, seed=5, mode="nucleated")
    p.set_charge_state(0.88)
    early = p.truth()["lithium"] < 0.7
    p.set_charge_state(0.6)
    late = p.truth()["lithium"] < 0.7
    assert early.sum() > 0 and late.sum() > 3 * early.sum()
    assert np.all(late[early])  # the new phase only grows
    # the first grains sit near the surface, not in the core
    assert np.median(p.depth[early]) < np.median(p.depth[p.support])


def test_core_shell_front_moves_inward(setup):
    p = ParticleModel(setup, seed=2, mode="paper")
    depths = []
    for x in (0.45, 0.3, 0.15, 0.05):
        p.set_charge_state(x)
        li = p.truth()["lithium"]
        poor, rich = li < 0.25, li > 0.25
        assert poor.any() and rich.any()
        # the Li-poor phase is the shell: shallower than the Li-rich core
        assert np.median(p.depth[poor]) < np.median(p.depth[rich])
        depths.append(np.max(p.depth[poor]))
    assert all(b > a for a, b in zip(depths, depths[1:]))


def test_truth_maps_have_the_formats_names_and_consistent_values(setup):
    p = ParticleModel(setup, seed=0, mode="two-phase-core-shell", x_mean=0.4, cycles=1.0)
    t = p.truth()
    for name in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mask",
                 "mean_q", "lithium"):
        assert name in t
    ny, nx = setup.map_shape
    assert t["q"].shape == (ny, nx, 3) and t["mean_q"].shape == (3,)
    assert t["mask"].dtype == np.uint8
    valid = t["mask"] == 1
    np.testing.assert_allclose(t["d_spacing"][valid], 2 * np.pi / np.linalg.norm(t["q"][valid], axis=-1))
    np.testing.assert_allclose(t["mean_q"], t["q"][valid].mean(axis=0))
    assert np.all(t["intensity"][valid] >= 0.2 * t["intensity"].max())
    assert np.all(t["intensity"][t["support"] == 0] == 0)
    alt, az = tilt_angles(t["q"][valid], t["mean_q"])
    np.testing.assert_allclose(alt, t["tilt_altitude"][valid])
    assert np.all((t["tilt_azimuth"][valid] >= 0) & (t["tilt_azimuth"][valid] < 360))
    assert 0.01 < np.nanmax(t["tilt_altitude"][valid]) < 1.0


def test_tilts_grow_with_charge_and_cycles(setup):
    assert tilt_scale_deg(1.0, 0.0) == pytest.approx(0.08)
    assert tilt_scale_deg(0.0, 0.0) == pytest.approx(0.25, abs=0.01)
    assert tilt_scale_deg(0.0, 50.0) == pytest.approx(0.6, abs=0.01)
    p = ParticleModel(setup, seed=4)
    spread = []
    for x, c in ((1.0, 0.0), (0.0, 0.0), (1.0, 20.0)):
        p.set_charge_state(x, cycles=c)
        t = p.truth()
        spread.append(np.nanmax(t["tilt_altitude"][t["mask"] == 1]))
    assert spread[0] < spread[1] < spread[2]
    assert 0.03 < spread[0] < 0.2


def test_state_is_deterministic_for_a_seed(setup):
    a = ParticleModel(setup, seed=11, x_mean=0.8)
    b = ParticleModel(setup, seed=11)
    b.set_charge_state(0.3)
    b.set_charge_state(0.8)
    np.testing.assert_array_equal(a.truth()["q"], b.truth()["q"])
    c = ParticleModel(setup, seed=12, x_mean=0.8)
    assert not np.array_equal(np.nan_to_num(a.truth()["q"]), np.nan_to_num(c.truth()["q"]))


def test_default_scan_holds_every_peak_over_a_whole_charge():
    # every IMAGED peak: Li0 (not imaged in the paper) lies outside the detector window
    setup = SxdmSetup(map_shape=(30, 30))
    p = ParticleModel(setup, seed=0, window="one-phase")
    for x in np.linspace(1.0, 0.0, 11):
        p.set_charge_state(x)
        assert p.rocking_margin() >= 4.0


def test_rocking_range_grows_with_cycling_and_matches_the_margin():
    setup = SxdmSetup(map_shape=(30, 30))
    p = ParticleModel(setup, seed=0, x_mean=0.3)
    lo, hi = p.rocking_range(4.0)
    etas = setup.eta_values()
    assert etas.min() < lo < hi < etas.max()
    assert p.rocking_margin(np.array([lo, hi])) == pytest.approx(4.0, rel=1e-6)
    p.set_charge_state(0.3, cycles=30)
    lo2, hi2 = p.rocking_range(4.0)
    assert hi2 - lo2 > hi - lo
    assert p.rocking_margin() < 4.0  # the default scan no longer holds a heavily cycled particle


def test_bad_input_names_the_value(setup):
    with pytest.raises(ConfigError, match="banana"):
        ParticleModel(setup, mode="banana")
    p = ParticleModel(setup)
    with pytest.raises(ConfigError, match="1.5"):
        p.set_charge_state(1.5)
    with pytest.raises(ConfigError, match="-1"):
        p.set_charge_state(0.5, cycles=-1)


def test_a_map_too_small_for_a_particle_is_refused_by_name():
    import pytest
    from opmon.errors import ConfigError
    from opmon.simulators.crystal import ParticleModel
    from opmon.simulators.instrument import SxdmSetup
    with pytest.raises(ConfigError, match="2 x 2 points is too small"):
        ParticleModel(SxdmSetup(map_shape=(2, 2)))
