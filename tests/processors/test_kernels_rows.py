"""The fast kernel (kernels_rows: q as a fitted quadratic along row segments) against the exact
per-pixel kernel: the same sums to the fit's tolerance, whatever the dtype, ROI, mask, monitor
or detector moves; the live (one frame) and block paths identical; the exact kernel wherever a
per-pixel rule or a poor fit needs it."""
import numpy as np
import pytest

from opmon.processors.accumulate import STATE_KEYS, MomentAccumulator
from opmon.processors.geometry import DetectorGeometry, pixel_q_lab_window
from opmon.processors.kernels_rows import REL_TOL, row_polynomials
from tests.processors.test_kernels import frames_with_peaks


def sums(acc: MomentAccumulator) -> dict[str, np.ndarray]:
    return {key: value.copy() for key, value in acc.state().items()}


@pytest.mark.parametrize("shape, dtype, roi", [
    ((48, 64), np.uint32, None),
    ((47, 35), np.uint16, (0, 47, 17, 35)),       # odd widths; ROI at the right edge
    ((70, 40), np.uint32, (33, 70, 0, 20)),       # sampled rows above, through and below the ROI (uint32 and uint16:
                                                  # the types setup.sh compiles; uint8 would compile here, ~10 s)
])
def test_fast_sums_match_the_exact_kernel_to_the_fit_tolerance(shape, dtype, roi):
    n = 30
    frames = frames_with_peaks(n, shape, dtype, seed=shape[0])
    frames[:, 5:9, 3:30:7] = 1                                       # counts on masked pixels are dropped
    geometry = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (shape[0] / 2 + 3.5, shape[1] / 2 - 4.0), shape)
    mask = np.zeros(shape, np.uint8)
    mask[5:9, 3:30:7] = 1
    rng = np.random.default_rng(4)
    index, eta, phi = rng.integers(0, 6, n), rng.uniform(18.0, 20.0, n), rng.uniform(-1.0, 1.0, n)
    nu = np.where(np.arange(n) < n // 2, 2.0, 2.5)                   # the detector moves once within the block
    monitor = rng.uniform(0.5, 2.0, n)
    fast, exact, live = (MomentAccumulator(geometry, (2, 3), roi=roi, detector_mask=mask, exact_kernel=e)
                         for e in (False, True, False))
    for acc in (fast, exact):
        acc.process_block(frames, index, eta, phi, nu, 35.0, monitor)
    for f in range(n):
        live.process_frame(frames[f], int(index[f]), eta[f], phi[f], nu[f], 35.0, monitor[f])
    assert fast._fast is not None and exact._fast is None
    a, b, c = sums(fast), sums(exact), sums(live)
    for key in STATE_KEYS:     # (the angle sums are added up in Python on the live path: not the kernels')
        np.testing.assert_array_equal(c[key], a[key], err_msg=f"live and block paths differ in {key}")
    for key in ("sum_i", "n_frames", "bg_counts", "bg_image", "pixel_sums"):   # counts (over the monitor): no q in them
        np.testing.assert_allclose(a[key], b[key], rtol=1e-13, atol=0, err_msg=key)
    q = np.sqrt(np.abs(b["sum_iqq"]).max() / np.abs(b["sum_i"]).max())
    for key, scale in (("sum_iq", q), ("sum_iqq", 2 * q * q)):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=REL_TOL * scale * np.abs(b["sum_i"]).max(), err_msg=key)
    fm, em = fast.finalize(partial=True), exact.finalize(partial=True)
    np.testing.assert_array_equal(fm.mask, em.mask)
    np.testing.assert_allclose(fm.d_spacing, em.d_spacing, rtol=REL_TOL, equal_nan=True)


def test_the_fit_reproduces_q_within_its_stated_residual():
    geometry = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (256.0, 256.0), (512, 512))
    q = pixel_q_lab_window(geometry, 1.0, 35.0, (0, 512, 0, 512))
    poly = row_polynomials(q)
    assert poly is not None and poly.bounds.size > 2          # one quadratic cannot span a 512-pixel row
    assert poly.residual <= REL_TOL
    row, g = 300, 1
    lo, hi = poly.bounds[g], poly.bounds[g + 1]
    c = np.arange(hi - lo) - (hi - lo) // 2
    fitted = np.stack([poly.quad[row, g, a] @ np.vstack([np.ones_like(c), c, c * c]) for a in range(3)], axis=-1)
    error = np.linalg.norm(fitted - q[row, lo:hi], axis=-1) / np.linalg.norm(q[row, lo:hi], axis=-1)
    assert error.max() <= poly.residual * (1 + 1e-6)
    assert error.max() > 0                                    # a fit, not the table itself


def test_per_pixel_rules_and_poor_fits_use_the_exact_kernel():
    geometry = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (24.0, 32.0), (48, 64))
    frames = np.ones((1, 48, 64), np.uint16)
    for options in (dict(threshold=2), dict(despeckle=True), dict(exact_kernel=True)):
        acc = MomentAccumulator(geometry, (1, 1), **options)
        acc.process_block(frames, [0], [19.0], 0.0, 2.0, 35.0)
        assert acc._fast is None, options
    # 0.5 mm pixels 2 cm from the sample: q bends too much across a pixel row for any quadratic within REL_TOL
    close = DetectorGeometry(10000.0, 0.02, (5e-4, 5e-4), (24.0, 32.0), (48, 64))
    acc = MomentAccumulator(close, (1, 1))
    acc.process_block(frames, [0], [19.0], 0.0, 2.0, 35.0)
    assert acc._fast is None
    exact = MomentAccumulator(close, (1, 1), exact_kernel=True)
    exact.process_block(frames, [0], [19.0], 0.0, 2.0, 35.0)
    np.testing.assert_array_equal(acc.sum_iq, exact.sum_iq)
