"""Geometry must equal xrayutilities' Ang2Q.area (SCIENCE.md §2) to 1e-6 relative."""
import numpy as np
import pytest

from opmon.processors.geometry import DetectorGeometry, sample_matrix
from opmon.processors import kernels

xu = pytest.importorskip("xrayutilities")


def reference_q(energy, distance, pixel, center, shape, eta, phi, nu, delta):
    qconv = xu.experiment.QConversion(["y-", "z-"], ["z-", "y-"], [1, 0, 0])
    hxrd = xu.HXRD([1, 0, 0], [0, 0, 1], en=energy, qconv=qconv)
    hxrd.Ang2Q.init_area("z-", "y+", cch1=center[0], cch2=center[1], Nch1=shape[0], Nch2=shape[1],
                         pwidth1=pixel, pwidth2=pixel, distance=distance)
    return np.stack(hxrd.Ang2Q.area(eta, phi, nu, delta), axis=-1)


@pytest.mark.parametrize("seed", range(8))
def test_pixel_q_matches_xrayutilities(seed):
    rng = np.random.default_rng(seed)
    energy = rng.uniform(7000, 15000)
    distance = rng.uniform(0.5, 2.0)
    pixel = 55e-6
    shape = (31, 47)
    center = tuple(rng.uniform(-200, 400, 2))
    eta, phi, nu, delta = rng.uniform(-40, 40, 4)
    ref = reference_q(energy, distance, pixel, center, shape, eta, phi, nu, delta)
    geo = DetectorGeometry(energy, distance, (pixel, pixel), center, shape)
    q = geo.q_sample(eta, phi, nu, delta)
    rel = np.abs(q - ref).max() / np.linalg.norm(ref, axis=-1).min()
    assert rel < 1e-6


def test_numba_sample_matrix_equals_numpy():
    rng = np.random.default_rng(3)
    for eta, phi in rng.uniform(-90, 90, (20, 2)):
        assert np.allclose(kernels.sample_matrix(eta, phi), sample_matrix(eta, phi), atol=1e-14)


def test_zero_angles_direct_beam_pixel_has_zero_q():
    geo = DetectorGeometry(10000, 1.0, (55e-6, 55e-6), (10.0, 20.0), (32, 32))
    q = geo.q_sample(0, 0, 0, 0)
    assert np.linalg.norm(q[10, 20]) < 1e-12
    # a pixel below the beam centre (larger row) scatters downward: q_z < 0
    assert q[20, 20, 2] < 0 and abs(q[20, 20, 1]) < 1e-12
    # a pixel to the right (larger column) scatters toward +y
    assert q[10, 30, 1] > 0
