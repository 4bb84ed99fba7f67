"""Stream V2 decoding against messages a real detector sent: the start and image messages an
EIGER2 Si 16M recorded (shipped in tickit-devices), decoded as DECTRIS's own client does."""
from __future__ import annotations

from pathlib import Path

import cbor2
import numpy as np
import pytest
from dectris.compression import decompress

from opmon.streaming.archive.frames import decode_bslz4
from opmon.streaming.dectris.codec import frame_chunk, loads, to_ndarray
from opmon.streaming.dectris.series import parse_start

tickit_eiger = pytest.importorskip("tickit_devices.eiger")
RECORDED = Path(tickit_eiger.__file__).parent / "data" / "stream2"


def test_a_recorded_eiger2_start_gives_its_geometry_and_channel():
    series = parse_start(loads((RECORDED / "start.cbor").read_bytes()))
    assert (series.series_id, series.n_images, series.frame_shape) == (15614, 1, (4362, 4148))
    assert series.beam_center == pytest.approx((2163.621048575148, 2049.3840906675064))
    assert series.pixel_size_m == (7.5e-05, 7.5e-05) and series.distance_m == pytest.approx(0.23715919962215962)
    assert series.energy_ev == pytest.approx(13500.299829398293)
    assert (series.channel, series.threshold_ev, series.saturation) == ("threshold_1", pytest.approx(6750.149914699146), 21517)
    index, angles, _, _ = series.image_point(0)        # goniometer: omega 0 (+0.1/image) is eta, phi 0
    assert index == 0 and angles == {"eta": 0.0, "phi": 0.0, "nu": 0.0, "delta": 0.0}


def test_a_recorded_eiger2_image_decodes_as_dectris_documents_and_keeps_its_bslz4_chunk():
    raw = (RECORDED / "image.cbor").read_bytes()
    message = loads(raw)
    assert (message["type"], message["image_id"], message["real_time"]) == ("image", 0, [215873, 50000000])
    value = message["data"]["threshold_1"]
    frame = to_ndarray(value, "threshold_1")
    # DECTRIS's documented client: plain cbor2, then dectris-compression on the tag 56500 bytes
    dims, typed = cbor2.loads(raw)["data"]["threshold_1"].value
    algorithm, elem_size, data = typed.value.value
    expected = np.frombuffer(decompress(data, algorithm, elem_size=elem_size), "<u2").reshape(dims)
    np.testing.assert_array_equal(frame, expected)
    assert frame.shape == (4362, 4148) and frame.dtype == np.uint16 and frame.any()
    chunk = frame_chunk(value)
    assert chunk == data
    # what the archive stores as it arrived is what opmon's bounds-checked reader decodes
    out = np.empty(frame.nbytes, np.uint8)
    assert decode_bslz4(np.frombuffer(chunk, np.uint8), out, 2) == 0
    np.testing.assert_array_equal(out.view("<u2").reshape(frame.shape), frame)
