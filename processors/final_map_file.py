"""The archiver's maps hook: a final map message becomes ``/entry/maps`` of FORMATS.md.

The archiver receives final maps on its lossless maps channel and hands each message to this
hook, which decodes it with the one map codec (`opmon.streaming.map_messages`) and writes it
with the same layout code as `opmon process`, so archived and offline maps match.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opmon.processors.mapfile import write_maps
from opmon.processors.maps import MapResult
from opmon.streaming.map_messages import decode_map


def write_map_file(path: Path, header: dict[str, Any], buffers: list[Any]) -> None:
    """Write a final map message as ``/entry/maps`` (FORMATS.md) at `path`.

    Raises
    ------
    RejectedMessage
        When the message breaks docs/protocol.md (nothing is written then).
    """
    result = MapResult.from_arrays(decode_map(header, buffers), header["background"])
    attrs = {"run_uid": str(header["run"]), "map_number": header["map"], "frames_received": header["frames"],
             "frames_lost": header["frames_lost"]}
    for key, value in (header.get("options") or {}).items():
        attrs[key] = np.asarray(value) if isinstance(value, list) else str(value)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        write_maps(entry, result, attrs=attrs)
