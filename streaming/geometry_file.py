"""`--geometry FILE.toml`: the detector geometry a source does not hold (or mis-states).

Flat keys with the raw layout's names and units (FORMATS.md, "Geometry file"). Any key given
overrides what the source says; `merge_geometry` records where each value came from, so the
start message (and from it the archive) says which values were used.
"""
from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from opmon.errors import ConfigError

#: FORMATS.md geometry keys and their units.
GEOMETRY_KEYS: dict[str, str] = {"incident_energy": "eV", "distance": "m", "x_pixel_size": "m", "y_pixel_size": "m",
                                 "beam_center_x": "pixel", "beam_center_y": "pixel"}
POSITIVE = {"incident_energy", "distance", "x_pixel_size", "y_pixel_size"}


def check_geometry_value(key: str, value: Any, where: str) -> float:
    """`value` as a float, or ConfigError naming `where`, the key and the value."""
    if key not in GEOMETRY_KEYS:
        raise ConfigError(f"{where}: unknown geometry key {key!r} (known: {', '.join(GEOMETRY_KEYS)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key} = {value!r:.40} is not a finite number ({GEOMETRY_KEYS[key]})")
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"{where}: {key} = {value} must be > 0 ({GEOMETRY_KEYS[key]})")
    return float(value)


def load_geometry_file(path: str | Path) -> dict[str, float]:
    """The geometry keys of a TOML file, checked (unknown keys, non-numbers and non-positive sizes refused).

    Raises
    ------
    ConfigError
        naming the file and the bad key or value, or why the file cannot be read.
    """
    p = Path(path)
    try:
        table = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"--geometry {p}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--geometry {p}: not a TOML file ({exc})") from exc
    return {key: check_geometry_value(key, value, f"--geometry {p}") for key, value in table.items()}


def merge_geometry(found: dict[str, tuple[float, str]], overrides: dict[str, float], override_source: str,
                   where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Start-message geometry from values a source found (value, where from) and a file's overrides.

    Returns the keyword arguments of `ZmqFrameSink.start_run` (energy, distance, pixel sizes
    (row, col), beam centre (row, col)) and, per FORMATS.md key, where its value came from.

    Raises
    ------
    ConfigError
        naming `where` and every key neither the source nor the file gives.
    """
    values = {key: value for key, (value, _) in found.items()}
    sources = {key: source for key, (_, source) in found.items()}
    for key, value in overrides.items():
        values[key], sources[key] = value, override_source
    missing = [key for key in GEOMETRY_KEYS if key not in values]
    if missing:
        raise ConfigError(f"{where}: no {', '.join(missing)} (give them in --geometry FILE.toml, keys of FORMATS.md)")
    start = {"energy_ev": values["incident_energy"], "distance_m": values["distance"],
             "pixel_size_m": (values["y_pixel_size"], values["x_pixel_size"]),
             "beam_center": (values["beam_center_y"], values["beam_center_x"])}
    return start, {key: sources[key] for key in GEOMETRY_KEYS}
