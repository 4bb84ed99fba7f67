"""The one map-message codec: what the live processor sends, every reader decodes, and its limits."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.processors.maps import MapResult
from opmon.streaming.map_messages import MAX_MAP_SIDE, decode_map, encode_map
from opmon.streaming.protocol import RejectedMessage, pack, unpack


def _maps(ny: int = 3, nx: int = 4) -> MapResult:
    rng = np.random.default_rng(1)
    return MapResult(d_spacing=rng.uniform(2.0, 2.1, (ny, nx)), tilt_altitude=rng.normal(0, 0.1, (ny, nx)),
                     tilt_azimuth=rng.uniform(-180, 180, (ny, nx)), intensity=rng.uniform(1, 9, (ny, nx)),
                     peak_width=rng.uniform(0.001, 0.002, (ny, nx)), q=rng.normal(0, 1, (ny, nx, 3)),
                     mask=np.ones((ny, nx), np.uint8), mean_q=np.array([0.0, 0.1, 3.08]),
                     frames=np.full((ny, nx), 7, np.int64), background=0.002)


def _encode(maps: MapResult) -> tuple[dict, list[bytes]]:
    parts = encode_map(maps, run="r1", map_number=2, final=True, frames=84, n_frames=84, frames_lost=0,
                       options={"roi": [0, 8, 0, 8]})
    return unpack(parts[1]), [np.ascontiguousarray(p).tobytes() for p in parts[2:]]


def test_round_trip_gives_back_every_array():
    maps = _maps()
    header, buffers = _encode(maps)
    arrays = decode_map(header, buffers)
    back = MapResult.from_arrays(arrays, header["background"])
    for name, array in maps.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), array)
        assert getattr(back, name).dtype == array.dtype
    assert back.background == 0.002 and header["d_mean"] == pytest.approx(maps.d_spacing.mean())


@pytest.mark.parametrize("dtype", ["float32", "uint16", "int32", ">f8", "object"])
def test_dtypes_outside_the_whitelist_are_rejected(dtype):
    header, buffers = _encode(_maps())
    header["fields"][0]["dtype"] = dtype
    with pytest.raises(RejectedMessage, match="dtype") as err:
        decode_map(header, buffers)
    assert err.value.reason == "dtype"


def test_a_side_beyond_the_limit_is_rejected_before_the_buffer_is_read():
    header, buffers = _encode(_maps())
    header["fields"][0]["shape"] = [MAX_MAP_SIDE + 1, 1]
    with pytest.raises(RejectedMessage) as err:
        decode_map(header, buffers)
    assert err.value.reason == "shape"


@pytest.mark.parametrize("key, value", [("map", -1), ("frames", 1.5), ("frames_lost", True), ("t", float("nan")),
                                        ("background", "x"), ("options", [1]), ("run", None)])
def test_bad_header_values_are_named(key, value):
    header, buffers = _encode(_maps())
    header[key] = value
    with pytest.raises(RejectedMessage, match=key) as err:
        decode_map(unpack(pack(header)), buffers)
    assert err.value.reason == "field"


def test_missing_or_misshapen_fields_are_rejected():
    header, buffers = _encode(_maps())
    q = [f["name"] for f in header["fields"]].index("q")
    without_q = {**header, "fields": header["fields"][:q] + header["fields"][q + 1:]}
    with pytest.raises(RejectedMessage, match="lacks field"):
        decode_map(without_q, buffers[:q] + buffers[q + 1:])
    header["fields"][q]["shape"] = [4, 3, 3]            # same byte count, transposed map
    with pytest.raises(RejectedMessage, match="do not fit"):
        decode_map(header, buffers)
    header, buffers = _encode(_maps())
    with pytest.raises(RejectedMessage, match="bytes") as err:
        decode_map(header, buffers[:1] + [buffers[1][:-8]] + buffers[2:])
    assert err.value.reason == "size"


def test_the_header_carries_the_integrated_intensity_and_the_valid_fraction():
    """Watchers that read headers only (phase tracking) get Σ I and the share of valid pixels."""
    maps = _maps()
    maps.intensity[0, 0] = np.nan          # a pixel with no frames yet
    maps.mask[1, :] = 0
    header, _ = _encode(maps)
    assert header["intensity_sum"] == pytest.approx(np.nansum(maps.intensity))
    assert header["valid_fraction"] == pytest.approx(8 / 12)


def test_a_peak_fit_travels_as_optional_fields_that_plain_readers_ignore():
    from opmon.streaming.archive.maps_file import FitArrays
    from opmon.streaming.map_messages import decode_fit

    maps = _maps()
    fit = FitArrays({"d_spacing": maps.d_spacing + 1e-4, "reduced_chi2": np.ones((3, 4)), "q": maps.q * 1.01},
                    "gauss", "what NaN means")
    parts = encode_map(maps, run="r1", map_number=2, final=True, frames=84, n_frames=84, frames_lost=0, fit=fit)
    header, buffers = unpack(parts[1]), [np.ascontiguousarray(p).tobytes() for p in parts[2:]]
    arrays = decode_map(header, buffers)
    back = decode_fit(header, arrays)
    assert back is not None and back[1:] == ("gauss", "what NaN means")
    for name, array in fit.arrays.items():
        np.testing.assert_array_equal(back[0][name], array)
    plain = MapResult.from_arrays(arrays, header["background"])      # what the dashboard makes of it
    np.testing.assert_array_equal(plain.d_spacing, maps.d_spacing)
    assert decode_fit(*_encode(maps)[:1], decode_map(*_encode(maps))) is None       # not fitted: no fit
    bad = dict(header, fields=[dict(f, shape=[4, 3]) if f["name"] == "fit/reduced_chi2" else f for f in header["fields"]])
    with pytest.raises(RejectedMessage, match="fit field shapes"):
        decode_fit(bad, decode_map(bad, buffers))
    with pytest.raises(RejectedMessage, match="header fit"):
        decode_fit({k: v for k, v in header.items() if k != "fit"}, arrays)
