"""Today's accumulator kernel gives, bit for bit, the sums of the kernel it replaced
(tests/processors/previous_kernels.py) on the same frames: every dtype, odd row lengths, ROIs
off the 16-pixel pieces, masks, thresholds, despeckle on and off, frames at the detector's
edges, several detector positions in one block, and the one-frame live path."""
import numpy as np
import pytest

from opmon.processors.accumulate import BACKGROUND_ROW_STRIDE, MomentAccumulator
from opmon.processors.accumulate import MOMENT_KEYS as STATE_KEYS  # the moment sums; the added sums have no previous kernel
from opmon.processors.geometry import DetectorGeometry
from tests.processors import previous_kernels as previous


def previous_sums(acc: MomentAccumulator, frames, index, eta, phi, nu, delta) -> dict[str, np.ndarray]:
    """The sums the previous kernel adds for these frames (per frame: moments, then rotate and add)."""
    sums = {key: np.zeros_like(value) for key, value in acc.state().items()}
    r0, r1, c0, c1 = acc.roi
    moments = np.zeros((1, 11))
    for f in range(len(frames)):
        acc._use_detector_angles(float(nu[f]), float(delta[f]))
        previous.frame_moments(frames[f], acc._q_lab, acc.detector_mask, r0, r1, c0, c1, acc.threshold, acc.despeckle,
                               BACKGROUND_ROW_STRIDE, moments[0])
        previous.add_block(moments, eta[f:f + 1], phi[f:f + 1], index[f:f + 1], acc._roi_moments,
                           *(sums[key] for key in STATE_KEYS))
    return sums


def frames_with_peaks(n, shape, dtype, seed):
    """Sparse background plus a peak that wanders up to the frame's edges (despeckle's border cases)."""
    rng = np.random.default_rng(seed)
    frames = (rng.random((n,) + shape) < 3e-3).astype(dtype)
    for f in range(n):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        frames[f, max(r - 3, 0):r + 4, max(c - 3, 0):c + 4] += rng.poisson(2.0, (7, 7))[:min(r + 4, shape[0]) - max(r - 3, 0),
                                                                                       :min(c + 4, shape[1]) - max(c - 3, 0)].astype(dtype)
    return frames


@pytest.mark.parametrize("shape, dtype, roi", [
    ((48, 64), np.uint32, None),
    ((48, 64), np.uint16, (5, 41, 3, 60)),        # ROI off the 16-pixel pieces
    ((47, 35), np.uint16, (0, 47, 17, 35)),       # rows not a multiple of 8 bytes; ROI at the right edge
    ((70, 33), np.uint32, (33, 70, 0, 20)),       # sampled rows above, through and below the ROI
    ((10, 12), np.uint8, (2, 9, 1, 11)),
])
@pytest.mark.parametrize("threshold, despeckle", [(0, True), (0, False), (2, True)])
def test_sums_are_bit_identical_to_the_previous_kernel(shape, dtype, roi, threshold, despeckle):
    n = 40
    frames = frames_with_peaks(n, shape, dtype, seed=shape[0] + threshold)
    geometry = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (shape[0] / 2 + 3.5, shape[1] / 2 - 4.0), shape)
    mask = (np.random.default_rng(3).random(shape) < 0.02).astype(np.uint8)
    rng = np.random.default_rng(4)
    index, eta, phi = rng.integers(0, 6, n), rng.uniform(18.0, 20.0, n), rng.uniform(-1.0, 1.0, n)
    nu = np.where(np.arange(n) < n // 2, 2.0, 2.5)          # the detector moves once within the block
    delta = np.full(n, 35.0)
    options = dict(roi=roi, detector_mask=mask, threshold=threshold, despeckle=despeckle, exact_kernel=True)
    block = MomentAccumulator(geometry, (2, 3), **options)
    block.process_block(frames, index, eta, phi, nu, delta)
    one_by_one = MomentAccumulator(geometry, (2, 3), **options)
    for f in range(n):
        one_by_one.process_frame(frames[f], int(index[f]), eta[f], phi[f], nu[f], delta[f])
    expected = previous_sums(MomentAccumulator(geometry, (2, 3), **options), frames, index, eta, phi, nu, delta)
    assert expected["sum_i"].sum() > 0
    assert roi is None or expected["bg_counts"].sum() > 0   # counts outside the ROI are summed too
    for key in STATE_KEYS:
        np.testing.assert_array_equal(block.state()[key], expected[key], err_msg=f"process_block {key}")
        np.testing.assert_array_equal(one_by_one.state()[key], expected[key], err_msg=f"process_frame {key}")
