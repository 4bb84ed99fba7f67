"""Geometry a beamline file lacks or mis-states: `--geometry FILE.toml`, and where each value came from.

Keys and units are those of the raw layout (FORMATS.md "Geometry file"): ``incident_energy``
(eV), ``distance`` (m), ``x_pixel_size``, ``y_pixel_size`` (m), ``beam_center_x``,
``beam_center_y`` (pixel of the frames, at nu = delta = 0). A key given in the file overrides
the source; every value used is recorded with its origin.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opmon.errors import RawFileError

KEYS = ("incident_energy", "distance", "x_pixel_size", "y_pixel_size", "beam_center_x", "beam_center_y")
POSITIVE = frozenset({"incident_energy", "distance", "x_pixel_size", "y_pixel_size"})


def read_geometry_file(path: str | Path) -> dict[str, float]:
    """The keys of a geometry TOML file, checked (known names, finite numbers, lengths > 0)."""
    p = Path(path)
    try:
        values = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise RawFileError(f"--geometry {p}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RawFileError(f"--geometry {p}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RawFileError(f"--geometry {p}: not TOML ({exc})") from exc
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise RawFileError(f"--geometry {p}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RawFileError(f"--geometry {p}: {key} = {value!r} is not a finite number")
        if key in POSITIVE and value <= 0:
            raise RawFileError(f"--geometry {p}: {key} = {value!r} must be > 0")
        out[key] = float(value)
    return out


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
