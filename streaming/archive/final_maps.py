"""Final maps arriving on the archiver's maps channel: the wire message to a maps file.

The live processor sends each finished map as `[b"map", header, *buffers]` (docs/protocol.md,
"Map messages"): a header listing every field (name, dtype, shape) and one raw buffer per
field. The archiver checks every buffer against its field entry and writes the FORMATS.md
maps layout, so archived maps have exactly the layout of `opmon process`. Decoding lives here,
upstream of the processors and the dashboard, so every reader of map messages shares it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from opmon.errors import ProtocolError
from opmon.streaming.archive.layout import MAPS_FRAMES, MAPS_REQUIRED
from opmon.streaming.archive.maps_file import PER_PIXEL, MapsArrays, write_maps_file

FIELD_DTYPES = ("float64", "uint8", "int64")
MAX_MAP_SIDE = 4096


def decode_map_arrays(header: dict[str, Any], buffers: list[Any]) -> MapsArrays:
    """The named arrays of a map message, each buffer checked against its field entry.

    Raises
    ------
    ProtocolError
        naming the field whose entry, dtype, shape or size is wrong, or the fields missing.
    """
    fields = header.get("fields")
    if not isinstance(fields, list) or len(fields) != len(buffers):
        raise ProtocolError(f"map message lists {len(fields) if isinstance(fields, list) else fields!r} fields "
                            f"but carries {len(buffers)} buffers")
    arrays: dict[str, np.ndarray] = {}
    for spec, buf in zip(fields, buffers):
        if not isinstance(spec, dict):
            raise ProtocolError(f"map field entry {spec!r:.40} is not a map")
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str):
            raise ProtocolError(f"map field name {name!r:.40} is not a string")
        if dtype not in FIELD_DTYPES or not isinstance(shape, list) or len(shape) > 3 \
                or not all(isinstance(s, int) and 0 < s <= MAX_MAP_SIDE for s in shape):
            raise ProtocolError(f"map field {name!r}: bad dtype {dtype!r} or shape {shape!r}")
        raw = buf.buffer if hasattr(buf, "buffer") else memoryview(buf)
        arr = np.frombuffer(raw, dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise ProtocolError(f"map field {name!r}: {arr.size} values for shape {shape}")
        arrays[name] = arr.reshape(shape)
    missing = [n for n in MAPS_REQUIRED if n not in arrays]
    if missing:
        raise ProtocolError(f"map message lacks field(s) {', '.join(missing)}")
    if arrays["d_spacing"].ndim != 2 or any(arrays[n].shape != arrays["d_spacing"].shape for n in PER_PIXEL[1:]):
        raise ProtocolError(f"map message: field shapes differ from d_spacing {arrays['d_spacing'].shape}")
    arrays.setdefault(MAPS_FRAMES, np.zeros(arrays["d_spacing"].shape, dtype=np.int64))
    known = {name: arrays[name] for name in (*MAPS_REQUIRED, MAPS_FRAMES)}    # unknown fields are not kept
    background = header.get("background") or 0.0
    if not isinstance(background, (int, float)) or isinstance(background, bool):
        raise ProtocolError(f"map message: background {background!r:.40} is not a number")
    return MapsArrays(known, float(background))


def final_maps_attrs(header: dict[str, Any]) -> dict[str, Any]:
    """Attributes of an archived maps group: run, map, frames received and lost, the options."""
    counts = [header.get(k) for k in ("map", "frames", "frames_lost")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in counts):
        raise ProtocolError(f"map message: map, frames, frames_lost = {counts!r:.80}, expected counts")
    options = header.get("options") or {}
    if not isinstance(options, dict):
        raise ProtocolError(f"map message: options {options!r:.40} is not a map")
    attrs: dict[str, Any] = {"run_uid": str(header["run"]), "map_number": counts[0], "frames_received": counts[1],
                             "frames_lost": counts[2]}
    for key, value in options.items():
        attrs[key] = np.asarray(value) if isinstance(value, list) else str(value)
    return attrs


def write_final_maps(path: Path, header: dict[str, Any], buffers: list[Any]) -> None:
    """Write a final-maps message as ``/entry/maps`` (FORMATS.md) at `path`."""
    maps = decode_map_arrays(header, buffers)
    write_maps_file(path, maps, final_maps_attrs(header))
