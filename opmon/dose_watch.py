"""Act when a sample position has taken more dose than the user allows (`opmon demo --dose-limit`).

The live processor's map messages (display channel, lossy) carry the run's dose map so far
(header ``dose``: grid and ``max`` photons at one position; field ``dose``: photons per cell).
When ``max`` reaches the limit, this watcher acts through the control channel (the token-checked
path the dashboard uses), with the reason, as `--dose-action` says:

- ``pause`` (default): pause once per run; the user decides what next (the dashboard's decisions
  panel offers resume, and to switch the dose action off).
- ``stop``: finish the series cleanly after the current map, once per run.
- ``move``: shift the scan region away from the over-dosed positions (`opmon.dose_region`): the
  nearest window of the same size with none of them, else the largest clear window of at least a
  quarter of it; again whenever a position inside the new region reaches the limit. When the
  grid allows no such window, pause.

A missed map message only delays the check to the next partial map, a fraction of a second later.
An automatic action switched off (`set_automatic dose false`, `allowed("dose")` False) does nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from opmon.dashboard.control_client import ControlClient
from opmon.dose_region import Region, ScanGrid, clear_region, over_dosed
from opmon.errors import ConfigError, OpmonError
from opmon.streaming.map_messages import TOPIC, decode_dose, decode_map
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)

ACTIONS = ("pause", "stop", "move")
#: the automatic action's name for `set_automatic` and the pause's `automatic`
NAME = "dose"


def limit_reason(limit: float, header: dict[str, Any]) -> str | None:
    """Why the run must pause (the dose of one position reached `limit`), or None."""
    dose = header.get("dose")
    peak = dose.get("max") if isinstance(dose, dict) else None
    if not isinstance(peak, (int, float)) or isinstance(peak, bool) or peak < limit:
        return None
    return (f"dose limit: a sample position took {peak:.3g} photons (limit {limit:.3g}) "
            f"by map {header.get('map')} of run {header.get('run')}")


class DoseWatch(TopicWatch):
    """A SUB socket on the live processor's maps and a daemon thread acting at the dose limit.

    Parameters
    ----------
    maps_endpoint : the live processor's display PUB (`display_live`).
    control_endpoint, token : the acquisition's control channel and its steering token.
    limit : photons at one sample position (> 0).
    action : "pause", "stop" or "move" (module docstring).
    grid : the plan's scan grid (needed by "move").
    allowed : asked with "dose" before acting (the steering's switch); default always.
    """

    topic = TOPIC
    thread_name = "opmon-dose-watch"

    def __init__(self, maps_endpoint: str, control_endpoint: str, token: str, limit: float,
                 context: zmq.Context | None = None, action: str = "pause", grid: ScanGrid | None = None,
                 allowed: Callable[[str], bool] = lambda name: True) -> None:
        if not limit > 0:
            raise ConfigError(f"dose limit {limit!r}: must be a positive number of photons")
        if action not in ACTIONS:
            raise ConfigError(f"dose action {action!r}: expected one of {', '.join(ACTIONS)}")
        if action == "move" and grid is None:
            raise ConfigError("dose action move: needs the plan's scan grid")
        super().__init__(maps_endpoint, context)
        self.limit, self.token, self.action, self.grid, self.allowed = float(limit), token, action, grid, allowed
        self.control = ControlClient(control_endpoint, context=self._ctx)
        self.paused_runs: set[str] = set()
        self.reasons: list[str] = []
        self.region: Region | None = None                  # where "move" put the scan (None: whole grid)
        self.moves: list[Region] = []

    def on_header(self, header: Any) -> None:
        self.on_map(header)

    def on_message(self, header: Any, buffers: list[bytes]) -> None:
        if self.action != "move" or not isinstance(header, dict) or limit_reason(self.limit, header) is None:
            self.on_map(header)
            return
        try:
            dose = decode_dose(header, decode_map(header, buffers))
        except OpmonError as exc:
            log.warning("dose watch: map message skipped: %s", exc)
            return
        self.on_map(header, dose)

    def on_map(self, header: Any, dose: tuple[Any, tuple[float, float], float] | None = None) -> None:
        """Act on one map header (and, for "move", its dose field) at the limit."""
        if not isinstance(header, dict) or header.get("run") in self.paused_runs:
            return
        reason = limit_reason(self.limit, header)
        if reason is None or not self.allowed(NAME):
            return
        if self.action == "move":
            self._move(header, reason, dose)
        elif self.action == "stop":
            self._once(header, "stop", f"{reason}: series stopped", "stop")
        else:
            self._once(header, "pause", reason, "pause", automatic=NAME)

    def _move(self, header: dict[str, Any], reason: str, dose: tuple[Any, tuple[float, float], float] | None) -> None:
        if dose is None:
            return                                         # a header-only call: nothing to place
        assert self.grid is not None
        photons, origin, step = dose
        over = over_dosed(np.asarray(photons, dtype=np.float64), origin, step, self.grid, self.limit)
        ny, nx = self.grid.shape
        r0, r1, c0, c1 = self.region if self.region is not None else (0, ny, 0, nx)
        if not over[r0:r1, c0:c1].any():
            return                                         # the over-dosed points are behind us
        region = clear_region(over, self.region)
        if region is None:
            self._once(header, "pause", f"{reason}; no clear region of the grid to move to", "pause",
                       automatic=NAME)
            return
        args = dict(zip(("r0", "r1", "c0", "c1"), (int(v) for v in region)))
        if self._send("set_region", f"{reason}: scan moved to rows {region[0]}-{region[1] - 1}, "
                                    f"columns {region[2]}-{region[3] - 1}", **args):
            self.region = region
            self.moves.append(region)

    def _once(self, header: dict[str, Any], command: str, reason: str, what: str, **args: Any) -> None:
        self.paused_runs.add(str(header.get("run")))
        if self._send(command, reason, **args):
            log.error("acquisition paused: %s. Resume, move the region or abort from the dashboard." if what == "pause"
                      else "acquisition stopping after this map: %s", reason)

    def _send(self, command: str, reason: str, **args: Any) -> bool:
        try:
            reply = self.control.request(command, self.token, reason=reason, **args)
        except OpmonError as exc:
            log.error("%s; %s not sent: %s", reason, command, exc)
            return False
        if not reply.get("ok"):
            log.error("%s; %s refused: %s", reason, command, reply.get("error"))
            return False
        self.reasons.append(reason)
        return True

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        self.control.close()
