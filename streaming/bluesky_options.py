"""How a bluesky run's documents become maps: the options of `opmon live --source bluesky:`.

Which data key holds the frames, where each diffractometer angle is read (a data key of the
run, or a fixed value), the geometry the documents lack, and a map shape for scans that are
not grid scans. Parsed and checked here, before anything connects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from opmon.errors import ConfigError

ANGLES = ("eta", "phi", "nu", "delta")


@dataclass
class FollowOptions:
    """How documents become maps; every field has a command-line option of `opmon live --source bluesky:`."""

    detector: str | None = None            # data key of the frames; default: the only STREAM key of 2+ dimensions
    angles: dict[str, str | float] = field(default_factory=dict)   # angle -> data key or fixed degrees
    geometry: dict[str, float] = field(default_factory=dict)       # --geometry FILE.toml values
    geometry_source: str = "--geometry"
    map_shape: tuple[int, int] | None = None
    frame_wait_s: float = 30.0

    def angle_spec(self, name: str) -> str | float:
        return self.angles.get(name, name)


def parse_angle_options(items: list[str] | None) -> dict[str, str | float]:
    """``NAME=KEY`` or ``NAME=DEGREES`` items of ``--angle`` (NAME one of eta, phi, nu, delta).

    Raises
    ------
    ConfigError
        naming the item that is not of that form.
    """
    out: dict[str, str | float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in ANGLES or not value:
            raise ConfigError(f"--angle {item!r}: expected NAME=DATA_KEY or NAME=DEGREES, NAME one of {', '.join(ANGLES)}")
        try:
            number = float(value)
        except ValueError:
            out[name] = value
            continue
        if not math.isfinite(number):
            raise ConfigError(f"--angle {item!r}: {value} is not a finite angle")
        out[name] = number
    return out
