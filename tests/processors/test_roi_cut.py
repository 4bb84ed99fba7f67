"""The peak fit's ROI-truncation correction: truncated-normal moments inverted, and a cut peak's d and
width brought back towards those of the same peak seen whole."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.stats import truncnorm

from opmon.processors.eta_scans import EtaScanAccumulator
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.processors.roi_cut import MAX_STRETCH, invert_truncnorm, truncnorm_moments
from opmon.streaming.archive.raw import RawMapWriter

from tests.processors.conftest import FRAME, GEOMETRY, MAP, synthetic_map


def test_truncated_normal_moments_and_their_inversion_match_scipy():
    mu = np.array([0.0, 1.0, 2.0, 3.5, 0.5, 10.0])
    sigma = np.array([2.0, 2.0, 1.5, 2.0, 1.0, 1.0])
    a = np.array([1.0, -np.inf, 0.0, 0.0, -1.0, 0.0])          # one-sided, two-sided, and a peak the window holds
    b = np.array([np.inf, 2.0, np.inf, 5.0, 1.5, 20.0])
    mean, var = truncnorm.stats((a - mu) / sigma, (b - mu) / sigma, loc=mu, scale=sigma, moments="mv")
    ours = truncnorm_moments(mu, sigma, a, b)
    np.testing.assert_allclose(ours, (mean, var), rtol=1e-12, atol=1e-12)
    back_mu, back_sigma, ok = invert_truncnorm(mean, np.sqrt(var), a, b)
    assert ok.all()
    np.testing.assert_allclose(back_mu, mu, atol=1e-6)
    np.testing.assert_allclose(back_sigma, sigma, rtol=1e-6)
    deep = truncnorm.stats(-1.0 / 3.0, 2.0 / 3.0, loc=-1.0, scale=3.0, moments="mv")    # 3.5 measured widths wide
    assert not invert_truncnorm(deep[0], np.sqrt(deep[1]), -2.0, 1.0)[2]            # > MAX_STRETCH: left as measured
    assert np.sqrt(truncnorm_moments(-1.0, 3.0, -2.0, 1.0)[1]) * MAX_STRETCH < 3.0


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
    frames = synthetic_map(0)
    path = tmp_path_factory.mktemp("roi_cut") / "raw.h5"
    with h5py.File(path, "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP, **GEOMETRY)
        writer.append(np.stack([fr for fr, _, _ in frames]), [p for _, p, _ in frames], [e for _, _, e in frames],
                      0.0, 0.0, 30.0)
    return path


def fitted(raw, roi):
    with h5py.File(raw, "r") as f:
        result, _ = process_entry(f["entry"], ProcessOptions(roi=roi, peak_fit="gauss", find_bad_pixels=False))
    return result


@pytest.mark.parametrize("roi, name", [((4, 20, 8, 40), "d_spacing"), ((4, 36, 8, 23), "peak_width")],
                         ids=["rows cut: d", "columns cut: width"])
def test_a_window_cutting_the_peak_is_corrected_towards_the_whole_peak(synthetic_raw, monkeypatch, roi, name):
    """The spot (σ 2 px, rows ~18-21, columns ~22-24) cut at its centre + ~0.5 σ: rows (d moves with them)
    or columns (a tilt direction: d barely moves, the width does). Errors against the same map fitted
    through a window holding the whole spot, with the correction off and on."""
    whole = fitted(synthetic_raw, (4, 36, 8, 40)).fit
    after = fitted(synthetic_raw, roi)
    cut = (after.flags & 1) > 0
    assert cut.all()
    assert (after.fit.edge_shift[cut] > 0.2).all() and np.all(whole.edge_shift == 0.0)
    monkeypatch.setattr(EtaScanAccumulator, "_edge_cut", lambda self, result: None)
    before = fitted(synthetic_raw, roi)

    def error(result):
        return float(np.median(np.abs(getattr(result.fit, name) / getattr(whole, name) - 1)[cut]))
    print(f"{name}: median relative error before {error(before):.2e}, after {error(after):.2e}")
    assert error(after) < 0.6 * error(before)
