"""The fast kernel's segment search (`kernels_rows.row_polynomials`) tries each segment count on a
few probe rows before the whole ROI: the same answer as trying every count on every row, with one
whole-ROI fit (a 16M-pixel detector's ROI took a minute of fits before)."""
import numpy as np
import pytest

from opmon.processors import kernels_rows
from opmon.processors.geometry import DetectorGeometry, pixel_q_lab_window


def every_count_on_every_row(q: np.ndarray) -> "kernels_rows.RowPolynomials | None":
    """The plain search: the first segment count whose fit over the whole ROI meets REL_TOL."""
    width = q.shape[1]
    for nseg in range(1, width // kernels_rows.MIN_SEGMENT + 1):
        poly = kernels_rows._fit(q, (np.arange(nseg + 1) * width) // nseg)
        if poly.residual <= kernels_rows.REL_TOL:
            return poly
    return None


@pytest.fixture
def whole_roi_fits(monkeypatch):
    """Counts the fits `row_polynomials` makes over every row of a ROI (`rows` set by the test)."""
    fit, seen = kernels_rows._fit, {"rows": 0, "fits": 0}

    def counted(q, bounds):
        seen["fits"] += q.shape[0] == seen["rows"]
        return fit(q, bounds)
    monkeypatch.setattr(kernels_rows, "_fit", counted)
    return seen


def test_the_search_finds_the_plain_searchs_segments_with_one_whole_roi_fit(whole_roi_fits):
    geometry = DetectorGeometry(10000.0, 0.5, (75e-6, 75e-6), (60.0, 300.0), (120, 600))
    q = pixel_q_lab_window(geometry, 0.0, 20.0, (0, 120, 0, 600))
    expected = every_count_on_every_row(q)
    assert expected is not None and expected.bounds.size > 3          # several counts missed first
    whole_roi_fits["rows"], whole_roi_fits["fits"] = 120, 0
    poly = kernels_rows.row_polynomials(q)
    assert whole_roi_fits["fits"] == 1
    np.testing.assert_array_equal(poly.bounds, expected.bounds)
    np.testing.assert_array_equal(poly.quad, expected.quad)
    assert poly.residual == expected.residual


def test_a_geometry_no_segments_fit_is_told_from_the_probe_rows_alone(whole_roi_fits):
    close = DetectorGeometry(10000.0, 0.02, (5e-4, 5e-4), (40.0, 32.0), (80, 64))   # q bends too much for any quadratic
    q = pixel_q_lab_window(close, 2.0, 35.0, (0, 80, 0, 64))
    assert every_count_on_every_row(q) is None
    whole_roi_fits["rows"], whole_roi_fits["fits"] = 80, 0
    assert kernels_rows.row_polynomials(q) is None
    assert whole_roi_fits["fits"] == 0
