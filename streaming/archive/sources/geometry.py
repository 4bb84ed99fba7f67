"""Geometry a beamline file lacks or mis-states: `--geometry FILE.toml`, and where each value came from.

Keys and units are those of the raw layout (FORMATS.md "Geometry file"): ``incident_energy``
(eV), ``distance`` (m), ``x_pixel_size``, ``y_pixel_size`` (m), ``beam_center_x``,
``beam_center_y`` (pixel of the frames, at nu = delta = 0). A key given in the file overrides
the source; every value used is recorded with its origin.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opmon.errors import ConfigError, RawFileError
from opmon.streaming.geometry_file import GEOMETRY_KEYS, load_geometry_file

KEYS = tuple(GEOMETRY_KEYS)


def read_geometry_file(path: str | Path) -> dict[str, float]:
    """The keys of a geometry TOML file, checked (known names, finite numbers, lengths > 0) by
    the one reader every source uses (`opmon.streaming.geometry_file`), its error raised as the
    file commands' RawFileError."""
    try:
        return load_geometry_file(path)
    except ConfigError as exc:
        raise RawFileError(str(exc)) from exc


@dataclass
class GeometryValues:
    """Geometry values with where each came from; `missing` maps a key to where it was looked for."""

    values: dict[str, float] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def found(self, key: str, value: float, origin: str) -> None:
        self.values[key] = float(value)
        self.origin[key] = origin
        self.missing.pop(key, None)

    def override(self, overrides: dict[str, float], path: str | Path | None) -> None:
        for key, value in overrides.items():
            self.found(key, value, f"--geometry {path}")

    def require(self, where: str) -> None:
        """Raise one line naming the first missing value and how to give it."""
        for key in KEYS:
            if key not in self.values:
                looked = self.missing.get(key, "the file")
                raise RawFileError(f"{where}: missing geometry: {key} (not in {looked}); "
                                   f"give it in --geometry FILE.toml as {key} = ...")

    def record(self) -> dict[str, Any]:
        """{key: {"value": v, "from": origin}} for the maps file."""
        return {key: {"value": self.values[key], "from": self.origin[key]} for key in KEYS if key in self.values}
