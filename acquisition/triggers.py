"""When to start a map: rules fed with potentiostat readings, and the steering request box.

Rules see every reading the plan takes (cell time, voltage, current) and answer with a reason
string when a map should start. They fire on *state*, not on an edge, so a rule installed
while its condition already holds fires at once (PEERS.md #4, bluesky #1970).
`rule_from_values` / `rule_values` turn a rule into the plain values the steering channel and
the plan's steering signals carry (`opmon.acquisition.steering_requests`), and back.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from opmon.errors import ConfigError


@dataclass(frozen=True)
class CellReading:
    """One potentiostat reading as the rules see it: cell time (s), voltage (V), current (A)."""

    time: float
    voltage: float
    current: float
    mode: str = ""


@runtime_checkable
class TriggerRule(Protocol):
    """Decides from successive readings whether a map should start now."""

    def update(self, reading: CellReading) -> str | None:
        """Feed one reading; return a reason to map now, or None."""
        ...


@runtime_checkable
class MapGate(Protocol):
    """Holds the maps that rules and requests ask for until something else is ready (e.g. the
    re-centring of the last map, `opmon.recentre_watch.RecentringGate`); a gate must give way
    after a bounded wait, the plan asks it at each poll while a map waits."""

    def ready(self) -> str | None:
        """None: hold the map to the next poll; else it starts now, this note added to its reason ('' for none)."""
        ...


class VoltageThresholds:
    """Map once when the voltage reaches each threshold (charge: V >= t; discharge: V <= t).

    Thresholds already passed when the rule is installed fire together, once.
    """

    def __init__(self, thresholds: Iterable[float], direction: str = "charge") -> None:
        if direction not in ("charge", "discharge"):
            raise ConfigError(f"VoltageThresholds direction={direction!r}: expected 'charge' or 'discharge'")
        values = sorted(float(t) for t in thresholds)
        if not values or not all(np.isfinite(values)):
            raise ConfigError(f"VoltageThresholds thresholds={list(thresholds)!r}: need at least one finite voltage")
        self.direction = direction
        self.pending = values if direction == "charge" else values[::-1]
        self.fired: list[tuple[float, CellReading]] = []

    def update(self, reading: CellReading) -> str | None:
        passed = []
        while self.pending and ((reading.voltage >= self.pending[0]) if self.direction == "charge"
                                else (reading.voltage <= self.pending[0])):
            passed.append(self.pending.pop(0))
        if not passed:
            return None
        for t in passed:
            self.fired.append((t, reading))
        return f"voltage threshold {passed[-1]:.4f} V reached at {reading.voltage:.4f} V"


class PlateauTrigger:
    """Map when a plateau begins: |dV/dt| below `max_slope_v_per_s` over the last `hold_s`.

    The slope is a least-squares fit over the readings of the hold window, so measurement
    noise does not fake a plateau. Fires once per plateau and re-arms only when the slope
    rises above `rearm_factor` x the limit: at a plateau's edge the fitted slope hovers around
    the limit, and re-arming at the limit itself let noise fire a second map moments after the
    first (which readings a plan sees depends on timing, so that happened now and then).
    With `only_under_current`, a cell at rest is not a plateau.
    """

    def __init__(self, max_slope_v_per_s: float = 5e-6, hold_s: float = 300.0, only_under_current: bool = True,
                 min_current_a: float = 1e-9, rearm_factor: float = 2.0) -> None:
        if max_slope_v_per_s <= 0 or hold_s <= 0:
            raise ConfigError(f"PlateauTrigger max_slope_v_per_s={max_slope_v_per_s}, hold_s={hold_s}: must be positive")
        if rearm_factor < 1:
            raise ConfigError(f"PlateauTrigger rearm_factor={rearm_factor}: must be >= 1")
        self.max_slope, self.hold_s = float(max_slope_v_per_s), float(hold_s)
        self.rearm_slope = float(rearm_factor) * self.max_slope
        self.only_under_current, self.min_current = only_under_current, float(min_current_a)
        self.history: deque[CellReading] = deque()
        self.armed = True
        self.fired: list[CellReading] = []
        self.last_slope: float | None = None

    def slope(self) -> float | None:
        """Fitted dV/dt (V/s) over the window, or None until the window is covered."""
        if len(self.history) < 3 or self.history[-1].time - self.history[0].time < self.hold_s:
            return None
        t = np.array([r.time for r in self.history])
        v = np.array([r.voltage for r in self.history])
        t = t - t.mean()
        return float(np.dot(t, v - v.mean()) / np.dot(t, t))

    def update(self, reading: CellReading) -> str | None:
        if self.only_under_current and abs(reading.current) < self.min_current:
            self.history.clear()  # rest is not a plateau; start the window again under current
            return None
        self.history.append(reading)
        # keep one reading at or before the window start so coverage is exact
        while len(self.history) > 2 and self.history[1].time <= reading.time - self.hold_s:
            self.history.popleft()
        slope = self.slope()
        self.last_slope = slope
        if slope is None:
            return None
        if abs(slope) >= self.rearm_slope:
            self.armed = True
        if abs(slope) >= self.max_slope:
            return None
        if self.armed:
            self.armed = False
            self.fired.append(reading)
            return f"plateau: |dV/dt| = {abs(slope):.2e} V/s < {self.max_slope:.1e} for {self.hold_s:.0f} s at {reading.voltage:.4f} V"
        return None


class PeriodicTrigger:
    """Map every `period_s` of cell time; the first map comes at once unless `start_now=False`."""

    def __init__(self, period_s: float, start_now: bool = True) -> None:
        if period_s <= 0:
            raise ConfigError(f"PeriodicTrigger period_s={period_s}: must be positive")
        self.period_s, self.start_now = float(period_s), start_now
        self.next_time: float | None = None

    def update(self, reading: CellReading) -> str | None:
        if self.next_time is None:
            self.next_time = reading.time if self.start_now else reading.time + self.period_s
        if reading.time >= self.next_time:
            while self.next_time <= reading.time:
                self.next_time += self.period_s
            return f"periodic ({self.period_s:.0f} s) at t={reading.time:.0f} s"
        return None


class RestTrigger:
    """Map when cycling pauses (|I| below `rest_current_a`), as seed 003's potentiostat trigger did.

    Fires once per rest; a cell already resting when the rule is installed fires at once.
    """

    def __init__(self, rest_current_a: float = 1e-8) -> None:
        self.rest_current = float(rest_current_a)
        self.resting = False

    def update(self, reading: CellReading) -> str | None:
        rest = abs(reading.current) < self.rest_current
        fire = rest and not self.resting
        self.resting = rest
        return f"cell at rest at {reading.voltage:.4f} V" if fire else None


class AnyOf:
    """Several rules at once; every rule sees every reading, the first reason wins."""

    def __init__(self, *rules: TriggerRule) -> None:
        self.rules: Sequence[TriggerRule] = rules

    def update(self, reading: CellReading) -> str | None:
        reasons = [r.update(reading) for r in self.rules]
        return next((r for r in reasons if r), None)


class ForAWhile:
    """`rule` for `hold_s` of cell time from its first reading, then `then` again (an onset's
    shorter period "for a while"). `then` sees every reading meanwhile, its reasons dropped, so
    it resumes in step (a threshold passed meanwhile does not fire late)."""

    def __init__(self, rule: TriggerRule, then: TriggerRule, hold_s: float) -> None:
        if not hold_s > 0:
            raise ConfigError(f"trigger rule for_s={hold_s}: must be > 0 s")
        self.rule, self.then, self.hold_s = rule, then, float(hold_s)
        self.until: float | None = None

    def update(self, reading: CellReading) -> str | None:
        if self.until is None:
            self.until = reading.time + self.hold_s
        later = self.then.update(reading)
        if reading.time < self.until:
            return self.rule.update(reading)
        return later


Region = tuple[int, int, int, int]


def rule_from_values(thresholds: list[float] | None = None, period_s: float | None = None,
                     plateau: bool | dict[str, float] = False, direction: str = "charge",
                     rest_current_a: float | None = None, **unknown: Any) -> TriggerRule:
    """A trigger rule from plain values: the form the control channel, the CLI and the plan's
    steering signals speak (`plateau` may be True or PlateauTrigger's keyword arguments)."""
    if unknown:
        raise ConfigError(f"trigger rule: unknown field(s) {sorted(unknown)}; use thresholds, period_s, plateau")
    rules: list[TriggerRule] = []
    if thresholds:
        rules.append(VoltageThresholds([float(t) for t in thresholds], direction))
    if period_s:
        if float(period_s) <= 0:
            raise ConfigError(f"trigger rule: period_s={period_s} must be > 0")
        rules.append(PeriodicTrigger(float(period_s)))
    if plateau:
        rules.append(PlateauTrigger(**plateau) if isinstance(plateau, dict) else PlateauTrigger())
    if rest_current_a is not None:
        rules.append(RestTrigger(float(rest_current_a)))
    if not rules:
        raise ConfigError("trigger rule: give at least one of thresholds, period_s, plateau")
    return rules[0] if len(rules) == 1 else AnyOf(*rules)


def rule_values(rule: TriggerRule) -> dict[str, Any]:
    """The plain values `rule_from_values` rebuilds `rule` from (thresholds still pending only).

    Raises ConfigError for a rule that has no plain form (an unknown class, two rules of a kind).
    """
    if isinstance(rule, AnyOf):
        out: dict[str, Any] = {}
        for part in rule.rules:
            values = rule_values(part)
            if set(values) & set(out) - {"direction"}:
                raise ConfigError(f"trigger rule {type(part).__name__} twice: has no plain-value form")
            out.update(values)
        return out
    if isinstance(rule, VoltageThresholds):
        return {"thresholds": sorted(rule.pending), "direction": rule.direction}
    if isinstance(rule, PeriodicTrigger):
        return {"period_s": rule.period_s}
    if isinstance(rule, PlateauTrigger):
        return {"plateau": {"max_slope_v_per_s": rule.max_slope, "hold_s": rule.hold_s}}
    if isinstance(rule, RestTrigger):
        return {"rest_current_a": rule.rest_current}
    if isinstance(rule, ForAWhile):       # restoring it means the rule it returns to
        return rule_values(rule.then)
    raise ConfigError(f"trigger rule {type(rule).__name__}: has no plain-value form for the steering signals")
