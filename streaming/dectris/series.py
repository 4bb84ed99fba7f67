"""What a stream V2 `start` message says about a series: geometry, mask, and where each image goes.

Geometry comes from DECTRIS's own fields: beam centre (pixels), pixel size (m), energy
(`incident_energy` in eV, else `incident_wavelength` in angstrom), distance = |z| of
`detector_translation` (m; the detector's translation along the beam). The run's mask is the
chosen channel's `pixel_mask` (non-zero = bad pixel), sent when the detector's
`header_detail` is `all`.

Scan points: DECTRIS leaves them to the user (`header_appendix` of the stream configuration
arrives as the start message's `user_data`). opmon reads this convention, all keys optional:

    user_data = {"opmon": {
        "map_shape": [ny, nx],          # default [1, number_of_images]
        "map_index": [i0, i1, ...],     # row-major map pixel of each image_id;
                                        #   default image_id % (ny * nx) (raster order, repeated)
        "eta": 12.1 or [...],           # degrees, one number or one per image_id; defaults from
        "phi": ..., "nu": ..., "delta": ...   # `goniometer`: eta = omega, phi = phi,
                                        #   delta = two_theta (start + increment * image_id), nu = 0
        "x": [...], "y": [...],         # piezo positions per image_id (um), optional
        "run": "uid",                   # series naming the same run are maps of one run
        "map": 3,                       # this series' map number in that run (default: next)
        "last_map": true                # the run ends with this series
    }}

Without `run`, every series is a run of one map, named `dectris-<series_id>-<series_unique_id>`.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.streaming.dectris.codec import MultiDimArray, to_ndarray
from opmon.streaming.protocol import ANGLE_KEYS, MAX_SIDE, RUN_UID, RejectedMessage

log = logging.getLogger(__name__)
HC_EV_ANGSTROM = 12398.419843320026       # h c, so that E [eV] = HC / lambda [angstrom]
#: stream V2 goniometer axis behind each opmon angle (nu has none: a detector circle DECTRIS does not name)
GONIOMETER_AXES = {"eta": "omega", "phi": "phi", "delta": "two_theta"}
USER_KEY = "opmon"


def _number(start: dict[str, Any], key: str, positive: bool = True) -> float:
    value = start.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise RejectedMessage("field", f"start.{key} = {value!r:.60}, expected a {'positive ' if positive else ''}number")
    return float(value)


def _count(start: dict[str, Any], key: str, limit: int) -> int:
    value = start.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise RejectedMessage("field", f"start.{key} = {value!r:.60}, expected an integer 1..{limit}")
    return value


@dataclass
class SeriesStart:
    """One series as its start message describes it, checked; `image_point` places each image."""

    series_id: int
    unique_id: str
    n_images: int
    frame_shape: tuple[int, int]                # (image_size_y, image_size_x)
    pixel_size_m: tuple[float, float]           # (y, x), as opmon's protocol orders them
    beam_center: tuple[float, float]            # (row, column) = (beam_center_y, beam_center_x)
    distance_m: float
    energy_ev: float
    channel: str
    threshold_ev: float | None
    saturation: int | None
    mask: npt.NDArray[np.uint8] | None
    map_shape: tuple[int, int]
    run: str
    shared_run: bool                            # the run uid came from user_data (several series)
    map_number: int | None
    last_map: bool
    _index: npt.NDArray[np.int64] | None = None
    _angles: dict[str, float | npt.NDArray[np.float64]] = field(default_factory=dict)
    _positions: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)

    def image_point(self, image_id: int) -> tuple[int, dict[str, float], float | None, float | None]:
        """(map index, angles, x, y) of image `image_id`.

        Raises
        ------
        RejectedMessage
            reason `index` if the image lies beyond the series or its map pixel outside the map.
        """
        if not 0 <= image_id < self.n_images:
            raise RejectedMessage("index", f"image_id {image_id} outside the series' {self.n_images} images")
        ny, nx = self.map_shape
        index = int(self._index[image_id]) if self._index is not None else image_id % (ny * nx)
        angles = {k: float(v if isinstance(v, float) else v[image_id]) for k, v in self._angles.items()}
        x, y = (float(self._positions[k][image_id]) if k in self._positions else None for k in ("x", "y"))
        return index, angles, x, y

    def metadata(self) -> dict[str, Any]:
        """What the opmon run's start records about the detector series."""
        return {"source": "dectris-stream-v2", "series_id": self.series_id, "series_unique_id": self.unique_id,
                "channel": self.channel, "threshold_energy_ev": self.threshold_ev,
                "saturation_value": self.saturation, "number_of_images": self.n_images,
                "distance_from": "abs(detector_translation[2])"}


def _per_image(opts: dict[str, Any], key: str, n: int, default: float | npt.NDArray[np.float64]
               ) -> float | npt.NDArray[np.float64]:
    if key not in opts:
        return default
    value = opts[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise RejectedMessage("user_data", f"user_data.opmon.{key}: expected a finite number or {n} of them "
                                           f"(one per image)")
    return arr


def _goniometer(start: dict[str, Any], axis: str, n: int) -> float | npt.NDArray[np.float64]:
    gonio = start.get("goniometer") or {}
    spec = gonio.get(axis) if isinstance(gonio, dict) else None
    if not isinstance(spec, dict):
        return 0.0
    s, inc = spec.get("start", 0.0), spec.get("increment", 0.0)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (s, inc)):
        raise RejectedMessage("field", f"start.goniometer.{axis} = {spec!r:.80}, expected numbers start, increment")
    return float(s) if inc == 0 else float(s) + float(inc) * np.arange(n, dtype=np.float64)


def _run_uid(start: dict[str, Any], opts: dict[str, Any]) -> tuple[str, bool]:
    if "run" in opts:
        run = opts["run"]
        if not isinstance(run, str) or not RUN_UID.fullmatch(run):
            raise RejectedMessage("user_data", f"user_data.opmon.run = {run!r:.60}, expected letters, digits, '.', '_', '-'")
        return run, True
    unique = re.sub(r"[^A-Za-z0-9._-]", "_", str(start.get("series_unique_id", "")))
    return f"dectris-{start['series_id']}-{unique}"[:128], False


def parse_start(start: dict[str, Any], channel: str | None = None) -> SeriesStart:
    """Check a start message and read its geometry, mask and scan points for `channel` (default: the first).

    Raises
    ------
    RejectedMessage
        reason `field`, `channel` or `user_data`, naming the key and value.
    """
    series_id = start.get("series_id")
    if not isinstance(series_id, int) or isinstance(series_id, bool) or series_id < 0:
        raise RejectedMessage("field", f"start.series_id = {series_id!r:.40}, expected an integer >= 0")
    n = _count(start, "number_of_images", 1 << 40)
    rows, cols = _count(start, "image_size_y", MAX_SIDE), _count(start, "image_size_x", MAX_SIDE)
    channels = start.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise RejectedMessage("field", f"start.channels = {channels!r:.60}, expected a list of channel names")
    chosen = channel or channels[0]
    if chosen not in channels:
        raise RejectedMessage("channel", f"channel {chosen!r} not in the series' channels {channels}")
    if isinstance(start.get("incident_energy"), (int, float)) and start["incident_energy"] > 0:
        energy = _number(start, "incident_energy")
    else:
        energy = HC_EV_ANGSTROM / _number(start, "incident_wavelength")
    translation = start.get("detector_translation")
    if not (isinstance(translation, list) and len(translation) == 3
            and all(isinstance(t, (int, float)) and math.isfinite(t) for t in translation) and translation[2] != 0):
        raise RejectedMessage("field", f"start.detector_translation = {translation!r:.80}, expected [x, y, z] in m "
                                       "with z (the distance) non-zero")
    thresholds = start.get("threshold_energy") if isinstance(start.get("threshold_energy"), dict) else {}
    threshold = thresholds.get(chosen)
    mask = None
    masks = start.get("pixel_mask")
    if isinstance(masks, dict) and chosen in masks and not isinstance(masks[chosen], MultiDimArray):
        log.warning("start.pixel_mask.%s is a %s, not a multi-dimensional array: ignored (no pixel mask)",
                    chosen, type(masks[chosen]).__name__)
    elif isinstance(masks, dict) and chosen in masks:
        bits = to_ndarray(masks[chosen], f"start.pixel_mask.{chosen}")
        if bits.shape != (rows, cols):
            raise RejectedMessage("shape", f"start.pixel_mask.{chosen} is {list(bits.shape)}, images are {[rows, cols]}")
        mask = (bits != 0).astype(np.uint8)
    user = start.get("user_data")
    opts = user.get(USER_KEY, {}) if isinstance(user, dict) else {}
    if not isinstance(opts, dict):
        raise RejectedMessage("user_data", f"user_data.opmon is a {type(opts).__name__}, expected a map")
    map_shape = opts.get("map_shape", [1, n])
    if not (isinstance(map_shape, list) and len(map_shape) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in map_shape)):
        raise RejectedMessage("user_data", f"user_data.opmon.map_shape = {map_shape!r:.60}, expected [ny, nx]")
    index = None
    if "map_index" in opts:
        try:
            index = np.asarray(opts["map_index"], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            index = np.empty(0, dtype=np.int64)
        if index.shape != (n,) or index.min() < 0 or index.max() >= map_shape[0] * map_shape[1]:
            raise RejectedMessage("user_data", f"user_data.opmon.map_index: expected {n} map pixels in 0.."
                                               f"{map_shape[0] * map_shape[1] - 1}")
    angles = {k: _per_image(opts, k, n, _goniometer(start, GONIOMETER_AXES[k], n) if k in GONIOMETER_AXES else 0.0)
              for k in ANGLE_KEYS}
    positions = {k: np.broadcast_to(_per_image(opts, k, n, 0.0), (n,)) for k in ("x", "y") if k in opts}
    run, shared = _run_uid(start, opts)
    map_number = opts.get("map")
    if map_number is not None and (not isinstance(map_number, int) or isinstance(map_number, bool) or map_number < 0):
        raise RejectedMessage("user_data", f"user_data.opmon.map = {map_number!r:.40}, expected an integer >= 0")
    saturation = start.get("saturation_value")
    return SeriesStart(
        series_id=series_id, unique_id=str(start.get("series_unique_id", "")), n_images=n, frame_shape=(rows, cols),
        pixel_size_m=(_number(start, "pixel_size_y"), _number(start, "pixel_size_x")),
        beam_center=(_number(start, "beam_center_y", False), _number(start, "beam_center_x", False)),
        distance_m=abs(float(translation[2])), energy_ev=energy, channel=chosen,
        threshold_ev=float(threshold) if isinstance(threshold, (int, float)) else None,
        saturation=saturation if isinstance(saturation, int) and not isinstance(saturation, bool) else None,
        mask=mask, map_shape=(map_shape[0], map_shape[1]), run=run, shared_run=shared, map_number=map_number,
        last_map=bool(opts.get("last_map", False)), _index=index, _angles=angles, _positions=positions)
