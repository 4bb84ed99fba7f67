"""Final maps arriving on the archiver's maps channel: the wire message to a maps file.

The live processor sends each finished map as `[b"map", header, *buffers]` (docs/protocol.md,
"Map messages"). The archiver decodes it with the one map codec (`opmon.streaming.map_messages`,
which checks every buffer against its field entry) and writes the FORMATS.md maps layout
itself, so archived maps have exactly the layout of `opmon process` (with ``maps/fit`` when the
message carries a peak fit) and the archive needs nothing from the processors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.streaming.archive.layout import MAPS_ETA_SCANS, MAPS_ETA_SHIFTS, MAPS_FLAGS, MAPS_FRAMES, MAPS_REQUIRED
from opmon.streaming.archive.maps_file import DoseArrays, FitArrays, MapsArrays, write_maps_file
from opmon.streaming.map_messages import decode_dose, decode_fit, decode_map


def final_maps_attrs(header: dict[str, Any]) -> dict[str, Any]:
    """Attributes of an archived maps group: run, map, frames received and lost, the options."""
    attrs: dict[str, Any] = {"run_uid": str(header["run"]), "map_number": header["map"],
                             "frames_received": header["frames"], "frames_lost": header["frames_lost"]}
    for key, value in (header.get("options") or {}).items():
        attrs[key] = np.asarray(value) if isinstance(value, list) else str(value)
    if isinstance(header.get("onset"), dict):        # a transformation flagged on this map
        attrs["onset"] = json.dumps(header["onset"], default=str)
    return attrs


def write_final_maps(path: Path, header: dict[str, Any], buffers: list[Any],
                     axes: tuple[npt.ArrayLike, npt.ArrayLike] | None = None) -> None:
    """Write a final-maps message as ``/entry/maps`` (FORMATS.md) at `path`, with the map's x/y
    axes (µm, from the archived frames' positions) when known.

    Raises
    ------
    RejectedMessage
        when the message breaks docs/protocol.md (nothing is written then).
    """
    arrays = decode_map(header, buffers)      # checks the header's counts and options too
    known = {name: arrays[name] for name in MAPS_REQUIRED}          # fields the layout does not know are not kept
    known[MAPS_FRAMES] = arrays.get(MAPS_FRAMES, np.zeros(arrays["d_spacing"].shape, dtype=np.int64))
    known.update({name: arrays[name] for name in (MAPS_ETA_SCANS, MAPS_ETA_SHIFTS, MAPS_FLAGS)   # registered scans,
                  if name in arrays})                                                        # caution bits
    dose = decode_dose(header, arrays)        # the run's dose up to this map, when the run has one
    fit = decode_fit(header, arrays)          # the per-pixel peak fit, when the live processor fitted the map
    write_maps_file(path, MapsArrays(known, float(header["background"])), final_maps_attrs(header), axes,
                    DoseArrays(np.array(dose[0]), dose[1], dose[2]) if dose is not None else None,
                    FitArrays(*fit) if fit is not None else None)
