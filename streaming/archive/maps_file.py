"""Maps HDF5 layout of FORMATS.md: `/entry/maps` as an NXdata that silx and h5web open."""
from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from opmon.errors import RawFileError
from opmon.processors.maps import MapResult

UNITS = {
    "d_spacing": "angstrom", "tilt_altitude": "deg", "tilt_azimuth": "deg", "intensity": "counts",
    "peak_width": "1/angstrom", "q": "1/angstrom", "mean_q": "1/angstrom",
}
REQUIRED = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mask", "mean_q")


def write_maps(parent: h5py.Group, result: MapResult, attrs: dict[str, Any] | None = None) -> h5py.Group:
    """Create ``parent/maps`` holding every map; ``attrs`` are stored on the group (e.g. options)."""
    if "maps" in parent:
        del parent["maps"]
    group = parent.create_group("maps")
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "d_spacing"
    group.attrs["auxiliary_signals"] = np.array(["intensity", "tilt_altitude", "tilt_azimuth", "peak_width"], dtype=h5py.string_dtype())
    group.attrs["background_rate"] = result.background
    for key, value in (attrs or {}).items():
        group.attrs[key] = value
    for name, array in result.arrays().items():
        ds = group.create_dataset(name, data=array)
        if name in UNITS:
            ds.attrs["units"] = UNITS[name]
    group["d_spacing"].attrs["long_name"] = "d-spacing (Å)"
    return group


def read_maps(parent: h5py.Group) -> MapResult:
    """Read ``parent/maps`` back into a MapResult, naming any missing dataset."""
    if "maps" not in parent:
        raise RawFileError(f"{parent.file.filename}: no group {parent.name.rstrip('/')}/maps")
    group = parent["maps"]
    missing = [name for name in REQUIRED if name not in group]
    if missing:
        raise RawFileError(f"{group.name}: missing dataset(s) {', '.join(missing)}")
    arrays = {name: group[name][()] for name in REQUIRED}
    _check_shapes(group, arrays)
    frames = group["frames"][()] if "frames" in group else np.zeros(arrays["d_spacing"].shape, dtype=np.int64)
    return MapResult(**arrays, frames=frames, background=float(group.attrs.get("background_rate", 0.0)))


def _check_shapes(group: h5py.Group, arrays: dict[str, np.ndarray]) -> None:
    """Name the first dataset whose shape or type does not fit FORMATS.md (before any plotting)."""
    shape = np.shape(arrays["d_spacing"])
    expected = {name: shape for name in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask")}
    expected.update(q=shape + (3,), mean_q=(3,))
    if len(shape) != 2:
        raise RawFileError(f"{group.file.filename}:{group.name}/d_spacing: shape {shape}, expected (ny, nx)")
    for name, want in expected.items():
        arr = arrays[name]
        if np.shape(arr) != want or not np.issubdtype(np.asarray(arr).dtype, np.number):
            raise RawFileError(f"{group.file.filename}:{group.name}/{name}: shape {np.shape(arr)} "
                               f"{np.asarray(arr).dtype}, expected numbers of shape {want}")
