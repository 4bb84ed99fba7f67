"""The powder-spot level's compiled filters equal scipy.ndimage's, bit for bit, so every spot found stays the same
(`processors/image_filters.py`: they replace scipy.ndimage on the search's path for its import time)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from opmon.processors.image_filters import gaussian_nearest, opening_reflect, upsample_bilinear

SHAPES = [(64, 80), (5, 7), (3, 40), (33, 2), (1, 9)]   # a binned frame, and images narrower than the kernels


def counts(shape, seed=1):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.uniform(0, 50, shape)).astype(float) * rng.uniform(0.5, 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_equals_scipy_mode_nearest(shape):
    image = counts(shape)
    stack = np.stack([image, image[::-1, ::-1]])
    for sigma in (0.5, 1.0, 3.0, 6.0):
        mine = gaussian_nearest(stack, sigma)
        for k in range(2):
            np.testing.assert_array_equal(mine[k], ndimage.gaussian_filter(stack[k], sigma, mode="nearest"))


@pytest.mark.parametrize("shape", SHAPES)
def test_opening_with_a_disc_equals_scipy_grey_opening(shape):
    image = counts(shape, seed=2)
    for radius in (1, 3, 6):
        disc = np.hypot(*np.indices((2 * radius + 1, 2 * radius + 1)) - radius) <= radius
        np.testing.assert_array_equal(opening_reflect(image[None], disc)[0], ndimage.grey_opening(image, footprint=disc))
    ell = np.zeros((3, 5), dtype=bool)                  # an asymmetric footprint: the dilation mirrors it
    ell[0, :] = ell[:, 4] = True
    np.testing.assert_array_equal(opening_reflect(image[None], ell)[0], ndimage.grey_opening(image, footprint=ell))


@pytest.mark.parametrize("shape", SHAPES)
def test_bilinear_upsampling_equals_scipy_map_coordinates(shape):
    image = counts(shape, seed=3)
    rows = np.clip((np.arange(2 * shape[0] + 1) - 0.5) / 2.0, 0, shape[0] - 1)
    cols = np.clip((np.arange(2 * shape[1]) - 0.5) / 2.0, 0, shape[1] - 1)
    expected = ndimage.map_coordinates(image, np.meshgrid(rows, cols, indexing="ij"), order=1, mode="nearest")
    np.testing.assert_array_equal(upsample_bilinear(image[None], rows, cols)[0], expected)


def test_wrong_shapes_are_refused_with_what_was_given():
    with pytest.raises(ValueError, match=r"\(n, rows, cols\)"):
        gaussian_nearest(np.zeros((4, 4)), 1.0)
    with pytest.raises(ValueError, match="odd-sized"):
        opening_reflect(np.zeros((1, 4, 4)), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="inside it"):
        upsample_bilinear(np.zeros((1, 4, 4)), np.array([4.5]), np.array([0.0]))
