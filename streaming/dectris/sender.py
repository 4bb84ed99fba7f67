"""A stream V2 sender: frames out as a DECTRIS detector control unit sends them.

For tests, benchmarks and demonstrations without a detector: it binds a PUSH socket (the
detector's side, port 31001 on a real DCU) and sends start, image and end messages built
with `codec`. Compression uses the HDF5 filters themselves (hdf5plugin's bitshuffle/LZ4 and
LZ4, on an in-memory file), whose chunk layout is by definition what stream V2's "bslz4" and
"lz4" carry (DECTRIS cbor/dectris-compression-tag.md), so no second encoder is written here.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt
import zmq

from opmon.streaming.dectris.codec import Compressed, dumps, multi_dim_array

_FILTERS = {"bslz4": lambda n: hdf5plugin.Bitshuffle(nelems=n, cname="lz4"), "lz4": lambda n: hdf5plugin.LZ4()}


def compress(frame: npt.NDArray[Any], algorithm: str = "bslz4", block_elems: int = 0) -> Compressed:
    """`frame` compressed as a detector does it, through the HDF5 filter of that name
    (`block_elems`: bitshuffle's block, 0 = the filter's default of 8 kB)."""
    frame = np.ascontiguousarray(frame)
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("d", data=frame[None], chunks=(1,) + frame.shape, **_FILTERS[algorithm](block_elems))
        _mask, data = ds.id.read_direct_chunk((0,) * (frame.ndim + 1))
    return Compressed(algorithm, frame.dtype.itemsize if algorithm == "bslz4" else 0, bytes(data))


def start_message(series_id: int, *, frame_shape: tuple[int, int], dtype: npt.DTypeLike, n_images: int,
                  channels: Sequence[str] = ("threshold_1",), energy_ev: float = 9000.0, distance_m: float = 0.5,
                  pixel_size_m: float = 55e-6, beam_center: tuple[float, float] = (0.0, 0.0),
                  masks: dict[str, npt.NDArray[Any]] | None = None, user_data: Any = None,
                  goniometer: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """A start message (beam centre as (row, column) pixels; one threshold per channel)."""
    rows, cols = frame_shape
    bits = np.dtype(dtype).itemsize * 8
    message: dict[str, Any] = {
        "type": "start", "series_id": series_id, "series_unique_id": f"OPMON{series_id:021d}",
        "number_of_images": n_images, "image_size_x": cols, "image_size_y": rows,
        "pixel_size_x": pixel_size_m, "pixel_size_y": pixel_size_m,
        "beam_center_x": float(beam_center[1]), "beam_center_y": float(beam_center[0]),
        "detector_translation": [beam_center[1] * pixel_size_m, beam_center[0] * pixel_size_m, -distance_m],
        "incident_energy": energy_ev, "incident_wavelength": 12398.419843320026 / energy_ev,
        "channels": list(channels), "threshold_energy": {c: energy_ev / (2 + i) for i, c in enumerate(channels)},
        "saturation_value": (1 << bits) - 2, "image_dtype": str(np.dtype(dtype)),
        "goniometer": goniometer or {"omega": {"start": 0.0, "increment": 0.0}},
    }
    if masks:
        message["pixel_mask"] = {c: multi_dim_array(np.asarray(m, dtype="<u4")) for c, m in masks.items()}
    if user_data is not None:
        message["user_data"] = user_data
    return message


def image_message(series_id: int, image_id: int, channels: dict[str, npt.NDArray[Any]],
                  algorithm: str | None = "bslz4", block_elems: int = 0) -> dict[str, Any]:
    """An image message holding every channel's frame (compressed unless `algorithm` is None)."""
    data = {c: multi_dim_array(f, None if algorithm is None else compress(f, algorithm, block_elems))
            for c, f in channels.items()}
    return {"type": "image", "series_id": series_id, "series_unique_id": f"OPMON{series_id:021d}",
            "image_id": image_id, "start_time": [image_id, 1000], "stop_time": [image_id + 1, 1000],
            "real_time": [1, 1000], "data": data}


def end_message(series_id: int) -> dict[str, Any]:
    return {"type": "end", "series_id": series_id, "series_unique_id": f"OPMON{series_id:021d}"}


class StreamV2Sender:
    """The detector's end of stream V2: a bound PUSH socket sending encoded messages in order."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", *, sndhwm: int = 1000, context: zmq.Context | None = None,
                 send_timeout_s: float = 30.0) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        self.socket.setsockopt(zmq.LINGER, int(send_timeout_s * 1000))
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, message: dict[str, Any] | bytes) -> None:
        """Send one message (a dict is CBOR-encoded first; bytes go as they are)."""
        self.socket.send(message if isinstance(message, bytes) else dumps(message), copy=False)

    def close(self) -> None:
        self.socket.close()
