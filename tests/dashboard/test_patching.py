"""Row-range patches: only what changed goes to the browser."""
from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource

from opmon.dashboard.patching import changed_rows, flat_rows_patch, image_row_patch, robust_range


def test_changed_rows_finds_the_filled_band_and_treats_nan_as_equal():
    old = np.full((6, 4), np.nan)
    new = old.copy()
    assert changed_rows(old, new) is None
    new[2:4] = 1.0
    assert changed_rows(old, new) == (2, 4)
    assert changed_rows(None, new) == (0, 6)
    assert changed_rows(np.zeros((3, 4)), new) == (0, 6)     # new shape: everything


def test_changed_rows_on_integer_images():
    old = np.zeros((5, 3), dtype=np.uint32)
    new = old.copy()
    new[4, 1] = 7
    assert changed_rows(old, new) == (4, 5)


def test_image_row_patch_applies_to_a_real_source():
    img = np.zeros((4, 3))
    src = ColumnDataSource({"image": [img.copy()]})
    new = img.copy()
    new[1:3] = np.arange(6).reshape(2, 3)
    patch = image_row_patch("image", new, (1, 3))
    (index, values), = patch["image"]
    assert values.ndim == 1 and values.size == 6               # Bokeh wants flat values
    src.patch(patch)                                           # Bokeh accepts it ...
    np.testing.assert_array_equal(src.data["image"][0], new)  # ... and the result is the new image


def test_flat_rows_patch_covers_the_rows_pixels():
    src = ColumnDataSource({"x": np.zeros(12)})
    new = np.arange(12.0)
    src.patch(flat_rows_patch("x", new, (1, 2), width=4))
    np.testing.assert_array_equal(src.data["x"], [0, 0, 0, 0, 4, 5, 6, 7, 0, 0, 0, 0])


def test_robust_range():
    assert robust_range(np.full(3, np.nan)) is None
    lo, hi = robust_range(np.array([2.0, 2.0]))
    assert lo < 2.0 < hi
    v = np.concatenate([np.linspace(0, 1, 1001), [1e6]])
    assert robust_range(v, 0, 99)[1] < 2
