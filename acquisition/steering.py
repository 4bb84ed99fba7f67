"""Steering of a running plan through its RunEngine: what the control channel's commands do.

The control channel (`opmon.streaming.control`) only carries and authenticates commands; this
adapter, on the acquisition's side, turns them into RunEngine calls (deferred pause, resume,
abort) and into the plan's steering soft signals (`SteeringRequests`: map now, trigger rule,
map region, finish), which the plan reads between frames and records with their reasons.
It also holds the switches of the automatic actions (onset, dose): `set_automatic` turns one
off or on, and the watchers ask `allows(name)` before they act.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bluesky.utils import RunEngineInterrupted

from opmon.acquisition.triggers import rule_values
from opmon.errors import ControlCommandError

log = logging.getLogger(__name__)


class RunEngineSteering:
    """`Steerable` over a bluesky RunEngine and the plan's steering soft signals.

    Pause, resume and abort act on the RunEngine; map-now, trigger rule, region and stop set
    `requests` (`opmon.acquisition.SteeringRequests`: `map_now`, `set_rule`, `set_region`,
    `finish`, `note`), which the running plan reads between frames. The thread that
    runs the plan must call `run(plan)`: after a pause it waits there for resume or abort,
    because `RE.resume()` has to run where `RE(plan)` ran.

    Parameters
    ----------
    RE
        The RunEngine executing the plan.
    requests
        The plan's steering signals, or None (then only pause/resume/abort/status work).
    make_rule
        Builds a trigger rule from the `set_trigger` arguments (e.g. thresholds, period_s).
    """

    def __init__(self, RE: Any, requests: Any = None, make_rule: Any = None, phase: Any = None) -> None:
        self.RE, self.requests, self.make_rule = RE, requests, make_rule
        #: the plan's phase-tracking mailbox (`survey.PhaseRequests`), None without phase tracking
        self.phase = phase
        self._wake = threading.Event()
        #: Why the run is being aborted (the `abort` command's reason), None while it is not.
        self.abort_reason: str | None = None
        #: Why the run was last paused (the `pause` command's reason), None before any pause.
        self.pause_reason: str | None = None
        self.paused_by, self.paused_at = "", 0.0       # which automatic action paused, and when
        self.exit_status: str | None = None
        #: automatic actions by name ("onset", "dose"): False once overridden from the dashboard
        self.automatic: dict[str, bool] = {}
        self._switch_lock = threading.Lock()
        #: A user's region shift (x, y) µm holds until cleared: automatic re-centring is refused meanwhile.
        self.manual_shift: tuple[float, float] | None = None

    def allows(self, name: str) -> bool:
        """May the automatic action `name` act (not switched off with `set_automatic`)?"""
        with self._switch_lock:
            return self.automatic.get(name, True)

    # -- Steerable -----------------------------------------------------------------------
    def pause(self, reason: str = "", automatic: str = "") -> dict[str, Any]:
        """Pause at the next checkpoint; `automatic` names the automatic action pausing (e.g. "dose"),
        so the dashboard can offer to switch it off."""
        if self.RE.state != "running":
            raise ControlCommandError(f"cannot pause: the run is {self.RE.state}")
        self.pause_reason = reason or "paused from the control channel"
        self.paused_by, self.paused_at = str(automatic), time.time()
        log.warning("pause requested: %s", self.pause_reason)
        if reason and self.requests is not None:
            self.requests.note("pause", reason)     # the plan records it in its `steering` stream
        # Deferred: the plan pauses at its next checkpoint (after the frame being taken), so a
        # pause never leaves a frame on disk that no document references.
        self.RE.request_pause(defer=True)
        return {"state": str(self.RE.state)}

    def resume(self, reason: str = "") -> dict[str, Any]:
        if self.RE.state != "paused":
            raise ControlCommandError(f"cannot resume: the run is {self.RE.state}")
        if reason and self.requests is not None:
            self.requests.note("resume", reason)    # e.g. the undo of a pause at the dose limit
        self._wake.set()
        return {"state": "resuming"}

    def abort(self, reason: str = "") -> dict[str, Any]:
        if self.RE.state not in ("running", "paused"):
            raise ControlCommandError(f"cannot abort: the run is {self.RE.state}")
        self.abort_reason = reason or "aborted from the control channel"
        if self.RE.state == "running":
            self.RE.request_pause(defer=False)
        self._wake.set()
        return {"state": "aborting"}

    def stop(self, reason: str = "") -> dict[str, Any]:
        self._need_requests("stop").finish(reason or "finish requested")
        return {"state": str(self.RE.state), "stopping": "after the current map"}

    def start_map(self, reason: str = "steering: map now") -> dict[str, Any]:
        self._need_requests("start_map").map_now(reason)
        return {"state": str(self.RE.state)}

    def set_trigger(self, reason: str = "", for_s: float | None = None, **rule: Any) -> dict[str, Any]:
        """A new trigger rule from plain values; with `for_s`, it holds that many cell seconds, then
        the rule before it returns."""
        requests = self._need_requests("set_trigger")
        if self.make_rule is None:
            raise ControlCommandError("set_trigger: this acquisition has no rule factory")
        values = rule_values(self.make_rule(**rule))        # built here: a bad rule is refused now
        if for_s is not None:
            if not float(for_s) > 0:
                raise ControlCommandError(f"set_trigger: for_s={for_s} must be > 0 s")
            values["for_s"] = float(for_s)
        requests.set_rule(values, reason or "steering request")
        return {"trigger": rule, **({"for_s": float(for_s)} if for_s is not None else {})}

    def set_grid(self, shape: list[int], step_um: float, origin_um: list[float], reason: str = "") -> dict[str, Any]:
        """Map on another raster from the next map on (e.g. half the step over the particle)."""
        self._need_requests("set_grid").set_grid(shape, step_um, origin_um, reason or "steering request")
        return {"grid": {"shape": list(shape), "step_um": step_um, "origin_um": list(origin_um)}}

    def set_region(self, r0: int | None = None, r1: int | None = None, c0: int | None = None,
                   c1: int | None = None, reason: str = "") -> dict[str, Any]:
        """Grid rows [r0, r1) and columns [c0, c1) from the next map on; no arguments: whole grid."""
        requests = self._need_requests("set_region")
        why = reason or "steering request"
        given = [v for v in (r0, r1, c0, c1) if v is not None]
        if not given:
            requests.set_region(None, why)
            return {"region": None}
        if len(given) != 4:
            raise ControlCommandError(f"set_region: need all of r0, r1, c0, c1, got {dict(r0=r0, r1=r1, c0=c0, c1=c1)}")
        region = (int(r0), int(r1), int(c0), int(c1))  # type: ignore[arg-type]
        requests.set_region(region, why)
        return {"region": list(region)}

    def accept_proposal(self, proposal: int) -> dict[str, Any]:
        """Accept the plan's re-centring proposal number `proposal` (phase tracking "propose")."""
        if self.phase is None:
            raise ControlCommandError("accept_proposal: this acquisition does no phase tracking")
        return {"proposal": int(proposal), "accepted": self.phase.accept(int(proposal))}

    def set_automatic(self, name: str, enabled: bool, reason: str = "") -> dict[str, Any]:
        """Switch the automatic action `name` (onset, dose) off or on; recorded as a decision."""
        if not isinstance(name, str) or not name or not isinstance(enabled, bool):
            raise ControlCommandError(f"set_automatic: need a name and enabled true/false, got {name!r}, {enabled!r}")
        with self._switch_lock:
            self.automatic[name] = enabled
        if self.requests is not None:
            self.requests.note("override", reason or f"{name} actions {'enabled' if enabled else 'disabled'}")
        return {"automatic": {name: enabled}}

    def shift_region(self, dx_um: float | None = None, dy_um: float | None = None, by: str = "user",
                     reason: str = "") -> dict[str, Any]:
        """Move the scan region by (dx, dy) µm from the run's grid, from the next map on.

        ``by="auto"`` is drift re-centring (`opmon.recentre_watch`): refused while a user's shift
        holds. ``by="user"`` with a shift overrides re-centring until the user clears it;
        without one it clears the override and puts the region back on the run's grid.
        """
        requests = self._need_requests("shift_region")
        if by not in ("user", "auto"):
            raise ControlCommandError(f"shift_region: by={by!r}, expected 'user' or 'auto'")
        given = [v for v in (dx_um, dy_um) if v is not None]
        if len(given) == 1:
            raise ControlCommandError(f"shift_region: give both dx_um and dy_um (got dx_um={dx_um}, dy_um={dy_um})")
        if by == "auto":
            if not given:
                raise ControlCommandError("shift_region by auto: needs dx_um and dy_um")
            if self.manual_shift is not None:
                raise ControlCommandError(f"shift_region: the user's shift {list(self.manual_shift)} µm holds; "
                                          "clear it (shift_region without a shift) to let re-centring move the region")
            offset = (float(dx_um), float(dy_um))  # type: ignore[arg-type]
            requests.set_offset(offset, reason or "automatic re-centring")
        elif given:
            offset = (float(dx_um), float(dy_um))  # type: ignore[arg-type]
            requests.set_offset(offset, f"user override: {reason}" if reason else "user override")
            self.manual_shift = offset
        else:
            offset = (0.0, 0.0)
            requests.set_offset(offset, f"user cleared the region shift: {reason}" if reason
                                else "user cleared the region shift")
            self.manual_shift = None
        return {"shift_um": list(offset), "by": by, "manual": self.manual_shift is not None}

    def status(self) -> dict[str, Any]:
        with self._switch_lock:
            switches = dict(self.automatic)
        return {"state": str(self.RE.state), "exit_status": self.exit_status, "pause_reason": self.pause_reason,
                "paused_by": self.paused_by, "paused_at": self.paused_at, "automatic": switches,
                "manual_shift_um": None if self.manual_shift is None else list(self.manual_shift)}

    def _need_requests(self, command: str) -> Any:
        if self.requests is None:
            raise ControlCommandError(f"{command}: this plan takes no map requests")
        return self.requests

    # -- the plan's thread ---------------------------------------------------------------
    def run(self, plan: Any, stop: threading.Event | None = None) -> str:
        """Run `plan` on the RunEngine, waiting out pauses; returns "success" or "abort"."""
        try:
            self.RE(plan)
            self.exit_status = "success"
            return self.exit_status
        except RunEngineInterrupted:
            pass
        while True:
            while not self._wake.wait(0.2):
                if stop is not None and stop.is_set():
                    self.abort_reason = self.abort_reason or "shut down"
                    break
            self._wake.clear()
            if self.abort_reason is not None:
                self.RE.abort(self.abort_reason)
                self.exit_status = "abort"
                return self.exit_status
            try:
                self.RE.resume()
                self.exit_status = "success"
                return self.exit_status
            except RunEngineInterrupted:
                continue
