"""Rendered frames: peak position, integrated counts, noise, background, defects, ROI, speed paths."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.errors import ConfigError
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.optics import q_sample_area
from opmon.simulators.render import FrameRenderer


def q_grid(setup, eta):
    r0, _, c0, _ = setup.roi_window
    return q_sample_area(eta, setup.phi, setup.nu, setup.delta, energy_ev=setup.energy_ev, distance_m=setup.distance_m,
                         pixel_size_m=setup.pixel_size_m, beam_center=setup.beam_center,
                         frame_shape=setup.frame_shape, roi_origin=(r0, c0))


@pytest.fixture(scope="module")
def world():
    setup = SxdmSetup(map_shape=(12, 12))
    particle = ParticleModel(setup, seed=2, x_mean=0.7)
    return setup, particle, FrameRenderer(setup, particle, seed=5)


def brightest(particle):
    return int(np.argmax(particle.truth()["intensity"].ravel()))


def test_peak_lands_where_the_optics_says(world):
    setup, particle, renderer = world
    m = brightest(particle)
    qp = particle.truth()["q"].reshape(-1, 3)[m]
    eta = float(particle.bragg_eta(qp))
    lam = renderer.expected(m, eta, setup.phi, setup.nu, setup.delta)[0]
    dist = np.linalg.norm(q_grid(setup, eta) - qp, axis=-1)
    assert np.unravel_index(np.argmax(lam), lam.shape) == np.unravel_index(np.argmin(dist), dist.shape)
    assert dist.min() < setup.pixel_dq  # on the Ewald sphere at the Bragg eta


def test_expected_peak_centre_sum_and_width_are_the_truth(world):
    setup, particle, renderer = world
    t = particle.truth()
    etas = setup.eta_values()
    for m in (brightest(particle), int(np.flatnonzero(t["mask"].ravel())[7])):
        lam = renderer.expected(np.full(etas.size, m), etas, setup.phi, setup.nu, setup.delta)
        total = lam.sum()
        q = np.stack([q_grid(setup, e) for e in etas])
        com = np.einsum("fij,fijk->k", lam, q) / total
        width = np.sqrt(np.einsum("fij,fij->", lam, ((q - com) ** 2).sum(-1)) / total)
        qt = t["q"].reshape(-1, 3)[m]
        assert total == pytest.approx(t["intensity"].ravel()[m], rel=0.01)
        assert np.linalg.norm(com - qt) < 1.5e-5  # 3e-4 deg
        assert abs(2 * np.pi / np.linalg.norm(com) - t["d_spacing"].ravel()[m]) < 1e-5
        assert width == pytest.approx(t["peak_width"].ravel()[m], rel=0.03)


def test_background_dead_and_hot_pixels():
    setup = SxdmSetup(map_shape=(12, 12))
    particle = ParticleModel(setup, seed=0)
    renderer = FrameRenderer(setup, particle, seed=1)
    empty = int(np.flatnonzero(particle.truth()["support"].ravel() == 0)[0])
    frames = renderer.frames(np.full(40, empty), setup.eta_values()[:1], setup.phi, setup.nu, setup.delta)
    mask = renderer.detector_mask.astype(bool)
    assert mask.sum() == setup.n_dead + setup.n_hot
    rate = frames[:, ~mask].mean()
    assert rate == pytest.approx(setup.background_rate, rel=0.1)
    dead = np.zeros_like(mask)
    dead[tuple(renderer.dead.T)] = True
    hot = np.zeros_like(mask)
    hot[tuple(renderer.hot.T)] = True
    assert np.all(frames[:, dead] == 0)
    assert np.all(frames[:, hot] > 1000)
    assert frames[:, ~mask].max() <= 3  # sparse single photons, no peak for this empty pixel


def test_noisy_peak_is_poisson_around_the_expected_counts(world):
    setup, particle, renderer = world
    m = brightest(particle)
    etas = setup.eta_values()
    noisy = renderer.frames(np.full(etas.size, m), etas, setup.phi, setup.nu, setup.delta).astype(np.float64)
    lam = renderer.expected(np.full(etas.size, m), etas, setup.phi, setup.nu, setup.delta)
    mask = renderer.detector_mask.astype(bool)
    near = (lam > 1e-3) & ~mask[None]
    bg = setup.background_rate * near.sum()
    assert noisy[near].sum() == pytest.approx(lam[near].sum() + bg, abs=5 * np.sqrt(lam[near].sum() + bg))
    assert noisy.dtype == np.float64 and noisy[near].max() < 4 * lam.max() + 10


def test_frames_are_deterministic_and_block_independent(world):
    setup, particle, _ = world
    etas = setup.eta_values()[10:20]
    m = brightest(particle)
    a = FrameRenderer(setup, particle, seed=9).frames(np.full(10, m), etas, setup.phi, setup.nu, setup.delta)
    rb = FrameRenderer(setup, particle, seed=9)
    b = np.stack([rb.frame(m, e, setup.phi, setup.nu, setup.delta) for e in etas])
    np.testing.assert_array_equal(a, b)
    c = FrameRenderer(setup, particle, seed=10).frames(np.full(10, m), etas, setup.phi, setup.nu, setup.delta)
    assert not np.array_equal(a, c)


def test_roi_is_a_crop_and_uint16_clips():
    full = SxdmSetup(map_shape=(8, 8))
    roi = SxdmSetup(map_shape=(8, 8), roi=(150, 350, 200, 330), hot_mean_counts=1e6)
    # the imaged Li-rich phase of the first plateau: Li0.5 (2.0184 Å) would sit on this ROI's edge
    particle = ParticleModel(full, seed=4, x_mean=0.7, window="one-phase")
    p_roi = ParticleModel(roi, seed=4, x_mean=0.7, window="one-phase")
    m = brightest(particle)
    eta = float(particle.bragg_eta(particle.truth()["q"].reshape(-1, 3)[m]))
    lam_full = FrameRenderer(full, particle).expected(m, eta, full.phi, full.nu, full.delta)[0]
    r16 = FrameRenderer(roi, p_roi, dtype=np.uint16)
    lam_roi = r16.expected(m, eta, roi.phi, roi.nu, roi.delta)[0]
    assert lam_roi.shape == (200, 130)
    np.testing.assert_allclose(lam_roi, lam_full[150:350, 200:330], rtol=1e-12)
    assert lam_roi.sum() > 0.9 * lam_full.sum()
    frame = r16.frame(m, eta, roi.phi, roi.nu, roi.delta)
    assert frame.dtype == np.uint16 and frame.shape == (200, 130)
    assert frame.max() == 65535  # hot pixels of 1e6 counts are clipped
    assert r16.detector_mask.shape == (200, 130)


def test_charge_state_change_between_frames_moves_the_peak(world):
    setup = SxdmSetup(map_shape=(8, 8))
    particle = ParticleModel(setup, seed=3, mode="uniform", x_mean=1.0)
    renderer = FrameRenderer(setup, particle)
    m = brightest(particle)
    rows = []
    for x in (1.0, 0.5):  # Li1 2.0409 Å -> Li0.5 2.0184 Å (Li0 lies off this detector)
        particle.set_charge_state(x)
        qp = particle.truth()["q"].reshape(-1, 3)[m]
        lam = renderer.expected(m, float(particle.bragg_eta(qp)), setup.phi, setup.nu, setup.delta)[0]
        rows.append(np.unravel_index(np.argmax(lam), lam.shape)[0])
    # shorter d, larger 2theta: the peak moves up (smaller row) by ~200 pixels
    assert 150 < rows[0] - rows[1] < 260


def test_noisy_map_supports_the_processing_accuracy():
    """A masked, background-subtracted windowed centre of mass recovers d and tilt truth."""
    setup = SxdmSetup(map_shape=(10, 10), roi=(128, 384, 128, 384))
    particle = ParticleModel(setup, seed=6, mode="two-phase-nucleated", x_mean=0.5)
    renderer = FrameRenderer(setup, particle, seed=6)
    t = particle.truth()
    etas = setup.eta_values()
    q = np.stack([q_grid(setup, e) for e in etas])
    good = renderer.detector_mask == 0
    valid = np.flatnonzero(t["mask"].ravel())
    errs, com_all = [], []
    for m in valid:
        frames = renderer.frames(np.full(etas.size, m), etas, setup.phi, setup.nu, setup.delta).astype(np.float64)
        frames *= good
        summed = frames.sum(0)
        r, c = np.unravel_index(np.argmax(summed), summed.shape)
        win = np.zeros_like(good)
        win[max(r - 30, 0):r + 31, max(c - 30, 0):c + 31] = True
        w = (frames - setup.background_rate) * (win & good)
        com = np.einsum("fij,fijk->k", w, q) / w.sum()
        com_all.append(com)
        errs.append(abs(2 * np.pi / np.linalg.norm(com) - t["d_spacing"].ravel()[m]))
    assert np.median(errs) <= 5e-5 and np.percentile(errs, 99) <= 2.5e-4
    com_all = np.array(com_all)
    mean_q = com_all.mean(axis=0)
    u, v = com_all / np.linalg.norm(com_all, axis=1)[:, None], mean_q / np.linalg.norm(mean_q)
    alt = np.degrees(np.arccos(np.clip(u @ v, -1, 1)))
    assert np.median(np.abs(alt - t["tilt_altitude"].ravel()[valid])) <= 0.005


def test_bad_arguments_raise_config_errors(world):
    setup, particle, renderer = world
    with pytest.raises(ConfigError, match="999"):
        renderer.frame(999, 19.0, 0, 0, 35.5)
    with pytest.raises(ConfigError, match="int8"):
        FrameRenderer(setup, particle, dtype=np.int8)
    with pytest.raises(ConfigError, match="etas"):
        renderer.frames([0, 1, 2], [19.0, 19.1], 0, 0, 35.5)
    with pytest.raises(ConfigError, match="-3"):
        FrameRenderer(setup, particle, seed=-3)
    with pytest.raises(ConfigError, match="roi"):
        SxdmSetup(roi=(0, 600, 0, 10))
