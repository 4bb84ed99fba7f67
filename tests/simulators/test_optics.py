"""The simulator's own geometry against xrayutilities (SCIENCE.md §2)."""
from __future__ import annotations

import numpy as np
import pytest
import xrayutilities as xu

from opmon.simulators.optics import (bragg_eta, detector_rotation, peak_pixel, q_sample_area, q_sample_at,
                                     sample_rotation, two_theta_deg, wavenumber)


def reference(eta, phi, nu, delta, energy, distance, pixel, center, shape):
    qconv = xu.experiment.QConversion(["y-", "z-"], ["z-", "y-"], [1, 0, 0])
    hxrd = xu.HXRD([1, 0, 0], [0, 0, 1], en=energy, qconv=qconv)
    hxrd.Ang2Q.init_area("z-", "y+", cch1=center[0], cch2=center[1], Nch1=shape[0], Nch2=shape[1],
                         pwidth1=pixel, pwidth2=pixel, distance=distance)
    return np.stack(hxrd.Ang2Q.area(eta, phi, nu, delta), axis=-1)


def test_q_sample_area_matches_xrayutilities_at_random_angles():
    rng = np.random.default_rng(7)
    for _ in range(12):
        eta, phi = rng.uniform(-30, 60), rng.uniform(-180, 180)
        nu, delta = rng.uniform(-20, 20), rng.uniform(0, 90)
        center = (rng.uniform(-300, 800), rng.uniform(-300, 800))
        energy, distance, pixel = rng.uniform(7000, 20000), rng.uniform(0.5, 3), rng.uniform(20e-6, 172e-6)
        shape = (64, 48)
        ref = reference(eta, phi, nu, delta, energy, distance, pixel, center, shape)
        ours = q_sample_area(eta, phi, nu, delta, energy_ev=energy, distance_m=distance, pixel_size_m=pixel,
                             beam_center=center, frame_shape=shape)
        scale = np.linalg.norm(ref, axis=-1, keepdims=True)
        assert np.all(np.abs(ours - ref) <= 1e-6 * scale), (eta, phi, nu, delta, center)


def test_roi_origin_is_a_crop_of_the_full_detector():
    args = dict(energy_ev=10000, distance_m=1.6, pixel_size_m=55e-6, beam_center=(256.0, 256.0))
    full = q_sample_area(19.0, 3.0, 1.0, 35.5, frame_shape=(512, 512), **args)
    crop = q_sample_area(19.0, 3.0, 1.0, 35.5, frame_shape=(40, 70), roi_origin=(100, 300), **args)
    np.testing.assert_allclose(crop, full[100:140, 300:370], rtol=1e-12)
    one = q_sample_at(123, 456, 19.0, 3.0, 1.0, 35.5, **args)
    np.testing.assert_allclose(one, full[123, 456], rtol=1e-12)


def test_peak_pixel_inverts_pixel_q():
    energy, distance, pixel, center = 10000.0, 1.6, 55e-6, (250.0, 260.0)
    k = wavenumber(energy)
    eta, phi, nu, delta = 18.7, 2.0, 0.5, 35.2
    q = q_sample_at(301.25, 188.5, eta, phi, nu, delta, energy_ev=energy, distance_m=distance,
                    pixel_size_m=pixel, beam_center=center)
    row, col, gap = peak_pixel(sample_rotation(eta, phi) @ q, detector_rotation(nu, delta), center[0], center[1],
                               pixel, distance, k)
    assert (row, col) == pytest.approx((301.25, 188.5), abs=1e-6)
    assert gap == pytest.approx(0.0, abs=1e-9)


def test_bragg_eta_puts_q_on_the_ewald_sphere():
    energy = 10000.0
    tth = two_theta_deg(2.0409, energy)
    assert tth == pytest.approx(35.37, abs=0.01)
    q = q_sample_at(256, 256, 19.0, 0.0, 0.0, tth, energy_ev=energy, distance_m=1.6, pixel_size_m=55e-6,
                    beam_center=(256.0, 256.0))
    assert np.linalg.norm(q) == pytest.approx(2 * np.pi / 2.0409, rel=1e-9)
    assert bragg_eta(q, energy, 0.0, guess=18.5) == pytest.approx(19.0, abs=1e-8)
    # a shorter spacing along the same direction needs a larger incidence
    assert bragg_eta(q * 2.0409 / 2.0184, energy, 0.0, guess=19.0) > 19.1
