"""Eta-scan registration of a strained, bent particle: the part in Bragg condition moves across
it with eta (the simulator's paper particles: ~0.4 map pixel per 0.016° step), which intensity
cross-correlation (`--register auto`) takes for drift; the tilt that rocking does not move
(`--register tilt`) moves only with the sample.

The scans here are per-scan sums (Σ I and Σ I·q per map pixel) made directly, without frames:
what `EtaScanAccumulator` holds before it registers, small and fast.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from opmon.processors.eta_scans import parse_registration
from opmon.processors.registration import (eta_axis, register_eta_scans, register_eta_scans_by_tilt, resample,
                                           rocking_free_field)
from opmon.simulators.drift import centred_on, drift_path

MAP = (20, 20)
N_SCANS = 16
STEP = 0.016                                  # deg, the paper's rocking step
ETAS = 18.9 + STEP * np.arange(N_SCANS)
WIDTH = 4.0                                   # rocking curve sigma, in steps
Q0 = 3.09                                     # 1/Å, |q| of the reflection (along lab z)
CENTRE = (9.6, 10.2)


def strained_particle():
    """Amplitude, Bragg eta and the tilt about the rocking direction of each map pixel: the Bragg
    eta changes by 2.5 steps per map pixel along a diagonal (the lit band moves 0.4 pixel per step),
    the tilt is bent (curved) over the particle."""
    yy, xx = np.mgrid[0:MAP[0], 0:MAP[1]].astype(float)
    y, x = yy - CENTRE[0], xx - CENTRE[1]
    inside = (y / 6.2) ** 2 + (x / 7.0) ** 2 <= 1.0
    amplitude = np.where(inside, 3000.0, 0.0)
    bragg_eta = ETAS.mean() + 2.5 * STEP * (0.8 * y + 0.6 * x) / 2.0
    tilt = 5e-4 * x + 1e-4 * y + 3e-5 * x * y      # q along the eta axis (lab y), 1/Å
    return amplitude, bragg_eta, tilt


def scans(drift, seed=0, leak=0.0, width=WIDTH):
    """(n, ny, nx) Σ I and (n, ny, nx, 3) Σ I·q of each eta scan of the particle moved by `drift`,
    with Poisson counts (the centroid then carries its noise). `leak`: the share of the rocking's
    move of the centroid that lands on the eta axis (a broad anisotropic, focused-beam, peak)."""
    amplitude, bragg_eta, tilt = strained_particle()
    rng = np.random.default_rng(seed)
    s0, s1 = [], []
    for eta, shift in zip(ETAS, drift):
        seen = amplitude * np.exp(-0.5 * ((eta - bragg_eta) / (width * STEP)) ** 2)
        rocking = Q0 * np.radians(eta - bragg_eta)
        q = np.stack([rocking, tilt + leak * rocking, np.full(MAP, Q0)], axis=-1)  # rocking moves q along x (and leaks)
        i0 = resample(seen, -np.asarray(shift))
        iq = resample(seen[..., None] * q, -np.asarray(shift))
        counts = rng.poisson(i0).astype(float)
        s0.append(counts)
        s1.append(iq * (counts / np.where(i0 > 0, i0, np.inf))[..., None])
    return np.stack(s0), np.stack(s1)


def truth(seed, width=WIDTH):
    """Drift of up to 3 map pixels, in the Σ I-weighted mean frame (the simulator's rule)."""
    amplitude, bragg_eta, _ = strained_particle()
    weights = [(amplitude * np.exp(-0.5 * ((eta - bragg_eta) / (width * STEP)) ** 2)).sum() for eta in ETAS]
    return centred_on(drift_path(N_SCANS, 3.0, seed), weights), np.asarray(weights)


def errors(found, true, weights):
    seen = weights >= 0.02 * weights.max()
    return np.hypot(*(found - true)[seen].T)


@pytest.mark.parametrize("seed", [4, 5])
def test_tilt_registration_finds_the_drift_of_a_strained_particle_within_0_2_pixel(seed):
    true, weights = truth(seed)
    s0, s1 = scans(true, seed)
    assert errors(register_eta_scans(s0), true, weights).max() > 0.5     # intensity is fooled by the moving band
    np.testing.assert_array_less(errors(register_eta_scans_by_tilt(s0, s1), true, weights), 0.2)


def test_tilt_registration_is_not_fooled_by_a_broad_peaks_leak_onto_the_eta_axis(monkeypatch):
    """A focused-beam peak's slice centroid moves partly along the eta axis as eta turns (here 0.2 of
    its rocking move): each scan's field is offset in proportion to its eta, which the fit on the plain
    eta axis takes for a shift along the tilt ramp (3 map pixels). The leak-free axis cuts that to
    < 1 pixel; what is left is the leak's degeneracy with a drift steady over the scans (a linear tilt
    ramp and a steady drift offset each scan as the leak does), from which u leans ~0.05."""
    true, weights = truth(4)
    s0, s1 = scans(true, 4, leak=0.2)
    seen = weights >= 0.02 * weights.max()
    found = errors(register_eta_scans_by_tilt(s0, s1), true, weights)
    assert found.max() < 1.0 and (weights[seen] * found).sum() / weights[seen].sum() < 0.5
    monkeypatch.setattr("opmon.processors.registration.leak_free_axis", lambda s0, s1, phi: eta_axis(phi))
    assert errors(register_eta_scans_by_tilt(s0, s1), true, weights).max() > 2.5   # the plain eta axis: fooled


def test_the_field_is_the_tilt_the_rocking_does_not_move():
    s0, s1 = scans(np.zeros((N_SCANS, 2)))
    field = rocking_free_field(s0, s1)
    _, _, tilt = strained_particle()
    lit = s0 > 0.05 * s0.max()
    np.testing.assert_allclose(field[lit], np.broadcast_to(tilt, s0.shape)[lit], atol=2e-5)
    assert parse_registration("tilt") == "tilt"


def test_the_tilt_fit_cost_on_lit_pixels_equals_the_whole_grid_misfit():
    """`_FieldCost` interpolates only the scan's lit pixels (the speed-up): the same weighted misfit
    as over the whole grid, off-support landings costing the penalty, at whole and sub-pixel shifts."""
    from scipy.ndimage import map_coordinates

    from opmon.processors.registration import _FieldCost

    s0, s1 = scans(np.zeros((N_SCANS, 2)))
    field = rocking_free_field(s0, s1)
    weight = np.where(s0[8] > 0.05 * s0[8].max(), s0[8], 0.0)
    defined = (s0[7] > 0.05 * s0[7].max()).astype(float)
    reference = field[7] * defined
    cost = _FieldCost(field[8], weight, reference, defined, penalty=1e-6)
    yy, xx = np.mgrid[0:MAP[0], 0:MAP[1]].astype(float)
    for shift in ((0.0, 0.0), (1.0, -2.0), (0.37, 1.6), (-2.25, -0.8)):
        at = [yy - shift[0], xx - shift[1]]
        seen = map_coordinates(reference, at, order=1, mode="constant", cval=0.0)
        inside = map_coordinates(defined, at, order=1, mode="constant", cval=0.0) > 0.999
        whole = (weight * np.where(inside, (field[8] - seen) ** 2, 1e-6)).sum() / weight.sum()
        assert cost(shift) == pytest.approx(whole, rel=1e-12)
    assert cost((0.37, 1.6)) > cost((0.0, 0.0))      # the scans lie on each other unmoved


def beam_scans(drift):
    """Noise-free Σ I and Σ I·q of each eta scan as the simulator's drift makes them: a map pixel
    between particle pixels sees their amplitude-weighted mix of Bragg angle and tilt (the beam on
    both), so each scan's tilt map is the particle's blurred by its own sub-pixel place."""
    amplitude, bragg_eta, tilt = strained_particle()
    s0, s1 = [], []
    for eta, shift in zip(ETAS, drift):
        seen_amp = resample(amplitude, -np.asarray(shift))
        mixed = lambda v: resample(amplitude * v, -np.asarray(shift)) / np.where(seen_amp > 0, seen_amp, 1.0)  # noqa: E731
        bragg, bent = mixed(bragg_eta), mixed(tilt)
        seen = seen_amp * np.exp(-0.5 * ((eta - bragg) / (WIDTH * STEP)) ** 2)
        s0.append(seen)
        s1.append(seen[..., None] * np.stack([Q0 * np.radians(eta - bragg), bent, np.full(MAP, Q0)], axis=-1))
    return np.stack(s0), np.stack(s1)


def test_tilt_shifts_fitted_onto_the_sharp_field_are_not_pulled_by_each_scans_blur(monkeypatch):
    true, weights = truth(4)
    s0, s1 = beam_scans(true)
    sharp = errors(register_eta_scans_by_tilt(s0, s1), true, weights).max()
    monkeypatch.setattr("opmon.processors.registration.SHARP_ROUNDS", 0)   # the mean of the scans moved back only
    blurred = errors(register_eta_scans_by_tilt(s0, s1), true, weights).max()
    assert sharp < 0.1 and blurred > 1.5 * sharp


def test_the_intensity_fallback_declines_on_a_still_strained_particle_and_invents_no_drift(caplog):
    """Each still scan's tilt map carries a smooth pattern of its own (a focused beam's ring, powder): the tilt
    map is too blurred to register on (contrast < 5), and the intensity maps, whose lit band moves with eta,
    would be moved by up to ~2.5 map pixels (`register_eta_scans`): the scans moved back fit each other hardly
    better than unmoved (not one image drifting), so the scans are added as they are."""
    caplog.set_level(logging.DEBUG, logger="opmon.processors.registration")    # a decline is normal: DEBUG
    s0, s1 = scans(np.zeros((N_SCANS, 2)), 1)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:MAP[0], 0:MAP[1]].astype(float)
    for k in range(N_SCANS):
        ky, kx, phase = rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9), rng.uniform(0.0, 6.3, 2)
        s1[k, ..., 1] += s0[k] * 1e-3 * np.sin(ky * yy + phase[0]) * np.sin(kx * xx + phase[1])
    assert np.abs(register_eta_scans(s0)).max() > 1.0          # what the fallback did before
    np.testing.assert_array_equal(register_eta_scans_by_tilt(s0, s1), 0.0)
    assert "nothing to register on" in caplog.text and "intensity registration declined" in caplog.text


def test_the_decline_measure_tells_drift_found_from_drift_invented():
    """`field_misfit`, the decline test of tilt registration: drifted scans fit each other far better moved by
    their drift than unmoved (kept: gain ≥ `MIN_GAIN`); still scans moved by shifts of the same size fit worse
    than unmoved (declined)."""
    from opmon.processors.registration import FIELD_FLOOR, FIELD_SUPPORT, MIN_GAIN, field_misfit

    true, weights = truth(4)
    signal = np.flatnonzero(weights >= 0.1 * weights.max())
    for drift, shifts, kept in ((true, true, True), (np.zeros((N_SCANS, 2)), true, False)):
        s0, s1 = scans(drift, 4)
        weight = np.where(s0 >= FIELD_FLOOR * s0.max(), s0, 0.0)
        field = rocking_free_field(s0, s1)
        level = FIELD_SUPPORT * FIELD_FLOOR * s0.max()
        gain = field_misfit(field, weight, np.zeros_like(shifts), signal, level) / field_misfit(field, weight, shifts, signal, level)
        assert (gain >= MIN_GAIN) == kept, (kept, gain)


def test_a_faint_scans_fit_far_from_its_brighter_neighbours_takes_the_nearest_ones_shift():
    """Scans with < 10 % of the brightest Σ I light few pixels whose noisy tilt maps fit anywhere (4-10 map pixels
    on the truth harness's `all` map): such a fit is replaced by the nearest brighter scan's shift; a faint fit
    near its neighbours' (the drift creeps) is kept."""
    from opmon.processors.registration import _faint_checked

    shifts = np.array([[5.8, -3.9], [-1.2, -0.4], [-0.8, -0.3], [-0.7, -0.6], [1.5, -2.2], [3.9, -1.6]])
    trusted = np.array([2, 3, 4])
    checked = _faint_checked(shifts, trusted)
    np.testing.assert_array_equal(checked[[0, 5]], shifts[[2, 4]])     # 6.9 and 2.4 px off: replaced
    np.testing.assert_array_equal(checked[1:5], shifts[1:5])            # 0.4 px off, and the trusted: kept


@pytest.mark.parametrize("spread, seed", [(2e-3, 5), (4e-3, 4)])
def test_noisy_faint_pixels_neither_hide_the_drift_nor_invent_it(spread, seed):
    """The truth harness's `all` map: the faint pixels (< 20 % of the brightest count: the particle's edge, the
    rocking curve's flanks) carry noisy tilt maps, which sank the decline test (any fit gains 1.3-1.4 there, drift
    or none) and the tilt contrast (below 5). Here each faint pixel's field gets noise of `spread` (1/Å): tilt
    contrast 5.5 and 3.2, and the decline test over every lit pixel 1.3 and 1.4 (< `MIN_GAIN`: declined before);
    measured on the bright pixels (`GAIN_FLOOR`) the drift is kept (14 and 8) and found; the same scans of the
    still particle get zero shifts (the map `--register off` makes)."""
    true, weights = truth(seed)
    seen = weights >= 0.02 * weights.max()
    for drift in (true, np.zeros_like(true)):
        s0, s1 = scans(drift, seed)
        faint = s0 < 0.2 * s0.max()
        s1[..., 1] += np.where(faint, s0 * np.random.default_rng(seed).normal(0.0, spread, s0.shape), 0.0)
        found = register_eta_scans_by_tilt(s0, s1)
        if not drift.any():
            np.testing.assert_array_equal(found, 0.0)
            continue
        error, unmoved = errors(found, true, weights), errors(np.zeros_like(true), true, weights)
        assert (weights[seen] * error).sum() < 0.65 * (weights[seen] * unmoved).sum(), (error, unmoved)
