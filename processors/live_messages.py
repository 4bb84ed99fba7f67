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
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
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
    frames = arrays.pop("frames", np.zeros(arrays["d_spacing"].shape, dtype=np.int64))
    known = {k: v for k, v in arrays.items() if k in MapResult.__dataclass_fields__}
    return MapResult(**known, frames=frames, background=float(header.get("background") or 0.0))


def write_map_file(path: Path, header: dict[str, Any], buffers: list[Any]) -> None:
    """Archiver hook: write a final map message as ``/entry/maps`` (FORMATS.md) at `path`."""
    result = decode_map(header, buffers)
    attrs = {"run_uid": header["run"], "map_number": int(header["map"]), "frames_received": int(header["frames"]),
             "frames_lost": int(header["frames_lost"])}
    for key, value in (header.get("options") or {}).items():
        attrs[key] = np.asarray(value) if isinstance(value, list) else str(value)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        write_maps(entry, result, attrs=attrs)
