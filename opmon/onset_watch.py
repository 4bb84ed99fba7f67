"""Act when the live processor flags the onset of a transformation (`opmon demo --on-onset ...`).

The live processor compares each final map with the ones before (`opmon.processors.onset`) and
puts a flagged onset in the final map's message on the display channel. This watcher, on the
acquisition's side of the wiring, reads the final maps there and asks the plan for denser mapping
through the same steering object the dashboard uses, so the plan records the decision and its
reason (and how to undo it) in the run's `steering` stream:

- ``map-now``: one map at once;
- ``shorter-period:S``: a periodic rule of S cell seconds for `PERIODS_HELD` periods, then the
  rule before it returns (`set_trigger` with `for_s`);
- ``finer-map``: the next maps at half the step over the particle's bounding box (the valid
  pixels of the flagged map, one pixel of margin), once per run (`set_grid`).

A cooldown keeps one onset (or a flapping detector) from filling the run with maps; the action
does nothing while it is switched off from the dashboard (`set_automatic onset false`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from opmon.dose_region import ScanGrid
from opmon.errors import ConfigError, OpmonError
from opmon.streaming.map_messages import TOPIC, decode_map
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)

ACTIONS = ("none", "map-now", "shorter-period:S", "finer-map")
NAME = "onset"
#: a shorter period holds for this many of its periods, then the rule before it returns
PERIODS_HELD = 3


@dataclass(frozen=True)
class OnsetAction:
    """What to do on an onset: `kind` of ACTIONS ("shorter-period" carries `period_s`)."""

    kind: str
    period_s: float = 0.0


def parse_onset_action(text: str) -> OnsetAction:
    """'map-now', 'shorter-period:120', 'finer-map' or 'none'; ConfigError naming the bad one."""
    if text in ("none", "map-now", "finer-map"):
        return OnsetAction(text)
    if text.startswith("shorter-period:"):
        try:
            period = float(text.split(":", 1)[1])
        except ValueError:
            period = float("nan")
        if period > 0:
            return OnsetAction("shorter-period", period)
        raise ConfigError(f"--on-onset {text}: the period after 'shorter-period:' must be a positive number of seconds")
    raise ConfigError(f"--on-onset {text!r}: expected one of {', '.join(ACTIONS)}")


def particle_box(mask: Any) -> tuple[int, int, int, int] | None:
    """Rows [r0, r1) and columns [c0, c1) of the valid pixels with one pixel of margin, or None."""
    valid = np.asarray(mask) > 0
    if not valid.any():
        return None
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    ny, nx = valid.shape
    return max(rows[0] - 1, 0), min(rows[-1] + 2, ny), max(cols[0] - 1, 0), min(cols[-1] + 2, nx)


def finer_grid(grid: ScanGrid, box: tuple[int, int, int, int]) -> ScanGrid:
    """Half the step of `grid` over its points in `box`, from the box's first point to its last."""
    r0, r1, c0, c1 = box
    x0, y0 = grid.origin_um
    return ScanGrid((x0 + c0 * grid.step_um, y0 + r0 * grid.step_um), grid.step_um / 2,
                    (2 * (r1 - r0) - 1, 2 * (c1 - c0) - 1))


class OnsetWatch(TopicWatch):
    """A SUB socket on the live maps and a daemon thread acting on a flagged onset.

    Parameters
    ----------
    endpoint
        the live processor's display PUB (`display_live`).
    steering
        acts through the plan (`RunEngineSteering`: start_map, set_trigger, set_grid, allows).
    cooldown_s
        wall seconds after an action during which further onsets only log.
    action
        an `OnsetAction` or its text (default map-now).
    grid
        the plan's scan grid (needed by finer-map).
    """

    topic = TOPIC
    thread_name = "opmon-onset-watch"

    def __init__(self, endpoint: str, steering: Any, cooldown_s: float = 60.0,
                 context: zmq.Context | None = None, action: OnsetAction | str = "map-now",
                 grid: ScanGrid | None = None) -> None:
        super().__init__(endpoint, context)
        self.action = parse_onset_action(action) if isinstance(action, str) else action
        if self.action.kind == "finer-map" and grid is None:
            raise ConfigError("--on-onset finer-map: needs the plan's scan grid")
        self.steering, self.cooldown_s, self.grid = steering, float(cooldown_s), grid
        self._last_action = -float("inf")
        self.maps_asked = 0
        self.actions: list[str] = []
        self.refined_runs: set[str] = set()
        self.seen: set[tuple[str, int]] = set()

    def on_header(self, header: Any) -> None:
        self.on_map_header(header)

    def on_message(self, header: Any, buffers: list[bytes]) -> None:
        mask = None
        if self.action.kind == "finer-map" and isinstance(header, dict) and isinstance(header.get("onset"), dict):
            try:
                mask = decode_map(header, buffers)["mask"]
            except OpmonError as exc:
                log.warning("onset watch: map message skipped: %s", exc)
                return
        self.on_map_header(header, mask)

    def on_map_header(self, header: Any, mask: Any = None) -> None:
        """Act on one map message header (and, for finer-map, its mask): a final map with an onset."""
        if not isinstance(header, dict) or not header.get("final") or not isinstance(header.get("onset"), dict):
            return
        key = (str(header.get("run")), int(header.get("map", -1)))
        if key in self.seen:                    # a final map re-sent (after a restart) is one onset
            return
        self.seen.add(key)
        reason = f"onset flagged on map {key[1]}: {header['onset'].get('reason', '')}"
        now = time.monotonic()
        allows = getattr(self.steering, "allows", lambda name: True)
        if not allows(NAME):
            log.info("%s (onset actions switched off)", reason)
            return
        if now - self._last_action < self.cooldown_s:
            log.info("%s (no action: within the %.0f s cooldown)", reason, self.cooldown_s)
            return
        try:
            done = self._act(key[0], reason, mask)
        except OpmonError as exc:             # the plan takes no requests now (between runs)
            log.error("%s; no action: %s", reason, exc)
            return
        if done:
            self._last_action = now
            self.actions.append(done)
            log.warning("%s: %s", reason, done)

    def _act(self, run: str, reason: str, mask: Any) -> str | None:
        kind = self.action.kind
        if kind == "map-now":
            self.steering.start_map(reason)
            self.maps_asked += 1
            return "a map was asked for now"
        if kind == "shorter-period":
            period = self.action.period_s
            self.steering.set_trigger(reason=f"{reason}: maps every {period:g} s for a while", period_s=period,
                                      for_s=PERIODS_HELD * period)
            return f"maps every {period:g} s for {PERIODS_HELD * period:g} s"
        if kind == "finer-map":
            assert self.grid is not None
            if run in self.refined_runs or mask is None or tuple(np.shape(mask)) != tuple(self.grid.shape):
                return None                   # refined already (its maps have the finer grid's shape)
            box = particle_box(mask)
            if box is None:
                return None
            fine = finer_grid(self.grid, box)
            self.steering.set_grid(shape=list(fine.shape), step_um=fine.step_um, origin_um=list(fine.origin_um),
                                   reason=f"{reason}: finer map, step {fine.step_um:g} µm over rows {box[0]}-"
                                          f"{box[1] - 1}, columns {box[2]}-{box[3] - 1}")
            self.refined_runs.add(run)
            return f"next maps at step {fine.step_um:g} µm, {fine.shape[0]} x {fine.shape[1]}"
        return None
