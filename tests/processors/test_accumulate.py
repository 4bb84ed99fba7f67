"""MomentAccumulator against a plain numpy reference; order and split-merge invariance."""
import numpy as np
import pytest

from opmon.errors import FrameShapeError, MapIndexError, OpmonError
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.kernels_rows import REL_TOL

GEO = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (250.0, 260.0), (48, 64))
NU, DELTA = 30.0, 5.0


def random_frames(n=60, dtype=np.uint32, seed=0, npix=6):
    rng = np.random.default_rng(seed)
    frames = rng.poisson(0.4, (n, 48, 64)).astype(dtype)
    frames[:, 20:28, 30:40] += rng.poisson(20, (n, 8, 10)).astype(dtype)
    return frames, rng.integers(0, npix, n), rng.uniform(18.5, 19.5, n), rng.uniform(-0.5, 0.5, n)


def numpy_sums(frames, index, eta, phi, roi, mask, npix=6):
    r0, r1, c0, c1 = roi
    s0, s1, s2 = np.zeros(npix), np.zeros((npix, 3)), np.zeros((npix, 3, 3))
    for f in range(len(frames)):
        q = GEO.q_sample(eta[f], phi[f], NU, DELTA)[r0:r1, c0:c1]
        w = frames[f, r0:r1, c0:c1].astype(np.float64) * (mask[r0:r1, c0:c1] == 0)
        s0[index[f]] += w.sum()
        s1[index[f]] += np.einsum("ij,ijk->k", w, q)
        s2[index[f]] += np.einsum("ij,ijk,ijl->kl", w, q, q)
    return s0, s1, s2


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("roi", [None, (10, 40, 20, 50)])
@pytest.mark.parametrize("exact", [True, False])
def test_sums_equal_numpy(dtype, roi, exact):
    frames, index, eta, phi = random_frames(dtype=dtype)
    mask = np.zeros((48, 64), np.uint8)
    mask[22, 33] = 1
    mask[0, 0] = 1
    acc = MomentAccumulator(GEO, (2, 3), roi=roi, detector_mask=mask, background=None, despeckle=False, exact_kernel=exact)
    acc.process_block(frames, index, eta, phi, NU, DELTA)
    assert (acc._fast is None) == exact        # the default options take the fast kernel
    s0, s1, s2 = numpy_sums(frames, index, eta, phi, roi or (0, 48, 0, 64), mask)
    assert np.array_equal(acc.sum_i, s0)
    if exact:
        assert np.allclose(acc.sum_iq, s1, rtol=1e-12, atol=1e-9)
        assert np.allclose(acc.sum_iqq, s2, rtol=1e-12, atol=1e-9)
    else:   # q is its fitted quadratic, within REL_TOL of |q|: Σ I·q within REL_TOL·|q|·Σ I, Σ I·q⊗q within twice that
        q_max = np.sqrt(np.abs(s2).max() / s0.max())
        np.testing.assert_allclose(acc.sum_iq, s1, rtol=0, atol=REL_TOL * q_max * s0.max())
        np.testing.assert_allclose(acc.sum_iqq, s2, rtol=0, atol=2 * REL_TOL * q_max**2 * s0.max())
        assert not np.allclose(acc.sum_iq, s1, rtol=1e-13, atol=0)   # not the exact kernel by another name
    assert acc.frames_seen == len(frames)


def test_threshold_ignores_low_counts():
    frames, index, eta, phi = random_frames()
    acc = MomentAccumulator(GEO, (2, 3), threshold=3, background=None, despeckle=False)
    acc.process_block(frames, index, eta, phi, NU, DELTA)
    kept = np.where(frames >= 3, frames, 0)
    s0, _, _ = numpy_sums(kept, index, eta, phi, (0, 48, 0, 64), np.zeros((48, 64), np.uint8))
    assert np.array_equal(acc.sum_i, s0)


def test_despeckle_drops_only_lone_single_counts():
    frames, index, eta, phi = random_frames(dtype=np.uint16)
    frames[frames.astype(bool) & (np.random.default_rng(2).random(frames.shape) < 0.7)] = 0  # sparse
    acc = MomentAccumulator(GEO, (2, 3), background=None, despeckle=True)
    acc.process_block(frames, index, eta, phi, NU, DELTA)
    padded = np.pad(frames.astype(bool), ((0, 0), (1, 1), (1, 1)))
    neighbours = sum(np.roll(np.roll(padded, dr, 1), dc, 2) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                     if (dr, dc) != (0, 0))[:, 1:-1, 1:-1]
    lone = (frames == 1) & (neighbours == 0)
    assert lone.sum() > 100  # the test exercises the rule
    kept = np.where(lone, 0, frames)
    s0, s1, _ = numpy_sums(kept, index, eta, phi, (0, 48, 0, 64), np.zeros((48, 64), np.uint8))
    assert np.array_equal(acc.sum_i, s0)
    assert np.allclose(acc.sum_iq, s1, rtol=1e-12)


def test_shuffled_order_and_split_merge_give_same_maps():
    frames, index, eta, phi = random_frames(n=120)
    roi = (10, 40, 20, 50)
    whole = MomentAccumulator(GEO, (2, 3), roi=roi)
    whole.process_block(frames, index, eta, phi, NU, DELTA)
    order = np.random.default_rng(5).permutation(len(frames))
    shuffled = MomentAccumulator(GEO, (2, 3), roi=roi)
    for i in order:  # one frame at a time, random order
        shuffled.process_frame(frames[i], index[i], eta[i], phi[i], NU, DELTA)
    a = MomentAccumulator(GEO, (2, 3), roi=roi)
    b = MomentAccumulator(GEO, (2, 3), roi=roi)
    a.process_block(frames[order[:50]], index[order[:50]], eta[order[:50]], phi[order[:50]], NU, DELTA)
    b.process_block(frames[order[50:]], index[order[50:]], eta[order[50:]], phi[order[50:]], NU, DELTA)
    a.merge(b)
    via_state = MomentAccumulator.from_state(GEO, (2, 3), a.state(), roi=roi)
    ref = whole.finalize()
    for other in (shuffled.finalize(), a.finalize(), via_state.finalize()):
        for name, arr in ref.arrays().items():
            # the width is a difference of two moments ~1e5 times larger than it, and the azimuth
            # the direction of a tilt ~1e-3 of |Q|: rounding grows by those factors
            rtol = 1e-8 if name in ("peak_width", "tilt_azimuth") else 1e-12
            assert np.allclose(getattr(other, name), arr, rtol=rtol, atol=0, equal_nan=True), name


def test_background_subtraction_recovers_peak_centre():
    """A flat background pulls a plain centre of mass toward the ROI centre; 'auto' removes it."""
    rng = np.random.default_rng(11)
    n = 400
    frames = np.zeros((n, 48, 64), np.uint32)
    frames[:, 5:9, 5:9] = rng.poisson(30, (n, 4, 4))  # peak off the ROI centre
    noisy = frames + rng.poisson(0.5, frames.shape).astype(np.uint32)
    index = np.zeros(n, int)
    eta = np.full(n, 19.0)
    roi = (0, 24, 0, 32)
    clean = MomentAccumulator(GEO, (1, 1), roi=roi, background=None, despeckle=False)
    clean.process_block(frames, index, eta, 0.0, NU, DELTA)
    plain = MomentAccumulator(GEO, (1, 1), roi=roi, background=None, despeckle=False)
    plain.process_block(noisy, index, eta, 0.0, NU, DELTA)
    auto = MomentAccumulator(GEO, (1, 1), roi=roi, background="auto", despeckle=False)
    auto.process_block(noisy, index, eta, 0.0, NU, DELTA)
    truth = clean.finalize().q[0, 0]
    err_plain = np.linalg.norm(plain.finalize().q[0, 0] - truth)
    err_auto = np.linalg.norm(auto.finalize().q[0, 0] - truth)
    assert abs(auto.background_rate() - 0.5) < 0.01
    assert err_auto < err_plain / 20


def test_bad_input_is_named():
    acc = MomentAccumulator(GEO, (2, 3))
    with pytest.raises(FrameShapeError, match="frame shape"):
        acc.process_frame(np.zeros((10, 10), np.uint32), 0, 19, 0, NU, DELTA)
    with pytest.raises(FrameShapeError, match="dtype"):
        acc.process_frame(np.zeros((48, 64), np.float32), 0, 19, 0, NU, DELTA)
    with pytest.raises(MapIndexError, match="map index 6"):
        acc.process_frame(np.zeros((48, 64), np.uint32), 6, 19, 0, NU, DELTA)
    with pytest.raises(OpmonError, match="non-finite"):
        acc.process_frame(np.zeros((48, 64), np.uint32), 0, np.nan, 0, NU, DELTA)
    with pytest.raises(OpmonError, match="ROI"):
        MomentAccumulator(GEO, (2, 3), roi=(0, 100, 0, 10))
    assert acc.frames_seen == 0  # nothing half-added


def test_bad_block_input_is_named_and_nothing_half_added():
    acc = MomentAccumulator(GEO, (2, 3))
    frames = np.zeros((3, 48, 64), np.uint32)
    with pytest.raises(MapIndexError, match="map index 6"):
        acc.process_block(frames, [0, 6, 1], 19.0, 0.0, NU, DELTA)
    with pytest.raises(MapIndexError, match="map index -1"):
        acc.process_block(frames, [0, -1, 1], 19.0, 0.0, NU, DELTA)
    with pytest.raises(OpmonError, match="non-finite"):
        acc.process_block(frames, [0, 1, 2], [19.0, np.inf, 19.0], 0.0, NU, DELTA)
    with pytest.raises(OpmonError, match="non-finite"):
        acc.process_block(frames, [0, 1, 2], 19.0, 0.0, NU, [DELTA, DELTA, np.nan])
    with pytest.raises(OpmonError, match="monitor reads nan on a frame of map pixel 1"):
        acc.process_block(frames, [0, 1, 2], 19.0, 0.0, NU, DELTA, [1.0, np.nan, 1.0])
    with pytest.raises(ValueError):                   # angles neither a scalar nor one per frame
        acc.process_block(frames, [0, 1, 2], [19.0, 19.5], 0.0, NU, DELTA)
    assert acc.frames_seen == 0 and not acc.angle_sums.any()
    acc.process_block(frames, [0, 1, 2], [19.0, 19.5, 20.0], 0.5, NU, [DELTA, DELTA + 1.0, DELTA + 2.0], 2.0)
    assert acc.frames_seen == 3
    assert acc.mean_angles() == pytest.approx((19.5, 0.5, NU, DELTA + 1.0))


@pytest.mark.parametrize("shape, dtype", [((47, 33), np.uint32), ((47, 35), np.uint16), ((10, 12), np.uint8)])
def test_rows_not_a_multiple_of_8_bytes_scan_per_pixel(shape, dtype):
    geo = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (20.0, 20.0), shape)
    frames = np.random.default_rng(0).poisson(0.3, (5,) + shape).astype(dtype)
    acc = MomentAccumulator(geo, (1, 1), background=None, despeckle=False)
    acc.process_block(frames, np.zeros(5, int), 19.0, 0.0, 30.0, 0.0)
    assert acc.sum_i[0] == frames.sum()
