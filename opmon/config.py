"""One TOML file configures every service, so ports and paths are set in one place.

`load_config(None)` gives the packaged defaults (`default_config.toml`); a user file overrides
only the keys it names. Unknown keys are errors, so a typo never silently keeps a default.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from opmon.errors import ConfigError


@dataclass
class Ports:
    """TCP ports on `Config.host`; see docs/protocol.md for who binds what."""

    frames_archive: int = 5550
    frames_live: int = 5551
    docs: int = 5552
    maps_archive: int = 5553
    frames_archive_ack: int = 5554
    display_live: int = 5555
    display_acquisition: int = 5556
    display_archive: int = 5557
    control: int = 5558


@dataclass
class StreamConfig:
    """Queue depths, how long a blocked sender waits before it reports a stall, and the bound on
    the archive stream's unacknowledged messages (held in memory until the archiver's flush)."""

    sndhwm: int = 200
    rcvhwm: int = 200
    stall_timeout_s: float = 30.0
    archive_spool_bytes: int = 1 << 30


@dataclass
class ArchiveConfig:
    """Where runs are archived and how often the SWMR files are flushed."""

    dir: str = "opmon-archive"
    flush_interval_s: float = 0.5


@dataclass
class LiveConfig:
    """Live processor: worker processes, display rate and accumulator options."""

    workers: int = 1
    publish_interval_s: float = 0.25
    threshold: int = 0
    background: str = "auto"
    register: str = "tilt"         # tilt|auto|off: register the eta scans of each final map (as `opmon process --register`)
    powder_spots: str = "auto"     # auto|off: replace each map's powder-arc spots (as `opmon process --powder-spots`)
    peak_fit: str = "off"          # gauss: fit each final map's pixels too (as `opmon process --peak-fit gauss`; maps/fit)


DETECTOR_COMPRESSIONS = ("none", "bslz4")


@dataclass
class DetectorConfig:
    """The simulated detector: `compression = "bslz4"` compresses each frame at the source, as an
    Eiger's FPGA does, and the archiver gets that chunk alone (docs/protocol.md, chunk-only
    frames); "none" sends raw frames. The live processor always gets raw frames."""

    compression: str = "none"


@dataclass
class ControlConfig:
    """Steering credential (empty: environment OPMON_CONTROL_TOKEN or a per-session token)."""

    token: str = ""


@dataclass
class Config:
    """The whole configuration."""

    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    stream: StreamConfig = field(default_factory=StreamConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def endpoint(self, name: str) -> str:
        """``tcp://host:port`` of the channel `name` (a field of `Ports`)."""
        if not hasattr(self.ports, name):
            raise ConfigError(f"no port named {name!r}; known: {', '.join(f.name for f in dataclasses.fields(Ports))}")
        return f"tcp://{self.host}:{getattr(self.ports, name)}"


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key}: expected a table, got {value!r}")
            _apply(current, value, f"{where}.{key}")
            continue
        expected = type(current)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != isinstance(current, bool):
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
        setattr(obj, key, value)


def _check(config: Config) -> None:
    for f in dataclasses.fields(Ports):
        port = getattr(config.ports, f.name)
        if not 1 <= port <= 65535:
            raise ConfigError(f"ports.{f.name}: {port} is not a TCP port (1..65535)")
    if config.live.workers < 1:
        raise ConfigError(f"live.workers: {config.live.workers}, expected >= 1")
    if config.stream.archive_spool_bytes <= 0:
        raise ConfigError(f"stream.archive_spool_bytes: {config.stream.archive_spool_bytes}, expected > 0")
    if config.archive.flush_interval_s <= 0:
        raise ConfigError(f"archive.flush_interval_s: {config.archive.flush_interval_s}, expected > 0")
    _check_values(config)


def _check_values(config: Config) -> None:
    """Values that parse but cannot work: caught at load, before any service starts."""
    for key, value in (("stream.sndhwm", config.stream.sndhwm), ("stream.rcvhwm", config.stream.rcvhwm)):
        if value < 0:
            raise ConfigError(f"{key}: {value}, expected >= 0 (0 = unlimited)")
    for key, value in (("stream.stall_timeout_s", config.stream.stall_timeout_s),
                       ("live.publish_interval_s", config.live.publish_interval_s)):
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"{key}: {value}, expected a finite number > 0")
    if config.live.threshold < 0:
        raise ConfigError(f"live.threshold: {config.live.threshold}, expected >= 0")
    if config.live.background not in ("auto", "flat", "none"):
        try:
            rate = float(config.live.background)
        except ValueError:
            rate = -1.0
        if not rate >= 0:
            raise ConfigError(f"live.background: {config.live.background!r}, expected 'auto', 'flat', 'none' or a rate >= 0")
    if config.live.register not in ("auto", "tilt", "off"):
        raise ConfigError(f"live.register: {config.live.register!r}, expected 'auto', 'tilt' or 'off'")
    if config.live.powder_spots not in ("auto", "off"):
        raise ConfigError(f"live.powder_spots: {config.live.powder_spots!r}, expected 'auto' or 'off'")
    if config.live.peak_fit not in ("off", "gauss"):      # processors/peak_fit.PEAK_FIT_MODELS (not imported: numpy, h5py)
        raise ConfigError(f"live.peak_fit: {config.live.peak_fit!r}, expected 'off' or 'gauss'")
    if config.detector.compression not in DETECTOR_COMPRESSIONS:
        raise ConfigError(f"detector.compression: {config.detector.compression!r}, expected one of "
                          f"{', '.join(repr(c) for c in DETECTOR_COMPRESSIONS)}")
    if not config.host:
        raise ConfigError("host: empty, expected an address such as 127.0.0.1")
    if not config.archive.dir:
        raise ConfigError("archive.dir: empty, expected a directory")
    ports = [(f.name, getattr(config.ports, f.name)) for f in dataclasses.fields(Ports)]
    for i, (name, port) in enumerate(ports):
        for other, port2 in ports[:i]:
            if port == port2:
                raise ConfigError(f"ports.{name}: {port} is also ports.{other}; every channel needs its own port")


def load_config(path: str | Path | None = None) -> Config:
    """Defaults, then the file at `path` (if given) on top.

    Raises
    ------
    ConfigError
        naming the file and key that is unreadable, unknown or of the wrong type.
    """
    config = Config()
    text = resources.files("opmon").joinpath("default_config.toml").read_text()
    _apply(config, tomllib.loads(text), "default_config.toml")
    if path is not None:
        p = Path(path)
        try:
            values = tomllib.loads(p.read_text())
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not a text TOML file ({exc.reason})") from exc
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        _apply(config, values, str(p))
    _check(config)
    return config
