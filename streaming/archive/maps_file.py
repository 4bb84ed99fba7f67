"""The final-maps layout of FORMATS.md: `<entry>/maps`, an NXdata that silx and h5web open.

Written by `opmon process`, the replay and the archiver (final maps of the live processor),
read by `opmon plot`, tests and the demo's summary. It deals in named arrays, not in the
processors' `MapResult`, so the archive needs nothing downstream; processors convert.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import RawFileError
from opmon.streaming.archive.layout import (ATTR_BACKGROUND, DOSE, DOSE_SIGNAL, ENTRY, FIT_AUXILIARY, FIT_UNITS, MAPS,
                                           MAPS_ETA_SCANS, MAPS_ETA_SHIFTS, MAPS_FIT, MAPS_FLAGS, MAPS_FRAMES,
                                           MAPS_REQUIRED, MAPS_UNITS)

AUXILIARY_SIGNALS = ("intensity", "tilt_altitude", "tilt_azimuth", "peak_width")
MAP_X, MAP_Y = "x", "y"      # NXdata axes of the maps: piezo position of each column / row, µm
PER_PIXEL = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask")


@dataclass
class MapsArrays:
    """The maps of one map by FORMATS.md name (`MAPS_REQUIRED`, optionally `frames`) and the
    background rate that was subtracted (counts/pixel/frame)."""

    arrays: dict[str, npt.NDArray[Any]]
    background: float = 0.0


def write_maps(parent: h5py.Group, maps: MapsArrays, attrs: Mapping[str, Any] | None = None) -> h5py.Group:
    """Create ``parent/maps`` holding every array; ``attrs`` are stored on the group (e.g. options)."""
    if MAPS in parent:
        del parent[MAPS]
    group = parent.create_group(MAPS)
    parent.attrs["default"] = MAPS          # NeXus viewers open the maps first
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "d_spacing"
    group.attrs["auxiliary_signals"] = np.array(AUXILIARY_SIGNALS, dtype=h5py.string_dtype())
    group.attrs[ATTR_BACKGROUND] = maps.background
    for key, value in (attrs or {}).items():
        group.attrs[key] = value
    for name, array in maps.arrays.items():
        ds = group.create_dataset(name, data=array)
        if name in MAPS_UNITS:
            ds.attrs["units"] = MAPS_UNITS[name]
    group["d_spacing"].attrs["long_name"] = "d-spacing (Å)"
    if MAPS_FLAGS in group:
        group[MAPS_FLAGS].attrs["long_name"] = ("why a valid pixel may be biased (bit field: 1 = peak cut by the ROI or detector "
                                                "edge, 2 = low counts, 4 = peak cut by the rocking range)")
    return group


@dataclass
class DoseArrays:
    """The run's dose up to a map: photons per cell of a grid in the piezo frame (µm)."""

    photons: npt.NDArray[np.float64]
    origin_um: tuple[float, float]      # (y, x) of cell [0, 0]
    step_um: float

    def axes(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """x (per column) and y (per row) in µm."""
        ny, nx = self.photons.shape
        return (self.origin_um[1] + self.step_um * np.arange(nx), self.origin_um[0] + self.step_um * np.arange(ny))


def write_dose(parent: h5py.Group, dose: DoseArrays) -> h5py.Group:
    """``parent/dose``: an NXdata of photons per sample position with its x/y axes (µm)."""
    if DOSE in parent:
        del parent[DOSE]
    group = parent.create_group(DOSE)
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = DOSE_SIGNAL
    group.attrs["axes"] = np.array([MAP_Y, MAP_X], dtype=h5py.string_dtype())
    group.attrs["step_um"] = dose.step_um
    ds = group.create_dataset(DOSE_SIGNAL, data=np.asarray(dose.photons, dtype=np.float64))
    ds.attrs["units"] = "photons"
    ds.attrs["long_name"] = "accumulated dose (photons)"
    x, y = dose.axes()
    for name, values in ((MAP_X, x), (MAP_Y, y)):
        group.create_dataset(name, data=values).attrs["units"] = "um"
    return group


def read_dose(parent: h5py.Group) -> DoseArrays | None:
    """``parent/dose`` back, or None when the map carried no dose."""
    if DOSE not in parent:
        return None
    group = parent[DOSE]
    photons = np.asarray(group[DOSE_SIGNAL][()], dtype=np.float64)
    x, y = np.asarray(group[MAP_X][()]), np.asarray(group[MAP_Y][()])
    if photons.ndim != 2 or photons.shape != (y.size, x.size):
        raise RawFileError(f"{group.name}: photons {photons.shape} do not fit axes y {y.shape}, x {x.shape}")
    return DoseArrays(photons, (float(y[0]), float(x[0])), float(group.attrs["step_um"]))


@dataclass
class FitArrays:
    """The per-pixel peak fit of one map by name (`FIT_UNITS`: (ny, nx) maps, `q` (ny, nx, 3); NaN where the
    fit failed), the model fitted and the rules in words (stored with the group, so a reader of the file
    alone knows what NaN means)."""

    arrays: dict[str, npt.NDArray[Any]]
    model: str
    description: str


def write_fit(maps: h5py.Group, fit: FitArrays) -> h5py.Group:
    """``maps/fit``: an NXdata of the fitted maps, with the maps' x/y axes (hard links) when they have them.
    The one writer of the group: `opmon process --peak-fit` and the archiver's final maps both call it."""
    if MAPS_FIT in maps:
        del maps[MAPS_FIT]
    group = maps.create_group(MAPS_FIT)
    group.attrs["NX_class"] = "NXdata"
    group.attrs["signal"] = "d_spacing"
    group.attrs["auxiliary_signals"] = np.array(FIT_AUXILIARY, dtype=h5py.string_dtype())
    group.attrs["model"] = fit.model
    group.attrs["description"] = fit.description
    for name, values in fit.arrays.items():
        ds = group.create_dataset(name, data=values)
        if FIT_UNITS.get(name):
            ds.attrs["units"] = FIT_UNITS[name]
    group["d_spacing"].attrs["long_name"] = f"d-spacing, {fit.model} fit (Å)"
    if "reduced_chi2" in group:
        group["reduced_chi2"].attrs["long_name"] = "reduced χ² of the rocking-profile fit"
    if "axes" in maps.attrs:
        for axis in maps.attrs["axes"]:
            name = axis.decode() if isinstance(axis, bytes) else str(axis)
            group[name] = maps[name]      # hard link: the same µm axes as the centre-of-mass maps
            group.attrs[f"{name}_indices"] = maps.attrs[f"{name}_indices"]
        group.attrs["axes"] = maps.attrs["axes"]
    return group


def read_fit(maps: h5py.Group) -> FitArrays | None:
    """``maps/fit`` back (every dataset but the axes), or None when the map was not fitted."""
    if MAPS_FIT not in maps:
        return None
    group = maps[MAPS_FIT]
    axes = {MAP_X, MAP_Y}
    arrays = {name: group[name][()] for name in group if name not in axes and isinstance(group[name], h5py.Dataset)}
    return FitArrays(arrays, str(group.attrs.get("model", "")), str(group.attrs.get("description", "")))


def write_maps_file(path: Path, maps: MapsArrays, attrs: Mapping[str, Any] | None = None,
                    axes: tuple[npt.ArrayLike, npt.ArrayLike] | None = None, dose: DoseArrays | None = None,
                    fit: FitArrays | None = None) -> None:
    """A maps file holding one map: ``/entry/maps`` (the archive's `map_NNNN_maps.h5`), with
    its x/y axes in µm when given, ``/entry/dose`` (the run's dose up to this map) and
    ``/entry/maps/fit`` (the per-pixel peak fit) when given."""
    with h5py.File(path, "w") as f:
        f.attrs["default"] = ENTRY
        entry = f.create_group(ENTRY)
        entry.attrs["NX_class"] = "NXentry"
        group = write_maps(entry, maps, attrs)
        if axes is not None:
            write_axes(group, *axes)
        if fit is not None:
            write_fit(group, fit)
        if dose is not None:
            write_dose(entry, dose)


def read_maps(parent: h5py.Group) -> MapsArrays:
    """Read ``parent/maps`` back, naming any missing or mis-shaped dataset (before any plotting)."""
    if MAPS not in parent:
        raise RawFileError(f"{parent.file.filename}: no group {parent.name.rstrip('/')}/{MAPS}")
    group = parent[MAPS]
    missing = [name for name in MAPS_REQUIRED if name not in group]
    if missing:
        raise RawFileError(f"{group.name}: missing dataset(s) {', '.join(missing)}")
    arrays = {name: group[name][()] for name in MAPS_REQUIRED}
    check_maps(arrays, f"{group.file.filename}:{group.name}")
    arrays[MAPS_FRAMES] = (group[MAPS_FRAMES][()] if MAPS_FRAMES in group
                           else np.zeros(arrays["d_spacing"].shape, dtype=np.int64))
    if MAPS_FLAGS in group:
        flags = group[MAPS_FLAGS][()]
        if flags.shape != arrays["d_spacing"].shape:
            raise RawFileError(f"{group.file.filename}:{group.name}/{MAPS_FLAGS}: shape {flags.shape}, expected {arrays['d_spacing'].shape}")
        arrays[MAPS_FLAGS] = flags
    if MAPS_ETA_SCANS in group and MAPS_ETA_SHIFTS in group:     # the eta scans registered and their drift
        eta, shifts = group[MAPS_ETA_SCANS][()], group[MAPS_ETA_SHIFTS][()]
        if eta.ndim != 1 or shifts.shape != (eta.size, 2):
            raise RawFileError(f"{group.file.filename}:{group.name}/{MAPS_ETA_SHIFTS}: shape {shifts.shape}, expected "
                               f"({eta.size}, 2) for the {eta.size} values of {MAPS_ETA_SCANS}")
        arrays[MAPS_ETA_SCANS], arrays[MAPS_ETA_SHIFTS] = eta, shifts
    return MapsArrays(arrays, float(group.attrs.get(ATTR_BACKGROUND, 0.0)))


def check_maps(arrays: Mapping[str, Any], where: str) -> None:
    """Name the first array whose shape or type does not fit FORMATS.md.

    Raises
    ------
    RawFileError
        naming `where`, the array, its shape and dtype and the shape expected.
    """
    shape = np.shape(arrays["d_spacing"])
    if len(shape) != 2:
        raise RawFileError(f"{where}/d_spacing: shape {shape}, expected (ny, nx)")
    expected = {name: shape for name in PER_PIXEL}
    expected.update(q=shape + (3,), mean_q=(3,))
    for name, want in expected.items():
        arr = arrays[name]
        if np.shape(arr) != want or not np.issubdtype(np.asarray(arr).dtype, np.number):
            raise RawFileError(f"{where}/{name}: shape {np.shape(arr)} {np.asarray(arr).dtype}, "
                               f"expected numbers of shape {want}")


def grid_axes(x_um: npt.ArrayLike | None, y_um: npt.ArrayLike | None, map_index: npt.ArrayLike,
              map_shape: tuple[int, int]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """Position (µm) of each map column and row: the mean recorded piezo position of its frames.

    None when positions were not recorded (absent or all NaN), or a row or column has none,
    so a figure never shows made-up distances.
    """
    if x_um is None or y_um is None:
        return None
    ny, nx = map_shape
    index = np.asarray(map_index, dtype=np.int64)
    x, y = np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
    good = np.isfinite(x) & np.isfinite(y) & (index >= 0) & (index < ny * nx)
    if not good.any():
        return None
    rows, cols = np.divmod(index[good], nx)
    with np.errstate(invalid="ignore", divide="ignore"):
        col_x = np.bincount(cols, weights=x[good], minlength=nx) / np.bincount(cols, minlength=nx)
        row_y = np.bincount(rows, weights=y[good], minlength=ny) / np.bincount(rows, minlength=ny)
    if not (np.isfinite(col_x).all() and np.isfinite(row_y).all()):
        return None
    return col_x, row_y


def write_axes(group: h5py.Group, x_um: npt.ArrayLike, y_um: npt.ArrayLike) -> None:
    """Give the maps NXdata its x/y axes in µm, so NeXus viewers show real positions."""
    shape = group["d_spacing"].shape
    x, y = np.asarray(x_um, dtype=np.float64), np.asarray(y_um, dtype=np.float64)
    if x.shape != (shape[1],) or y.shape != (shape[0],):
        raise RawFileError(f"{group.name}: axes of {y.shape} rows x {x.shape} columns do not fit maps of {shape}")
    for name, values in ((MAP_X, x), (MAP_Y, y)):
        if name in group:
            del group[name]
        group.create_dataset(name, data=values).attrs["units"] = "um"
    group.attrs["axes"] = np.array([MAP_Y, MAP_X], dtype=h5py.string_dtype())
    group.attrs[f"{MAP_Y}_indices"] = 0
    group.attrs[f"{MAP_X}_indices"] = 1


def read_axes(group: h5py.Group) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
    """The maps' x/y positions (µm) when the file has them and they fit, else None."""
    if MAP_X not in group or MAP_Y not in group:
        return None
    x, y = np.asarray(group[MAP_X][()], dtype=np.float64), np.asarray(group[MAP_Y][()], dtype=np.float64)
    ny, nx = group["d_spacing"].shape
    return (x, y) if x.shape == (nx,) and y.shape == (ny,) else None
