"""Steering requests as ophyd-async soft signals: what the user (or a watcher) asks of a running plan.

Before, a request travelled through a thread-shared mailbox the plan drained, so what was asked
left no trace a bluesky tool could read. Now `RunEngineSteering` (or a test) sets these soft
signals through the RunEngine's event loop and the plan reads them between frames with
`bps.rd` / `bps.read` (`RequestReader.poll`): a map-now counter and its reason, the trigger rule
and the map region as plain values (JSON) with their reasons, a finish counter, and a short
journal of decisions taken outside the plan (a pause and why). The plan records every change it
acts on in its `steering` stream (`opmon.acquisition.decisions`).

Thread rule: the soft signals live in the RunEngine's event loop. From another thread a change
is set with `asyncio.run_coroutine_threadsafe` on that loop and waited for; from inside the loop
(a RunEngine callback) it is scheduled there and lands before the plan's next suspension.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.run_engine import get_bluesky_event_loop
from bluesky.utils import MsgGenerator
from ophyd_async.core import SignalRW, StandardReadable, soft_signal_rw

from opmon.acquisition.triggers import Region, TriggerRule, rule_values
from opmon.errors import ConfigError, ControlCommandError

#: decisions from outside the plan kept for it to read (it reads every poll, so few wait)
JOURNAL = 32
#: seconds a change from another thread may wait for the RunEngine's loop
SET_TIMEOUT_S = 5.0


SIGNALS = ("map_requests", "map_reason", "rule", "rule_changes", "region", "region_changes", "grid", "grid_changes",
           "offsets", "offset_changes", "finish_requests",
           "finish_reason", "notes", "note_count", "changes")


class SteeringRequests(StandardReadable):
    """Soft signals a running `operando_series` reads between frames (see the module docstring).

    `map_now`, `set_rule`, `set_region`, `finish` and `note` may be called from any thread.
    `loop` is the RunEngine's event loop (default: bluesky's, which a RunEngine sets).
    """

    def __init__(self, name: str = "requests", loop: asyncio.AbstractEventLoop | None = None) -> None:
        with self.add_children_as_readables():
            self.map_requests = soft_signal_rw(int, 0)
            self.map_reason = soft_signal_rw(str, "")
            self.rule = soft_signal_rw(str, "")              # {"values": {...}, "reason": "..."}
            self.rule_changes = soft_signal_rw(int, 0)
            self.region = soft_signal_rw(str, "")            # {"region": [r0, r1, c0, c1] | null, "reason"}
            self.region_changes = soft_signal_rw(int, 0)
            self.grid = soft_signal_rw(str, "")              # {"grid": {shape, step_um, origin_um}, "reason"}
            self.grid_changes = soft_signal_rw(int, 0)
            self.offsets = soft_signal_rw(str, "[]")         # [[n, dx, dy, reason], ...]: the region's shifts, newest last
            self.offset_changes = soft_signal_rw(int, 0)
            self.finish_requests = soft_signal_rw(int, 0)
            self.finish_reason = soft_signal_rw(str, "")
            self.notes = soft_signal_rw(str, "[]")           # [[n, decision, reason], ...] newest last
            self.note_count = soft_signal_rw(int, 0)
            self.changes = soft_signal_rw(int, 0)            # bumped last on every change
        super().__init__(name=name)
        self.loop = loop
        self._lock: asyncio.Lock | None = None     # made in the loop on first use
        #: the counters the last plan reading this device acted on (`RequestReader`)
        self.plan_seen: dict[str, int] | None = None

    # -- any thread ------------------------------------------------------------------------
    def map_now(self, reason: str = "on demand") -> None:
        """Ask for one map as soon as the current one (if any) ends."""
        self._change([(self.map_reason, str(reason))], self.map_requests)

    def set_rule(self, rule: TriggerRule | dict[str, Any], reason: str = "steering request") -> None:
        """Replace the trigger rule for the rest of the run (a rule, or its plain values)."""
        values = rule if isinstance(rule, dict) else rule_values(rule)
        self._change([(self.rule, json.dumps({"values": values, "reason": str(reason)}))], self.rule_changes)

    def set_region(self, region: Region | None, reason: str = "steering request") -> None:
        """Map only grid rows [r0, r1) and columns [c0, c1) from the next map on (None: whole grid)."""
        if region is not None:
            r0, r1, c0, c1 = (int(v) for v in region)
            if not (0 <= r0 < r1 and 0 <= c0 < c1):
                raise ConfigError(f"set_region: {tuple(region)!r} is not a non-empty (r0, r1, c0, c1) window")
            region = (r0, r1, c0, c1)
        payload = json.dumps({"region": None if region is None else list(region), "reason": str(reason)})
        self._change([(self.region, payload)], self.region_changes)

    def set_grid(self, shape: tuple[int, int], step_um: float, origin_um: tuple[float, float],
                 reason: str = "steering request") -> None:
        """Map on another raster from the next map on: (ny, nx) points `step_um` apart from `origin_um`
        (x0, y0); the plan checks it against the axis limits and then maps it whole."""
        try:
            ny, nx = (int(v) for v in shape)
            x0, y0 = (float(v) for v in origin_um)
            step = float(step_um)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"set_grid: shape [ny, nx], step_um, origin_um [x0, y0] expected: {exc}") from None
        if min(ny, nx) < 1 or not step > 0:
            raise ConfigError(f"set_grid: shape {[ny, nx]}, step {step} µm: need positive sizes and step")
        payload = json.dumps({"grid": {"shape": [ny, nx], "step_um": step, "origin_um": [x0, y0]},
                              "reason": str(reason)})
        self._change([(self.grid, payload)], self.grid_changes)

    def set_offset(self, offset_um: tuple[float, float], reason: str) -> None:
        """Move the scan region by (dx, dy) µm from the run's grid (not from its last place) from the
        next map on, for `reason` (drift re-centring, a user's override). Each is its own decision:
        they queue (a journal, like `note`), so a later refused shift cannot hide an earlier one."""
        try:
            dx, dy = (float(v) for v in offset_um)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"region shift {offset_um!r}: (dx, dy) µm expected: {exc}") from None
        if not (np.isfinite(dx) and np.isfinite(dy)):
            raise ConfigError(f"region shift ({dx}, {dy}) µm: must be finite numbers")
        self._change([], self.offset_changes, journal=[dx, dy, str(reason)], journal_signal=self.offsets)

    def finish(self, reason: str = "finish requested") -> None:
        """End the series cleanly after the current map."""
        self._change([(self.finish_reason, str(reason))], self.finish_requests)

    def note(self, decision: str, reason: str) -> None:
        """A decision taken outside the plan (a pause and why), for its `steering` stream."""
        self._change([], self.note_count, journal=[str(decision), str(reason)])

    def current(self) -> dict[str, Any]:
        """Every request signal's value by attribute name (`map_requests`, `region`, ...), read
        through the RunEngine's loop: for another thread (status, tests), not for the plan."""
        async def values() -> dict[str, Any]:
            return {name: await getattr(self, name).get_value() for name in SIGNALS}

        loop = self._loop()
        return asyncio.run_coroutine_threadsafe(values(), loop).result(SET_TIMEOUT_S)

    # -- the loop's side ---------------------------------------------------------------------
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop or get_bluesky_event_loop()
        if loop is None or not loop.is_running():
            raise ControlCommandError("steering: the RunEngine's event loop is not running")
        return loop

    def _change(self, sets: list[tuple[SignalRW, Any]], counter: SignalRW,
                journal: list[Any] | None = None, journal_signal: SignalRW | None = None) -> None:
        async def apply() -> None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:      # a set may suspend: one change at a time, counters exact
                await apply_locked()

        async def apply_locked() -> None:
            for signal, value in sets:
                await signal.set(value)
            count = await counter.get_value() + 1
            if journal is not None:
                kept = journal_signal if journal_signal is not None else self.notes
                entries = json.loads(await kept.get_value())
                entries = (entries + [[count, *journal]])[-JOURNAL:]
                await kept.set(json.dumps(entries))
            await counter.set(count)
            await self.changes.set(await self.changes.get_value() + 1)

        self._run(apply)

    def _run(self, make: Callable[[], Awaitable[None]]) -> None:
        loop = self._loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:             # a RunEngine callback: schedule; it lands before the next suspension
            loop.create_task(make())    # type: ignore[arg-type]
            return
        asyncio.run_coroutine_threadsafe(make(), loop).result(SET_TIMEOUT_S)  # type: ignore[arg-type]


@dataclass
class RequestChanges:
    """What changed since the plan last looked; `region` is "unchanged", None or a window."""

    maps: list[str] = field(default_factory=list)
    rule: dict[str, Any] | None = None
    rule_reason: str = ""
    region: Region | None | str = "unchanged"
    region_reason: str = ""
    grid: dict[str, Any] | None = None          # shape, step_um, origin_um
    grid_reason: str = ""
    offsets: list[tuple[tuple[float, float], str]] = field(default_factory=list)  # region shifts (dx, dy) µm, why
    finish: str | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)


class RequestReader:
    """The plan's view of a `SteeringRequests`: remembers what it has acted on (counters)."""

    def __init__(self, requests: SteeringRequests) -> None:
        self.requests = requests
        # requests made before the run count (they wait for it), not those an earlier run of the
        # same device acted on
        seen = requests.plan_seen
        self.seen = dict(seen) if seen is not None else {"changes": 0, "map": 0, "rule": 0, "region": 0,
                                                         "grid": 0, "offset": 0, "finish": 0,
                                                         "note": 0}
        self.finishing: str | None = None

    def finish_asked(self) -> MsgGenerator[str | None]:
        """Has a finish been asked (since the last poll too)? One `rd`; the reason, or None."""
        if self.finishing is None:
            count = yield from bps.rd(self.requests.finish_requests)
            if count is not None and int(count) > self.seen["finish"]:
                self.seen["finish"] = int(count)
                self.finishing = str((yield from bps.rd(self.requests.finish_reason)))
        return self.finishing

    def poll(self) -> MsgGenerator[RequestChanges]:
        """One `rd` of the change counter; a `read` of every request signal only when it moved."""
        out = RequestChanges()
        changes = yield from bps.rd(self.requests.changes)
        if changes is None or changes == self.seen["changes"]:
            return out
        values = yield from bps.read(self.requests)
        r = self.requests

        def value(signal: SignalRW) -> Any:
            return values[signal.name]["value"]

        self.seen["changes"] = int(changes)
        n_maps = int(value(r.map_requests))
        if n_maps > self.seen["map"]:
            k = n_maps - self.seen["map"]
            out.maps.append(str(value(r.map_reason)) + (f" ({k} requests)" if k > 1 else ""))
            self.seen["map"] = n_maps
        def newly_asked(kind: str, counter: SignalRW, payload: SignalRW) -> dict[str, Any] | None:
            count = int(value(counter))
            if count <= self.seen[kind]:
                return None
            self.seen[kind] = count
            return json.loads(value(payload))
        if (rule := newly_asked("rule", r.rule_changes, r.rule)) is not None:
            out.rule, out.rule_reason = rule["values"], rule["reason"]
        if (region := newly_asked("region", r.region_changes, r.region)) is not None:
            out.region = None if region["region"] is None else tuple(region["region"])  # type: ignore[assignment]
            out.region_reason = region["reason"]
        if (grid := newly_asked("grid", r.grid_changes, r.grid)) is not None:
            out.grid, out.grid_reason = grid["grid"], grid["reason"]
        for n, dx, dy, why in json.loads(value(r.offsets)):
            if n > self.seen["offset"]:
                out.offsets.append(((float(dx), float(dy)), str(why)))
        self.seen["offset"] = max(self.seen["offset"], int(value(r.offset_changes)))
        if int(value(r.finish_requests)) > self.seen["finish"]:
            self.seen["finish"] = int(value(r.finish_requests))
            self.finishing = out.finish = str(value(r.finish_reason))
        for n, decision, why in json.loads(value(r.notes)):
            if n > self.seen["note"]:
                out.notes.append((decision, why))
        self.seen["note"] = max(self.seen["note"], int(value(r.note_count)))
        self.requests.plan_seen = dict(self.seen)
        return out
