"""Map messages of docs/protocol.md: a MapResult on the wire and into the archive.

The live processor sends the same `[b"map", header, *buffers]` message to the lossy display
channel (partial and final maps) and to the archiver's lossless maps channel (final maps);
the archiver decodes it (`opmon.streaming.archive.final_maps`) and writes the maps layout of
`opmon process`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from opmon.processors.maps import MapResult
from opmon.streaming import protocol as P
from opmon.streaming.archive.final_maps import decode_map_arrays

TOPIC = b"map"
FIELD_ORDER = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask", "q", "mean_q", "frames")


def encode_map(result: MapResult, *, run: str, map_number: int, final: bool, frames: int, n_frames: int,
               frames_lost: int, options: dict[str, Any] | None = None) -> list[Any]:
    """`[b"map", header, *buffers]` for one (partial or final) map."""
    arrays = result.arrays()
    names = [n for n in FIELD_ORDER if n in arrays] + [n for n in arrays if n not in FIELD_ORDER]
    valid = result.valid_d()
    header = {"v": P.VERSION, "kind": "map", "run": run, "map": int(map_number), "final": bool(final),
              "frames": int(frames), "n_frames": int(n_frames), "frames_lost": int(frames_lost), "t": time.time(),
              "map_shape": list(result.shape), "mean_q": [float(v) for v in result.mean_q],
              "d_mean": float(valid.mean()) if valid.size else None, "d_std": float(valid.std()) if valid.size else None,
              "background": float(result.background), "options": options or {},
              "fields": [{"name": n, "dtype": str(arrays[n].dtype), "shape": list(arrays[n].shape)} for n in names]}
    return [TOPIC, P.pack(header)] + [np.ascontiguousarray(arrays[n]) for n in names]


def decode_map(header: dict[str, Any], buffers: list[Any]) -> MapResult:
    """Rebuild the MapResult of a map message, checking every buffer against its field entry."""
    return MapResult.from_maps(decode_map_arrays(header, buffers))
