"""Map messages of docs/protocol.md: a MapResult on the wire and into the archive.

The live processor sends the same `[b"map", header, *buffers]` message to the lossy display
channel (partial and final maps) and to the archiver's lossless maps channel (final maps);
the archiver turns it back into a MapResult and writes it with `write_maps`, so archived maps
have exactly the layout of `opmon process`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opmon.errors import ProtocolError
from opmon.processors.mapfile import write_maps
from opmon.processors.maps import MapResult
from opmon.streaming import protocol as P

TOPIC = b"map"
FIELD_ORDER = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask", "q", "mean_q", "frames")
MAX_MAP_SIDE = 4096


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
        if dtype not in ("float64", "uint8", "int64") or not isinstance(shape, list) or len(shape) > 3 \
                or not all(isinstance(s, int) and 0 < s <= MAX_MAP_SIDE for s in shape):
            raise ProtocolError(f"map field {name!r}: bad dtype {dtype!r} or shape {shape!r}")
        raw = buf.buffer if hasattr(buf, "buffer") else memoryview(buf)
        arr = np.frombuffer(raw, dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise ProtocolError(f"map field {name!r}: {arr.size} values for shape {shape}")
        arrays[name] = arr.reshape(shape)
    missing = [n for n in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mask", "mean_q")
               if n not in arrays]
    if missing:
        raise ProtocolError(f"map message lacks field(s) {', '.join(missing)}")
    if arrays["d_spacing"].ndim != 2 or any(arrays[n].shape != arrays["d_spacing"].shape
                                            for n in ("tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask")):
        raise ProtocolError(f"map message: field shapes differ from d_spacing {arrays['d_spacing'].shape}")
    frames = arrays.pop("frames", np.zeros(arrays["d_spacing"].shape, dtype=np.int64))
    known = {k: v for k, v in arrays.items() if k in MapResult.__dataclass_fields__}
    background = header.get("background") or 0.0
    if not isinstance(background, (int, float)) or isinstance(background, bool):
        raise ProtocolError(f"map message: background {background!r:.40} is not a number")
    return MapResult(**known, frames=frames, background=float(background))


def write_map_file(path: Path, header: dict[str, Any], buffers: list[Any]) -> None:
    """Archiver hook: write a final map message as ``/entry/maps`` (FORMATS.md) at `path`."""
    result = decode_map(header, buffers)
    counts = [header.get(k) for k in ("map", "frames", "frames_lost")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in counts):
        raise ProtocolError(f"map message: map, frames, frames_lost = {counts!r:.80}, expected counts")
    options = header.get("options") or {}
    if not isinstance(options, dict):
        raise ProtocolError(f"map message: options {options!r:.40} is not a map")
    attrs = {"run_uid": str(header["run"]), "map_number": counts[0], "frames_received": counts[1],
             "frames_lost": counts[2]}
    for key, value in options.items():
        attrs[key] = np.asarray(value) if isinstance(value, list) else str(value)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        write_maps(entry, result, attrs=attrs)
