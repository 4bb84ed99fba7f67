"""When to start a map: rules fed with potentiostat readings, and the steering request box.

Rules see every reading the plan takes (cell time, voltage, current) and answer with a reason
string when a map should start. They fire on *state*, not on an edge, so a rule installed
while its condition already holds fires at once (PEERS.md #4, bluesky #1970).
`MapRequests` is how another thread (the dashboard's steering) asks for a map now, swaps the
rule or narrows the map region for the rest of a running `operando_series`.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


Region = tuple[int, int, int, int]


class MapRequests:
    """Thread-safe mailbox from steering to a running `operando_series`.

    Another thread calls `map_now`, `set_rule`, `set_region`, `set_offset` or `finish`; the plan drains the
    box between frames and at every poll, so changes apply for the rest of the run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: deque[str] = deque()
        self._rule: TriggerRule | None = None
        self._region: Region | None | str = "unchanged"
        self._finish = False
        self._notes: deque[tuple[str, str]] = deque()
        self._offsets: deque[tuple[tuple[float, float], str]] = deque()
        self.log: list[str] = []

    def map_now(self, reason: str = "on demand") -> None:
        """Ask for one map as soon as the current one (if any) ends."""
        with self._lock:
            self._maps.append(reason)

    def set_rule(self, rule: TriggerRule) -> None:
        """Replace the trigger rule for the rest of the run."""
        if not isinstance(rule, TriggerRule):
            raise ConfigError(f"set_rule: {rule!r} has no update(reading) method")
        with self._lock:
            self._rule = rule

    def set_region(self, region: Region | None) -> None:
        """Map only grid rows [r0, r1) and columns [c0, c1) from the next map on (None: whole grid)."""
        if region is not None:
            r0, r1, c0, c1 = (int(v) for v in region)
            if not (0 <= r0 < r1 and 0 <= c0 < c1):
                raise ConfigError(f"set_region: {region!r} is not a non-empty (r0, r1, c0, c1) window")
            region = (r0, r1, c0, c1)
        with self._lock:
            self._region = region

    def set_offset(self, offset_um: tuple[float, float], reason: str) -> None:
        """Move the scan region by (dx, dy) µm from the run's grid (not from its last place) from the
        next map on, for `reason` (drift re-centring, a user's override)."""
        dx, dy = (float(v) for v in offset_um)
        if not (math.isfinite(dx) and math.isfinite(dy)):
            raise ConfigError(f"region shift ({dx}, {dy}) µm: must be finite numbers")
        with self._lock:
            self._offsets.append(((dx, dy), str(reason)))

    def note(self, decision: str, reason: str) -> None:
        """A decision taken outside the plan (a pause and why), for its `steering` stream."""
        with self._lock:
            self._notes.append((decision, reason))

    def finish(self) -> None:
        """End the series cleanly after the current map."""
        with self._lock:
            self._finish = True

    # -- the plan's side ----------------------------------------------------------------
    def take_map(self) -> str | None:
        with self._lock:
            return self._maps.popleft() if self._maps else None

    def take_notes(self) -> list[tuple[str, str]]:
        with self._lock:
            notes, self._notes = list(self._notes), deque()
            return notes

    def take_rule(self) -> TriggerRule | None:
        with self._lock:
            rule, self._rule = self._rule, None
            return rule

    def take_region(self) -> Region | None | str:
        """The new region, None for the whole grid, or "unchanged"."""
        with self._lock:
            region, self._region = self._region, "unchanged"
            return region

    def take_offsets(self) -> list[tuple[tuple[float, float], str]]:
        """The region shifts (dx, dy) µm asked since the last look and why, in order (each is a decision)."""
        with self._lock:
            offsets, self._offsets = list(self._offsets), deque()
            return offsets

    @property
    def finishing(self) -> bool:
        with self._lock:
            return self._finish
