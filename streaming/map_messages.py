"""Map messages of docs/protocol.md: the one codec of `[b"map", header, *buffers]`.

The live processor encodes its partial and final maps with `encode_map`; the dashboard, the
archiver's maps channel and the tests decode them with `decode_map`, so every reader applies
the same checks (one dtype whitelist, one size limit). The codec works on named arrays (the
FORMATS.md names), not on the processors' `MapResult`, so that everything from the archive
down can read a map message without importing the processors.

Limits, the stricter of the two earlier decoders: dtypes float64, uint8 and int64 only (what
`MapResult` holds: maps, mask, frames per pixel) and at most `MAX_MAP_SIDE` per side (a map
is a raster of beam positions, not a detector image).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from opmon.streaming.protocol import VERSION, RejectedMessage, pack

TOPIC = b"map"
#: Buffer order on the wire; arrays not listed follow in the encoder's order.
FIELD_ORDER = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask", "q", "mean_q", "frames",
               "flags")
#: The (ny, nx) maps every map message carries.
PIXEL_MAPS = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask")
REQUIRED_FIELDS = (*PIXEL_MAPS, "q", "mean_q")
MAP_DTYPES = frozenset({"float64", "uint8", "int64"})
MAX_MAP_SIDE = 4096
#: Optional field and header key: the run's dose per sample position (photons, its own grid).
DOSE = "dose"
#: Optional fields ``fit/<name>`` and header key ``fit`` {"model", "description"}: a final map's per-pixel peak fit
#: (``[live] peak_fit``), the arrays of the archive's ``maps/fit`` group; receivers that do not know them ignore them.
FIT = "fit"
FIT_PREFIX = "fit/"
#: Header counts: non-negative integers.
_COUNTS = ("map", "frames", "n_frames", "frames_lost")


class MapArrays(Protocol):
    """What `encode_map` sends: FORMATS.md arrays by name and the background subtracted.

    `opmon.processors.maps.MapResult` is one; anything with the same two members is another.
    """

    background: float

    def arrays(self) -> dict[str, npt.NDArray[Any]]: ...


class FitMessage(Protocol):
    """A map's peak fit (`opmon.streaming.archive.maps_file.FitArrays` is one): named (ny, nx) maps and
    ``q`` (ny, nx, 3), the model and its rules in words."""

    arrays: dict[str, npt.NDArray[Any]]
    model: str
    description: str


class DoseArrays(Protocol):
    """The run's dose so far (`opmon.processors.dose.DoseGrid` is one): photons per cell of a grid
    in the piezo frame, and its header (origin_um (y, x), step_um, unit, max)."""

    photons: npt.NDArray[np.float64]

    def header(self) -> dict[str, Any]: ...


def encode_map(maps: MapArrays, *, run: str, map_number: int, final: bool, frames: int, n_frames: int,
               frames_lost: int, options: dict[str, Any] | None = None, dose: DoseArrays | None = None,
               onset: dict[str, Any] | None = None, fit: FitMessage | None = None) -> list[Any]:
    """`[b"map", header, *buffers]` for one (partial or final) map.

    Parameters
    ----------
    maps
        The map arrays (d in Å, tilts in degrees, q in 1/Å, mask 1 = valid, frames per pixel).
    run, map_number
        Which run and map they belong to.
    final
        True once the map is complete (or the run ended).
    frames, n_frames, frames_lost
        Frames summed so far, frames the map should hold (0 = unknown), frames counted lost.
    options
        Processing options recorded with the map (roi, threshold, background rule).
    dose
        The run's accumulated dose (all maps so far): field ``dose``, its grid in header ``dose``.
    onset
        A transformation flagged on this map (`opmon.processors.onset.Onset.as_dict`), if any.
    fit
        The map's per-pixel peak fit (final maps with ``[live] peak_fit``): fields ``fit/<name>``, header ``fit``.
    """
    arrays = maps.arrays()
    if dose is not None:
        arrays = {**arrays, DOSE: np.asarray(dose.photons, dtype=np.float64)}
    if fit is not None:
        arrays = {**arrays, **{FIT_PREFIX + name: np.asarray(a, dtype=np.float64) for name, a in fit.arrays.items()}}
    names = [n for n in FIELD_ORDER if n in arrays] + [n for n in arrays if n not in FIELD_ORDER]
    d_spacing = arrays["d_spacing"]
    valid = d_spacing[arrays["mask"].astype(bool)]
    header = {"v": VERSION, "kind": "map", "run": run, "map": int(map_number), "final": bool(final),
              "frames": int(frames), "n_frames": int(n_frames), "frames_lost": int(frames_lost), "t": time.time(),
              "map_shape": list(d_spacing.shape), "mean_q": [float(v) for v in arrays["mean_q"]],
              "d_mean": float(valid.mean()) if valid.size else None, "d_std": float(valid.std()) if valid.size else None,
              "background": float(maps.background), "options": options or {},
              # what a watcher of headers alone needs (phase tracking): Σ I over the map, share of valid pixels
              "intensity_sum": float(np.nansum(arrays["intensity"])),
              "valid_fraction": float(arrays["mask"].astype(bool).mean()) if arrays["mask"].size else 0.0,
              "fields": [{"name": n, "dtype": str(arrays[n].dtype), "shape": list(arrays[n].shape)} for n in names]}
    if dose is not None:
        header[DOSE] = dose.header()
    if onset:
        header["onset"] = onset
    if fit is not None:
        header[FIT] = {"model": str(fit.model), "description": str(fit.description)}
    return [TOPIC, pack(header)] + [np.ascontiguousarray(arrays[n]) for n in names]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_map_header(header: Mapping[str, Any]) -> None:
    """Check the scalar part of a map header (counts, time, background, options, run).

    Raises
    ------
    RejectedMessage
        reason ``field``, naming the key and its value.
    """
    for key in _COUNTS:
        if not _is_count(header.get(key)):
            raise RejectedMessage("field", f"map: {key} = {header.get(key)!r:.40}, expected a count")
    for key in ("t", "background"):
        if not _is_number(header.get(key)):
            raise RejectedMessage("field", f"map: {key} = {header.get(key)!r:.40} is not a number")
    if not isinstance(header.get("run"), str):
        raise RejectedMessage("field", f"map: run = {header.get('run')!r:.40}, expected a string")
    if not isinstance(header.get("options", {}), dict):
        raise RejectedMessage("field", f"map: options {header.get('options')!r:.40} is not a map")


def _field_array(spec: Any, buf: Any) -> tuple[str, npt.NDArray[Any]]:
    """One `fields` entry and its buffer -> (name, array viewing the buffer), strictly checked."""
    if not isinstance(spec, dict):
        raise RejectedMessage("field", f"map field entry {spec!r:.40} is not a map")
    name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
    if not isinstance(name, str):
        raise RejectedMessage("field", f"map field name {name!r:.40} is not a string")
    if not isinstance(dtype, str) or dtype not in MAP_DTYPES:
        raise RejectedMessage("dtype", f"map field {name!r:.40}: dtype {dtype!r:.40} not allowed "
                                       f"(expected one of {sorted(MAP_DTYPES)})")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_MAP_SIDE for n in shape):
        raise RejectedMessage("shape", f"map field {name!r:.40}: bad shape {shape!r:.60} "
                                       f"(1 to 3 sides of 1..{MAX_MAP_SIDE})")
    wire = np.dtype(dtype).newbyteorder("<")
    raw = memoryview(buf.buffer if hasattr(buf, "buffer") else buf)
    if raw.nbytes != math.prod(shape) * wire.itemsize:
        raise RejectedMessage("size", f"map field {name!r:.40}: {raw.nbytes} bytes for shape {shape} {dtype}")
    return name, np.frombuffer(raw, dtype=wire).reshape(shape)


def decode_map(header: Mapping[str, Any], buffers: Sequence[Any]) -> dict[str, npt.NDArray[Any]]:
    """The named arrays of a map message, after checking its header and every buffer.

    The arrays view the received buffers (no copy, read-only): copy what outlives the message.

    Raises
    ------
    RejectedMessage
        With a counter key (``parts``, ``field``, ``dtype``, ``shape``, ``size``) and the bad value.
    """
    fields = header.get("fields")
    if not isinstance(fields, list) or len(fields) != len(buffers):
        raise RejectedMessage("parts", f"map: {len(buffers)} buffers for fields {fields!r:.120}")
    check_map_header(header)
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec, buf in zip(fields, buffers):
        name, array = _field_array(spec, buf)
        if name in arrays:
            raise RejectedMessage("field", f"map field {name!r:.40} appears twice")
        arrays[name] = array
    missing = [n for n in REQUIRED_FIELDS if n not in arrays]
    if missing:
        raise RejectedMessage("field", f"map message lacks field(s) {', '.join(missing)}")
    shape = arrays["d_spacing"].shape
    expected = {**{n: shape for n in PIXEL_MAPS}, "q": (*shape, 3), "mean_q": (3,), "frames": shape, "flags": shape}
    wrong = [n for n, s in expected.items() if n in arrays and arrays[n].shape != s]
    if len(shape) != 2 or wrong:
        raise RejectedMessage("shape", f"map message: field shapes {[(n, arrays[n].shape) for n in wrong]} "
                                       f"do not fit d_spacing {shape}")
    return arrays


def decode_fit(header: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]
               ) -> tuple[dict[str, npt.NDArray[Any]], str, str] | None:
    """The peak fit a decoded map message carries: (arrays by name, model, description), or None.

    Raises
    ------
    RejectedMessage
        ``field`` when fit fields come without their header (or it is not a map of strings), ``shape``
        when a fitted map does not fit d_spacing ((ny, nx), ``q`` (ny, nx, 3)).
    """
    fitted = {name[len(FIT_PREFIX):]: a for name, a in arrays.items() if name.startswith(FIT_PREFIX)}
    if not fitted:
        return None
    info = header.get(FIT)
    if not (isinstance(info, dict) and isinstance(info.get("model"), str) and isinstance(info.get("description"), str)):
        raise RejectedMessage("field", f"map: fit fields with header fit = {info!r:.80}, expected model and description")
    if "d_spacing" not in fitted:
        raise RejectedMessage("field", "map: fit fields lack fit/d_spacing")
    shape = arrays["d_spacing"].shape
    wrong = [(n, a.shape) for n, a in fitted.items() if a.shape != ((*shape, 3) if n == "q" else shape)]
    if wrong:
        raise RejectedMessage("shape", f"map: fit field shapes {wrong} do not fit d_spacing {shape}")
    return fitted, info["model"], info["description"]


def decode_dose(header: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]
                ) -> tuple[npt.NDArray[Any], tuple[float, float], float] | None:
    """The dose a decoded map message carries: (photons (ny, nx), origin (y, x) µm, step µm), or None.

    Raises
    ------
    RejectedMessage
        ``field`` when the grid description is missing or not numbers, ``shape`` when the field is not 2-D.
    """
    if DOSE not in arrays:
        return None
    grid = header.get(DOSE)
    origin = grid.get("origin_um") if isinstance(grid, dict) else None
    step = grid.get("step_um") if isinstance(grid, dict) else None
    if not (isinstance(origin, list) and len(origin) == 2 and all(_is_number(v) for v in origin)
            and _is_number(step) and step > 0):
        raise RejectedMessage("field", f"map: dose grid {grid!r:.80}, expected origin_um [y, x] and step_um > 0")
    photons = arrays[DOSE]
    if photons.ndim != 2:
        raise RejectedMessage("shape", f"map: dose field of shape {photons.shape}, expected 2-D")
    return photons, (float(origin[0]), float(origin[1])), float(step)
