"""One SXDM map as a bluesky plan: raster the grid at every rocking angle, frame by frame.

Plans here use only device interfaces: the stage and diffractometer axes are movable
signals, the detector is triggered and read, and frames are tagged through the detector's
`map_number` / `map_index` signals. A checkpoint follows every saved frame, so a pause
rewinds at most the frame in flight and never a frame already saved.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg, MsgGenerator

from ophyd_async.core import DetectorTrigger, TriggerInfo

from opmon.acquisition.detector import SxdmDetector
from opmon.acquisition.flying import fly_lines
from opmon.acquisition.motion import Diffractometer, PiezoStage
from opmon.acquisition.potentiostat import Potentiostat
from opmon.acquisition.triggers import CellReading, Region
from opmon.errors import ConfigError

ORDERS = ("eta-outer", "point-outer")


@dataclass(frozen=True)
class MapGrid:
    """The raster: (ny, nx) points, `step_um` apart, starting at `origin_um` = (x0, y0)."""

    shape: tuple[int, int]
    step_um: float
    origin_um: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 1 or self.step_um <= 0:
            raise ConfigError(f"MapGrid shape={self.shape}, step_um={self.step_um}: need two positive sizes and a positive step")

    def shifted(self, offset_um: tuple[float, float]) -> MapGrid:
        """The same raster moved by `offset_um` = (dx, dy): map pixel (r, c) keeps its index and
        lands (dx, dy) µm further, so maps of a moved region line up pixel for pixel."""
        dx, dy = (float(v) for v in offset_um)
        return MapGrid(self.shape, self.step_um, (self.origin_um[0] + dx, self.origin_um[1] + dy))

    def points(self, region: Region | None = None) -> list[tuple[int, float, float]]:
        """Row-major (map_index, x_um, y_um) of the grid points inside `region` (r0, r1, c0, c1)."""
        ny, nx = self.shape
        r0, r1, c0, c1 = (0, ny, 0, nx) if region is None else region
        if not (0 <= r0 < r1 <= ny and 0 <= c0 < c1 <= nx):
            raise ConfigError(f"map region {region!r} is not a non-empty window of the {ny}x{nx} grid")
        x0, y0 = self.origin_um
        return [(r * nx + c, x0 + c * self.step_um, y0 + r * self.step_um)
                for r in range(r0, r1) for c in range(c0, c1)]


def check_map(stage: PiezoStage, diffractometer: Diffractometer, grid: MapGrid, etas: Sequence[float],
              order: str = "eta-outer") -> None:
    """Raise before the run if any point or angle of the map is beyond an axis limit."""
    if order not in ORDERS:
        raise ConfigError(f"map order {order!r}: expected one of {', '.join(ORDERS)}")
    if len(etas) == 0:
        raise ConfigError("map etas: need at least one rocking angle")
    for _, x, y in grid.points():
        stage.check(x=x, y=y)
    for eta in etas:
        diffractometer.check(eta=float(eta))


class CellMonitor:
    """Reads the potentiostat between frames and at every poll.

    Every read feeds the trigger rules; at least every `period_s` of wall time the read is
    also saved as an event of the `potentiostat` stream, so the cell is logged at >= 1 Hz
    whether or not a map runs.
    """

    def __init__(self, potentiostat: Potentiostat, period_s: float = 0.5) -> None:
        if not 0 < period_s <= 1.0:
            raise ConfigError(f"potentiostat log period_s={period_s}: must be in (0, 1] s (>= 1 Hz)")
        self.pot, self.period_s = potentiostat, period_s
        self._last = -float("inf")
        self.latest: CellReading | None = None
        self.events = 0

    def poll(self, force_event: bool = False) -> MsgGenerator[CellReading]:
        """Read the cell; save an event if one is due (or forced). Returns the reading."""
        now = time.monotonic()
        if force_event or now - self._last >= self.period_s:
            readings = yield from bps.trigger_and_read([self.pot], name="potentiostat")
            self._last = now
            self.events += 1
        else:
            readings = yield from bps.read(self.pot)
        self.latest = CellReading(time=float(readings[self.pot.elapsed.name]["value"]),
                                  voltage=float(readings[self.pot.voltage.name]["value"]),
                                  current=float(readings[self.pot.current.name]["value"]),
                                  mode=str(readings[self.pot.mode.name]["value"]))
        return self.latest


def frame_sequence(grid: MapGrid, etas: Sequence[float], order: str,
                   region: Region | None = None) -> list[tuple[float, int, float, float]]:
    """(eta, map_index, x, y) of every frame of a map, in acquisition order."""
    points = grid.points(region)
    if order == "eta-outer":
        return [(float(eta), i, x, y) for eta in etas for i, x, y in points]
    if order == "point-outer":
        return [(float(eta), i, x, y) for i, x, y in points for eta in etas]
    raise ConfigError(f"map order {order!r}: expected one of {', '.join(ORDERS)}")


@dataclass
class FlyScan:
    """Fly instead of step: each map row is one line flown by `stage.flyer`, the detector
    triggered by the trajectory and exposing `point_time_s` per point (0: as fast as it can).
    One per run: it remembers whether the run's `primary` stream is declared."""

    point_time_s: float = 0.0005
    declared: bool = False

    def __post_init__(self) -> None:
        if not self.point_time_s >= 0:
            raise ConfigError(f"fly scan point_time_s={self.point_time_s}: must be >= 0 s")


def check_fly(stage: PiezoStage, order: str, fly: FlyScan | None) -> None:
    """Raise before the run if a fly scan is asked of a stage that cannot fly, or in point order."""
    if fly is None:
        return
    if stage.flyer is None:
        raise ConfigError(f"fly scan: stage {stage.name!r} has no trajectory controller (step scans only)")
    if order != "eta-outer":
        raise ConfigError(f"fly scan: map order {order!r} cannot fly (a line holds one angle); use eta-outer")


def fly_map(detector: SxdmDetector, stage: PiezoStage, diffractometer: Diffractometer, grid: MapGrid,
            etas: Sequence[float], fly: FlyScan, *, region: Region | None = None,
            monitor: CellMonitor | None = None, readings: list[CellReading] | None = None) -> MsgGenerator[int]:
    """The frames of one map (map number already set), a row at a time: one line per
    prepare / kickoff / complete of the stage's flyer and the detector, saved as one StreamDatum
    range of the `primary` stream, then a checkpoint. Returns the number of frames taken.

    A deferred pause waits for the line in flight to end; an immediate pause or an abort drops
    it (the detector records a line whole or not at all) and a resume flies it again."""
    flyer = stage.flyer
    assert flyer is not None
    lines = fly_lines(grid.shape, grid.step_um, grid.origin_um, region, fly.point_time_s)
    n = 0
    for eta in etas:
        yield from bps.mv(diffractometer.eta, float(eta))
        for line in lines:
            # bare messages, as bps.prepare/kickoff_all/complete_all/collect yield them: each
            # bps call also formats the call stack (~0.5 ms), which would bound short lines
            info = TriggerInfo(trigger=DetectorTrigger.EXTERNAL_EDGE, livetime=fly.point_time_s,
                               number_of_events=line.n_points)
            group = f"fly-line-{uuid.uuid4().hex[:8]}"
            yield Msg("prepare", flyer, line, group=group)
            yield Msg("prepare", detector, info, group=group)     # arms it: it waits for the pulses
            yield Msg("wait", None, group=group)
            if not fly.declared:
                yield from bps.declare_stream(detector, name="primary", collect=True)
                fly.declared = True
            yield Msg("kickoff", detector, group=group)
            # The flyer is kicked off through `wait_for`, not a `kickoff` message: the RunEngine
            # would then expect to `collect` it, and at the end of the run log an error for a
            # flyer that has nothing to collect (the detector holds the data).
            started = yield Msg("wait_for", None, [flyer.kickoff])
            for task in started:
                task.result()                 # a failed kickoff raises here
            yield Msg("wait", None, group=group)
            yield Msg("complete", detector, group=group)
            yield Msg("complete", flyer, group=group)
            yield Msg("wait", None, group=group)
            yield Msg("collect", detector, stream=False, return_payload=False, name="primary")
            yield Msg("checkpoint")         # after the save: a pause rewinds to the next line's start
            n += line.n_points
            if monitor is not None:
                reading = yield from monitor.poll()
                if readings is not None:
                    readings.append(reading)
    return n


def acquire_map(detector: SxdmDetector, stage: PiezoStage, diffractometer: Diffractometer, grid: MapGrid,
               etas: Sequence[float], *, map_number: int, order: str = "eta-outer", region: Region | None = None,
               monitor: CellMonitor | None = None, readings: list[CellReading] | None = None,
               fly: FlyScan | None = None) -> MsgGenerator[int]:
    """Take one map inside an open run; returns the number of frames taken.

    One eta at a time over the whole grid (``eta-outer``, as ID01 does) or all angles at
    each point (``point-outer``). Stepping, every frame is an event of the `primary` stream;
    flying (`fly`), every row is one StreamDatum range of it (`fly_map`).
    """
    yield from bps.mv(detector.map_number, map_number)
    if fly is not None:
        yield from bps.checkpoint()
        return (yield from fly_map(detector, stage, diffractometer, grid, etas, fly, region=region,
                                   monitor=monitor, readings=readings))
    n = 0
    yield from bps.checkpoint()
    last: dict[int, float] = {}
    for eta, index, x, y in frame_sequence(grid, etas, order, region):
        # Move only what changes (eta once per pass in eta-outer order, y once per row).
        targets = [(diffractometer.eta, eta), (stage.x, x), (stage.y, y), (detector.map_index, index)]
        args: list[Any] = []
        for k, (signal, value) in enumerate(targets):
            if last.get(k) != value:
                args += [signal, value]
                last[k] = value
        yield from bps.mv(*args)
        yield from bps.trigger_and_read([detector, stage, diffractometer])
        # Right after the save: a pause rewinds at most the frame in flight, never a saved one.
        yield from bps.checkpoint()
        n += 1
        if monitor is not None:
            reading = yield from monitor.poll()
            if readings is not None:
                readings.append(reading)
    return n


def sxdm_map(detector: SxdmDetector, stage: PiezoStage, diffractometer: Diffractometer, grid: MapGrid,
             etas: Sequence[float], *, order: str = "eta-outer", region: Region | None = None,
             potentiostat: Potentiostat | None = None, cell_period_s: float = 0.5,
             md: dict[str, Any] | None = None, fly: bool = False, point_time_s: float = 0.0005) -> MsgGenerator[str]:
    """A single SXDM map as its own run; returns the run uid.

    Limits of every axis are checked before the run opens. With a potentiostat, the cell is
    logged as the `potentiostat` stream throughout. `fly`: each row is flown by the stage's
    trajectory, which triggers the detector every `point_time_s` (`fly_map`); eta-outer only.
    """
    check_map(stage, diffractometer, grid, etas, order)
    flying = FlyScan(point_time_s) if fly else None
    check_fly(stage, order, flying)
    if region is not None:
        grid.points(region)
    monitor = CellMonitor(potentiostat, cell_period_s) if potentiostat is not None else None
    meta = {"plan_name": "sxdm_map", "order": order, "etas": [float(e) for e in etas], "fly": fly,
            "map_step_um": grid.step_um, "map_origin_um": list(grid.origin_um),
            "geometry": detector.geometry_metadata(grid.shape), **(md or {})}

    @bpp.stage_decorator([detector, *([stage.flyer] if flying else [])])
    def inner() -> MsgGenerator[str]:
        uid = yield from bps.open_run(meta)
        yield from bps.mv(detector.run_uid, uid, detector.map_ny, grid.shape[0], detector.map_nx, grid.shape[1],
                          detector.map_trigger, "sxdm_map")
        if monitor is not None:
            yield from monitor.poll(force_event=True)
        yield from acquire_map(detector, stage, diffractometer, grid, etas, map_number=0, order=order,
                              region=region, monitor=monitor, fly=flying)
        yield from bps.close_run()
        return uid

    return (yield from inner())
