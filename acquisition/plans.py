"""Operando plans: maps that follow the cell (thresholds, plateaus, period, requests, steps).

Both plans validate every setpoint and axis position against the hard limits before the run
opens, log the potentiostat as its own stream at >= 1 Hz, and leave the cell in the
potentiostat's safe state on any exit (normal end, error, abort); pause and resume are
handled by the potentiostat's own pause/resume hooks, which the RunEngine calls.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from ophyd_async.plan_stubs import ensure_connected
from bluesky.utils import MsgGenerator

from opmon.acquisition.cell_state import CellMode
from opmon.acquisition.decisions import SteeringLog, action, describe_rule, record
from opmon.acquisition.detector import SxdmDetector
from opmon.acquisition.mapping import CellMonitor, FlyScan, MapGrid, acquire_map, check_fly, check_map
from opmon.acquisition.motion import Diffractometer, PiezoStage
from opmon.acquisition.potentiostat import HIGH_IMPEDANCE, CellCommand, Potentiostat
from opmon.acquisition.steering_requests import RequestReader, SteeringRequests
from opmon.acquisition.survey import FrameTotal, PhaseTracking, track_phase
from opmon.acquisition.triggers import (AnyOf, CellReading, ForAWhile, MapGate, Region, TriggerRule, rule_from_values,
                                        rule_values)
from opmon.errors import ConfigError, LimitError, OpmonError


@dataclass
class AcquiredMap:
    """Why and when a map was taken (returned by the plans, also in the `maps` stream)."""

    map_number: int
    reason: str
    start: CellReading
    frames: int = 0
    region: Region | None = None
    offset_um: tuple[float, float] = (0.0, 0.0)   # the scan region's shift from the run's grid (x, y)


@dataclass
class StepRecord:
    """One potentiostatic step: where it ended and why."""

    voltage: float
    end: CellReading
    reached_cutoff: bool
    map: AcquiredMap | None = None


@dataclass
class SeriesResult:
    """What an operando plan did: run uid, maps, steps, how it ended."""

    uid: str
    maps: list[AcquiredMap] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    end_reason: str = ""
    origin_um: tuple[float, float] = (0.0, 0.0)   # the grid's origin in the start document


def set_cell(potentiostat: Potentiostat, command: CellCommand) -> MsgGenerator[None]:
    """Command the cell; a command beyond a limit raises LimitError before any message is sent."""
    checked = potentiostat.check(command)
    yield from bps.mv(potentiostat, checked)


def _safe_cleanup(potentiostat: Potentiostat) -> MsgGenerator[None]:
    # Computed when it runs, so a "hold" safe state holds the voltage of that moment.
    yield from bps.mv(potentiostat, potentiostat.safe_command())


def _take_map(result: SeriesResult, reason: str, start: CellReading, detector: SxdmDetector, stage: PiezoStage,
              diffractometer: Diffractometer, potentiostat: Potentiostat, grid: MapGrid, etas: Sequence[float],
              order: str, region: Region | None, monitor: CellMonitor,
              readings: list[CellReading] | None = None, fly: FlyScan | None = None) -> MsgGenerator[AcquiredMap]:
    record = AcquiredMap(map_number=len(result.maps), reason=reason, start=start, region=region,
                         offset_um=(grid.origin_um[0] - result.origin_um[0], grid.origin_um[1] - result.origin_um[1]))
    result.maps.append(record)
    yield from bps.mv(detector.map_number, record.map_number, detector.map_trigger, reason)
    # the map's number, its reason and the cell at its start, as their own stream (not a child read)
    yield from bps.trigger_and_read([potentiostat, detector.map_number, detector.map_trigger], name="maps")
    record.frames = yield from acquire_map(detector, stage, diffractometer, grid, etas, map_number=record.map_number,
                                          order=order, region=region, monitor=monitor, readings=readings, fly=fly)
    yield from bps.mv(detector.map_done, record.map_number)   # the map ends in the stream now: final maps follow
    return record


def _undo_rule(rule: TriggerRule) -> list[dict[str, Any]]:
    """The action restoring `rule`, when it has plain values (none for a spent or custom rule)."""
    try:
        values = rule_values(rule)
        rule_from_values(**values)
    except ConfigError:
        return []
    return [action("Undo: restore the previous rule", "set_trigger", reason="undo: previous trigger rule restored",
                   **values)]


def _asked_rule(values: dict[str, Any], current: TriggerRule) -> TriggerRule:
    """The rule a request's plain values describe; with `for_s`, it holds that long, then `current` returns."""
    values = dict(values)
    hold = values.pop("for_s", None)
    rule = rule_from_values(**values)
    return rule if hold is None else ForAWhile(rule, current, float(hold))


def _grid_of(asked: dict[str, Any]) -> MapGrid:
    return MapGrid((int(asked["shape"][0]), int(asked["shape"][1])), float(asked["step_um"]),
                   (float(asked["origin_um"][0]), float(asked["origin_um"][1])))


def _undo_grid(grid: MapGrid) -> list[dict[str, Any]]:
    """The action restoring the raster `grid`."""
    return [action("Undo: restore the previous grid", "set_grid", reason="undo: previous map grid restored",
                   shape=list(grid.shape), step_um=grid.step_um, origin_um=list(grid.origin_um))]


def _undo_region(region: Region | None) -> list[dict[str, Any]]:
    """The action restoring the map region `region` (None: the whole grid)."""
    window = {} if region is None else dict(zip(("r0", "r1", "c0", "c1"), region))
    return [action("Undo: restore the previous region", "set_region", reason="undo: previous map region restored",
                   **window)]
def _moved_grid(steering: SteeringLog, stage: PiezoStage, diffractometer: Diffractometer, grid: MapGrid,
                etas: Sequence[float], order: str, offset: tuple[float, float],
                asked: tuple[tuple[float, float], str]) -> MsgGenerator[tuple[float, float]]:
    """Apply a requested region shift if every point of the moved grid is within the stage's
    travel; either way the decision and its reason go to the `steering` stream. Returns the
    shift in force."""
    new, why = asked
    try:
        check_map(stage, diffractometer, grid.shifted(new), etas, order)
    except OpmonError as exc:
        yield from record(steering, "map offset refused", f"{why}; refused: {exc}", offset_um=list(new),
                          kept_um=list(offset))
        return offset
    yield from record(steering, "map offset", why, offset_um=list(new), previous_um=list(offset))
    return new




def operando_series(potentiostat: Potentiostat, stage: PiezoStage, diffractometer: Diffractometer,
                    detector: SxdmDetector, *, grid: MapGrid, etas: Sequence[float],
                    triggers: TriggerRule | Sequence[TriggerRule], charge: CellCommand | None = None,
                    order: str = "eta-outer", region: Region | None = None, requests: SteeringRequests | None = None,
                    max_maps: int | None = None, max_cell_time_s: float | None = None, stop_at_rest: bool = True,
                    poll_s: float = 0.01, cell_period_s: float = 0.5,
                    md: dict[str, Any] | None = None, fly: FlyScan | None = None,
                    phase: PhaseTracking | None = None, map_gate: MapGate | None = None) -> MsgGenerator[SeriesResult]:
    """Maps while the cell charges, started by trigger rules or by steering requests.

    Parameters
    ----------
    triggers : one rule or several (combined with AnyOf): VoltageThresholds, PlateauTrigger,
        PeriodicTrigger, RestTrigger. Rules see every potentiostat reading, during maps too.
    charge : command applied at the start (e.g. galvanostatic C/15 with a cut-off); None
        leaves the cell as it is.
    requests : steering soft signals read between frames: on-demand maps, a new rule or map region
        mid-run, finish, and decisions taken outside the plan; each change is recorded with its
        reason and the action that would undo it in the `steering` stream.
        A shift of the scan region in µm (drift re-centring) is refused, with its reason, if it
        leaves the stage's travel.
    max_maps, max_cell_time_s : end the series after this many maps / this cell time (s).
    stop_at_rest : end when a galvanostatic `charge` has reached its cut-off.
    poll_s : wall seconds between potentiostat polls while waiting for a trigger.
    fly : fly every map row by row (`mapping.fly_map`; eta-outer order) instead of stepping.
    phase : phase tracking (`survey.PhaseTracking`): surveys asked for between maps, and the
        rocking scan and delta re-centred on the reflection found (or proposed).
    map_gate : holds each map asked for (by any rule, also one set mid-run, or a request) until
        it is ready, e.g. until the last map's drift re-centring is decided so that maps taken
        back to back are shifted in time; meanwhile the plan polls and reads the steering
        signals, and does not end (the gate's wait is bounded), so a held map is not lost.

    Returns
    -------
    SeriesResult with one AcquiredMap per map.
    """
    if charge is not None:
        charge = potentiostat.check(charge)
    check_map(stage, diffractometer, grid, etas, order)
    check_fly(stage, order, fly)
    if region is not None:
        grid.points(region)
    rule: TriggerRule = triggers if isinstance(triggers, TriggerRule) else AnyOf(*triggers)
    if not isinstance(rule, TriggerRule):
        raise ConfigError(f"operando_series triggers={triggers!r}: expected a rule or a list of rules")
    monitor = CellMonitor(potentiostat, cell_period_s)
    steering = SteeringLog()
    counter = FrameTotal(detector) if phase is not None else None
    etas = [float(e) for e in etas]
    meta = {"plan_name": "operando_series", "order": order, "etas": [float(e) for e in etas],
            "map_step_um": grid.step_um, "map_origin_um": list(grid.origin_um),
            "charge": None if charge is None else {"mode": charge.mode.value, "setpoint": charge.setpoint,
                                                   "cutoff": charge.cutoff},
            "geometry": detector.geometry_metadata(grid.shape), "fly": fly is not None, **(md or {})}

    def series() -> MsgGenerator[SeriesResult]:
        nonlocal rule, region, grid, etas
        yield from ensure_connected(steering, *([requests] if requests is not None else []),
                                    *([counter] if counter is not None else []))
        reader = RequestReader(requests) if requests is not None else None
        offset = (0.0, 0.0)                 # the scan region's shift from `grid` (drift re-centring)
        uid = yield from bps.open_run(meta)
        result = SeriesResult(uid=uid, origin_um=grid.origin_um)
        yield from bps.mv(detector.run_uid, uid, detector.map_ny, grid.shape[0], detector.map_nx, grid.shape[1])
        if charge is not None:
            yield from set_cell(potentiostat, charge)
        pending: list[str] = []
        while True:
            yield from bps.checkpoint()
            reading = yield from monitor.poll()
            if reader is not None:
                asked = yield from reader.poll()
                for decision, why in asked.notes:
                    yield from record(steering, decision, why)
                if asked.rule is not None:
                    undo = _undo_rule(rule)
                    rule = _asked_rule(asked.rule, rule)
                    yield from record(steering, "trigger rule", asked.rule_reason, undo, **describe_rule(rule))
                if asked.grid is not None:
                    try:
                        new_grid = _grid_of(asked.grid)
                        check_map(stage, diffractometer, new_grid, etas, order)
                    except (ConfigError, LimitError, KeyError, TypeError, ValueError) as exc:   # the grid stays
                        yield from record(steering, "map grid refused", f"{asked.grid_reason}: {exc}", **asked.grid)
                    else:
                        undo = _undo_grid(grid)
                        grid, region = new_grid, None
                        yield from bps.mv(detector.map_ny, grid.shape[0], detector.map_nx, grid.shape[1])
                        yield from record(steering, "map grid", asked.grid_reason, undo, shape=list(grid.shape),
                                          step_um=grid.step_um, origin_um=list(grid.origin_um))
                if asked.region != "unchanged":
                    try:
                        if asked.region is not None:
                            grid.points(asked.region)  # type: ignore[arg-type]
                    except ConfigError as exc:        # beyond the grid: the map region stays
                        yield from record(steering, "map region refused", f"{asked.region_reason}: {exc}",
                                          region=region)
                    else:
                        undo = _undo_region(region)
                        region = asked.region  # type: ignore[assignment]
                        yield from record(steering, "map region", asked.region_reason, undo, region=region)
                for shift in asked.offsets:
                    offset = yield from _moved_grid(steering, stage, diffractometer, grid, etas, order, offset, shift)
                pending.extend(asked.maps)
            if phase is not None and counter is not None:
                etas = yield from track_phase(phase, steering, counter, detector, stage, diffractometer, grid, etas)
            reason = rule.update(reading)
            if reason:
                pending.append(reason)
            note = map_gate.ready() if pending and map_gate is not None else ""
            if note is None:                  # held (bounded by the gate): poll again, the steering signals too
                yield from bps.sleep(poll_s)
                continue
            if pending:
                readings: list[CellReading] = []
                why = "; ".join(pending) + note
                yield from record(steering, "map", why, map=len(result.maps), voltage_v=reading.voltage,
                                  region=region, offset_um=list(offset))
                yield from _take_map(result, why, reading, detector, stage, diffractometer,
                                     potentiostat, grid.shifted(offset), etas, order, region, monitor, readings, fly)
                # readings taken during the map reach the rule now, in order
                pending = [why for why in (rule.update(seen) for seen in readings) if why]
            if max_maps is not None and len(result.maps) >= max_maps:
                result.end_reason = f"{max_maps} maps taken"
            elif max_cell_time_s is not None and reading.time >= max_cell_time_s:
                result.end_reason = f"cell time {reading.time:.0f} s >= {max_cell_time_s:.0f} s"
            elif (stop_at_rest and charge is not None and charge.mode is CellMode.GALVANOSTATIC
                  and reading.mode != charge.mode.value):
                result.end_reason = f"cut-off {charge.cutoff} V reached"
            elif reader is not None and (yield from reader.finish_asked()) is not None:
                result.end_reason = reader.finishing  # type: ignore[assignment]
            if result.end_reason:
                if reader is not None:
                    for decision, why in (yield from reader.poll()).notes:
                        yield from record(steering, decision, why)
                yield from record(steering, "end", result.end_reason, maps=len(result.maps))
                break
            if not pending:
                yield from bps.sleep(poll_s)
        yield from monitor.poll(force_event=True)
        yield from bps.close_run()
        return result

    staged = [detector, *([stage.flyer] if fly is not None and stage.flyer is not None else [])]
    return (yield from bpp.finalize_wrapper(bpp.stage_wrapper(series(), staged), _safe_cleanup(potentiostat)))


def potentiostatic_steps(potentiostat: Potentiostat, stage: PiezoStage, diffractometer: Diffractometer,
                         detector: SxdmDetector, *, steps: Sequence[float], current_cutoff_a: float,
                         timeout_s: float, grid: MapGrid, etas: Sequence[float], order: str = "eta-outer",
                         region: Region | None = None, poll_s: float = 0.01, cell_period_s: float = 0.5,
                         md: dict[str, Any] | None = None) -> MsgGenerator[SeriesResult]:
    """Seed 001's protocol: hold each voltage until |I| < cut-off (or timeout), go high impedance, map.

    Parameters
    ----------
    steps : voltages (V), all checked against the limits before the run opens.
    current_cutoff_a : a step ends when |I| falls below this (A).
    timeout_s : a step also ends after this much cell time (s).
    """
    commands = [potentiostat.check(CellCommand(CellMode.POTENTIOSTATIC, float(v))) for v in steps]
    if not commands:
        raise ConfigError("potentiostatic_steps: steps is empty")
    if current_cutoff_a <= 0 or timeout_s <= 0:
        raise ConfigError(f"potentiostatic_steps current_cutoff_a={current_cutoff_a}, timeout_s={timeout_s}: must be positive")
    check_map(stage, diffractometer, grid, etas, order)
    monitor = CellMonitor(potentiostat, cell_period_s)
    steering = SteeringLog()
    meta = {"plan_name": "potentiostatic_steps", "steps": [c.setpoint for c in commands],
            "current_cutoff_a": current_cutoff_a, "timeout_s": timeout_s, "order": order,
            "etas": [float(e) for e in etas], "map_step_um": grid.step_um, "map_origin_um": list(grid.origin_um),
            "geometry": detector.geometry_metadata(grid.shape), **(md or {})}

    def series() -> MsgGenerator[SeriesResult]:
        yield from ensure_connected(steering)
        uid = yield from bps.open_run(meta)
        result = SeriesResult(uid=uid)
        yield from bps.mv(detector.run_uid, uid, detector.map_ny, grid.shape[0], detector.map_nx, grid.shape[1])
        for command in commands:
            yield from bps.checkpoint()
            yield from set_cell(potentiostat, command)
            start = yield from monitor.poll(force_event=True)
            while True:
                reading = yield from monitor.poll()
                reached = abs(reading.current) < current_cutoff_a and reading.time > start.time
                if reached or reading.time - start.time >= timeout_s:
                    break
                yield from bps.sleep(poll_s)
            yield from set_cell(potentiostat, HIGH_IMPEDANCE)
            at_map = yield from monitor.poll(force_event=True)
            step = StepRecord(voltage=command.setpoint, end=reading, reached_cutoff=reached)
            result.steps.append(step)
            why = f"step {command.setpoint:.3f} V ended ({'cut-off' if reached else 'timeout'})"
            yield from record(steering, "map", why, map=len(result.maps), voltage_v=at_map.voltage, region=region)
            step.map = yield from _take_map(result, why, at_map, detector, stage, diffractometer, potentiostat, grid,
                                            etas, order, region, monitor)
        result.end_reason = f"{len(commands)} steps done"
        yield from record(steering, "end", result.end_reason, maps=len(result.maps))
        yield from monitor.poll(force_event=True)
        yield from bps.close_run()
        return result

    return (yield from bpp.finalize_wrapper(bpp.stage_wrapper(series(), [detector]), _safe_cleanup(potentiostat)))
