"""Keep a drifting particle centred: shift the scan region after each map (`opmon demo --recentre auto`).

The sample creeps against the piezo scanner over a run of hours, so a fixed scan region loses
the particle map by map. This watcher, on the acquisition's side of the wiring, reads each
final map message of the live processor (display channel), registers its Σ I map onto the
previous map's (`opmon.processors.drift_tracker`), and sends ``shift_region`` (``by="auto"``,
with the reason) through the control channel, the token-checked path the dashboard uses. The
plan applies the shift from its next map on and records it in the run's `steering` stream.

What it needs from the run it reads from the run's own documents (subscribe `on_document` to
the RunEngine): the grid step (start document ``map_step_um``) and the region shift each map
was taken with (``offset_um`` of the plan's ``map`` decisions), and the shift in force (``map
offset`` decisions). A user's shift (``shift_region`` from the dashboard) holds until cleared:
the acquisition refuses automatic moves meanwhile, and this watcher only logs them.

Maps taken back to back (a short period, dense mapping at an onset) would start before the
last map is registered, so its shift would come one map late and the particle would have crept
two maps' worth by then: `RecentringGate` is the plan's map gate, so that a map asked for (by
any rule or request) waits, at most `hold_s` wall seconds, until this watcher has handled the
map before.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from opmon.dashboard.control_client import ControlClient
from opmon.errors import OpmonError
from opmon.processors.drift_tracker import XY, DriftTracker, MapPosition, Refused
from opmon.streaming.map_messages import TOPIC, decode_map
from opmon.streaming.protocol import RejectedMessage
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)

MODES = ("off", "auto")
STEERING_STREAM = "steering"          # opmon.acquisition.decisions.STREAM


def _decision(doc: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(decision, detail) of a `steering` event (keys `<device>-decision` / `-detail`)."""
    data = doc.get("data") or {}
    decision = next((v for k, v in data.items() if k.endswith("-decision")), None)
    detail = next((v for k, v in data.items() if k.endswith("-detail")), "{}")
    if not isinstance(decision, str):
        return None
    try:
        parsed = json.loads(detail) if isinstance(detail, str) else {}
    except ValueError:
        parsed = {}
    return decision, parsed if isinstance(parsed, dict) else {}


def _xy(value: Any) -> XY | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return (float(value[0]), float(value[1]))
    return None


class _Run:
    """What the documents said about one run."""

    def __init__(self, step_um: float) -> None:
        self.step_um = step_um
        self.map_offsets: dict[int, XY] = {}
        self.in_force: XY = (0.0, 0.0)
        self.tracker: DriftTracker | None = None


class RecentreWatch(TopicWatch):
    """A SUB socket on the live maps and a daemon thread that re-centres the scan region.

    Parameters
    ----------
    maps_endpoint : the live processor's display PUB (`display_live`).
    control_endpoint, token : the acquisition's control channel and its steering token.
    max_step_um : largest move of the region per map (µm).
    predict : also correct the drift expected until the next map (constant creep).
    """

    topic = TOPIC
    thread_name = "opmon-recentre-watch"

    def __init__(self, maps_endpoint: str, control_endpoint: str, token: str, max_step_um: float,
                 predict: bool = True, context: zmq.Context | None = None) -> None:
        DriftTracker(1.0, max_step_um)          # checks the limit before anything starts
        super().__init__(maps_endpoint, context)
        self.max_step_um, self.predict, self.token = float(max_step_um), predict, token
        self.control = ControlClient(control_endpoint, context=self._ctx)
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._steering_descriptors: dict[str, str] = {}
        self._doc_run: str | None = None
        self.seen: set[tuple[str, int]] = set()
        self.handled: set[tuple[str, int]] = set()   # final maps acted on (their shift sent, if any)
        self.positions: dict[str, list[MapPosition]] = {}
        self.refused: list[Refused] = []
        self.sent: list[tuple[XY, str]] = []
        self.maps_handled = 0                   # final maps registered (and acted on), for tests and status

    # -- the run's documents (RunEngine thread) -------------------------------------------------
    def on_document(self, name: str, doc: dict[str, Any]) -> None:
        """Subscribe this to the RunEngine: grid, region shifts of each map, the shift in force."""
        with self._lock:
            if name == "start":
                step = doc.get("map_step_um")
                if isinstance(step, (int, float)) and step > 0:
                    self._runs[doc["uid"]] = _Run(float(step))
                self._doc_run = doc.get("uid")
            elif name == "descriptor" and doc.get("name") == STEERING_STREAM:
                self._steering_descriptors[doc["uid"]] = doc.get("run_start", self._doc_run)
            elif name == "event" and doc.get("descriptor") in self._steering_descriptors:
                run = self._runs.get(self._steering_descriptors[doc["descriptor"]])
                found = _decision(doc)
                if run is None or found is None:
                    return
                decision, detail = found
                offset = _xy(detail.get("offset_um"))
                if decision == "map" and offset is not None and isinstance(detail.get("map"), int):
                    run.map_offsets[detail["map"]] = offset
                elif decision == "map offset" and offset is not None:
                    run.in_force = offset
                elif decision == "map offset refused":
                    run.in_force = _xy(detail.get("kept_um")) or run.in_force

    # -- the live maps (watch thread) -----------------------------------------------------------
    def on_message(self, header: Any, buffers: list[Any]) -> None:
        if not isinstance(header, dict) or not header.get("final"):
            return
        key = (str(header.get("run")), int(header.get("map", -1)))
        if key in self.seen:                    # a final map re-sent (after a restart) counts once
            return
        try:
            arrays = decode_map(header, buffers)
        except RejectedMessage as exc:
            log.warning("re-centring: map %s of run %s skipped: %s", key[1], key[0], exc)
            return
        self.seen.add(key)
        try:
            self.on_map(key[0], key[1], np.array(arrays["intensity"]), np.array(arrays["mask"]))
        finally:
            self.handled.add(key)
            self.maps_handled += 1

    def waiting_for(self) -> int | None:
        """The last map the plan started in the current run if its final map has not been handled
        yet (its re-centring is not decided), else None."""
        with self._lock:
            run = self._runs.get(self._doc_run) if self._doc_run is not None else None
            if run is None or not run.map_offsets:
                return None
            last = max(run.map_offsets)
            return None if (self._doc_run, last) in self.handled else last

    def on_map(self, run_uid: str, number: int, intensity: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Register one final map and shift the region if the particle has moved."""
        with self._lock:
            run = self._runs.get(run_uid)
            offset = None if run is None else run.map_offsets.get(number)
            if run is None or offset is None:
                log.warning("re-centring: no grid or region shift known for map %d of run %s; skipped", number, run_uid)
                return
            if run.tracker is None:
                run.tracker = DriftTracker(run.step_um, self.max_step_um, self.predict)
            found = run.tracker.add(number, intensity, offset, mask)
            if found is None:
                log.info("re-centring: map %d of run %s holds no intensity to register; skipped", number, run_uid)
                return
            if isinstance(found, Refused):
                self.refused.append(found)
                log.warning("%s", found.reason)      # the shift below follows the creep predicted from the maps before
            else:
                self.positions.setdefault(run_uid, []).append(found)
            started = max(run.map_offsets)          # a map taken back to back may have begun already
            proposal = run.tracker.proposal(run.in_force, next_map=started + 1)
        if proposal is None:
            return
        try:
            reply = self.control.request("shift_region", self.token, dx_um=proposal.offset_um[0],
                                         dy_um=proposal.offset_um[1], by="auto", reason=proposal.reason)
        except OpmonError as exc:
            log.error("%s; not sent: %s", proposal.reason, exc)
            return
        if reply.get("ok"):
            with self._lock:
                run.in_force = proposal.offset_um
            self.sent.append((proposal.offset_um, proposal.reason))
            log.info("%s", proposal.reason)
        else:
            log.warning("%s; refused: %s", proposal.reason, reply.get("error"))

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        self.control.close()


class RecentringGate:
    """The plan's map gate (`operando_series(map_gate=...)`): a map asked for waits until the
    re-centring of the last map is decided (at most `hold_s` wall seconds), so maps taken back
    to back are shifted in time instead of one map late.

    A map is let go one poll after the watcher has handled the last map, never at the first
    ask: the plan reads the steering signals (where the shift arrives) before it asks the gate,
    so the poll that lets the map go has read a shift sent before the one before it.
    """

    def __init__(self, waiting_for: Callable[[], int | None], hold_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.waiting_for, self.hold_s, self.clock = waiting_for, float(hold_s), clock
        self._since: float | None = None
        self._clear = False

    def ready(self) -> str | None:
        """None: hold the map; '' : it may start; a note: it starts without the re-centring."""
        waiting = self.waiting_for()
        clear_before, self._clear = self._clear, waiting is None
        now = self.clock()
        if self._since is None:
            self._since = now
        held = now - self._since
        if waiting is None and not clear_before:
            return None                      # one more poll: the plan reads the shift before asking again
        if waiting is not None and held < self.hold_s:
            return None
        self._since, self._clear = None, False
        if waiting is None:
            return ""
        log.warning("re-centring: map %d not registered after %.1f s; the next map starts without its shift",
                    waiting, held)
        return f" (re-centring of map {waiting} not decided after {held:.0f} s)"
