"""The tilt colour wheel: hue = azimuth, saturation = altitude, masked pixels grey."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opmon.dashboard.colors import ColorMapError, pack_rgba, tilt_to_rgb, tilt_to_rgba, wheel_legend
from opmon.processors.colorwheel import MASKED_RGB, auto_max_altitude, hsv_to_rgb
from opmon.processors.colorwheel import tilt_rgb as processors_tilt_rgb


def test_primary_azimuths_at_full_altitude_are_primary_colours():
    azi = np.array([0.0, 120.0, 240.0, 60.0])
    rgb = tilt_to_rgb(np.ones(4), azi, max_altitude=1.0)
    assert rgb.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]


def test_zero_tilt_is_white_and_saturation_grows_with_altitude():
    rgb = tilt_to_rgb(np.array([0.0, 0.25, 0.5, 1.0, 3.0]), np.zeros(5), max_altitude=1.0).astype(int)
    assert rgb[0].tolist() == [255, 255, 255]
    assert (rgb[:, 0] == 255).all()                       # hue 0 keeps red at full value
    assert np.all(np.diff(rgb[:4, 1]) < 0)                # green and blue fall as altitude grows
    assert rgb[4].tolist() == rgb[3].tolist() == [255, 0, 0]   # clipped beyond max_altitude


def test_nan_and_mask_give_the_masked_grey():
    alt = np.array([[0.1, np.nan], [0.1, 0.1]])
    azi = np.array([[10.0, 10.0], [np.nan, 10.0]])
    mask = np.array([[1, 1], [1, 0]], dtype=np.uint8)
    rgb = tilt_to_rgb(alt, azi, 0.2, mask)
    assert tuple(rgb[0, 1]) == tuple(rgb[1, 0]) == tuple(rgb[1, 1]) == MASKED_RGB
    assert tuple(rgb[0, 0]) != MASKED_RGB


def test_auto_max_altitude_is_the_99th_percentile_and_ignores_nan():
    alt = np.concatenate([np.linspace(0, 1, 1000), [np.nan, 50.0]])
    assert auto_max_altitude(alt) == pytest.approx(np.nanpercentile(alt, 99))
    assert auto_max_altitude(np.full(3, np.nan)) == 1.0
    assert auto_max_altitude(np.zeros(3)) == 1.0


def test_matches_the_png_figures_colour_wheel():
    """The dashboard and `opmon plot` colour a tilt map identically, every pixel (masked and NaN too)."""
    rng = np.random.default_rng(1)
    alt, azi = rng.uniform(0, 0.6, (20, 30)), rng.uniform(0, 360, (20, 30))
    alt[rng.random(alt.shape) < 0.1] = np.nan              # NaN altitude
    azi[rng.random(azi.shape) < 0.1] = np.nan              # NaN azimuth
    mask = (rng.random(alt.shape) > 0.2).astype(np.uint8)  # below the intensity threshold: masked
    assert (mask == 0).any() and np.isnan(alt).any() and np.isnan(azi).any()
    ours = tilt_to_rgb(alt, azi, 0.5, mask).astype(float)
    # the figure gets the maps as processors write them: masked pixels already NaN
    theirs = np.rint(processors_tilt_rgb(np.where(mask == 1, alt, np.nan), np.where(mask == 1, azi, np.nan), 0.5) * 255)
    assert ours.shape == theirs.shape == (20, 30, 3)
    assert np.abs(ours - theirs).max() <= 1


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 359.99), st.floats(0, 1))
def test_hsv_agrees_with_the_standard_library(azimuth, fraction):
    r, g, b = hsv_to_rgb(azimuth / 360.0, fraction, 1.0)
    assert (r, g, b) == pytest.approx(colorsys.hsv_to_rgb(azimuth / 360.0, fraction, 1.0), abs=1e-12)


def test_bad_input_names_the_problem():
    with pytest.raises(ColorMapError, match="shape"):
        tilt_to_rgb(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ColorMapError, match="max_altitude"):
        tilt_to_rgb(np.zeros(2), np.zeros(2), max_altitude=-1.0)
    with pytest.raises(ColorMapError, match="mask shape"):
        tilt_to_rgb(np.zeros(2), np.zeros(2), 1.0, np.ones(3))


def test_rgba_packing_is_what_bokeh_image_rgba_reads():
    rgb = np.array([[[1, 2, 3]]], dtype=np.uint8)
    packed = pack_rgba(rgb)
    assert packed.dtype == np.uint32 and packed.shape == (1, 1)
    assert packed.view(np.uint8).ravel().tolist() == [1, 2, 3, 255]
    assert tilt_to_rgba(np.zeros((3, 4)), np.zeros((3, 4))).shape == (3, 4)


def test_wheel_legend_puts_azimuth_around_and_altitude_outward():
    img = wheel_legend(101).view(np.uint8).reshape(101, 101, 4)
    c = 50
    assert img[c, c, :3].tolist() == [255, 255, 255]            # centre: no tilt
    assert img[c, 100, :3].tolist() == [255, 0, 0]              # +x edge: azimuth 0
    assert img[100, c, :3].tolist() == [128, 255, 0]           # +y (top row): azimuth 90
    assert img[0, 0, 3] == 0                                    # outside the disc: transparent
