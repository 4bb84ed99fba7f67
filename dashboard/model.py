"""What the dashboard knows about the run, independent of transport and of Bokeh.

A feed (the ZeroMQ subscriber, or a test) pushes maps, status, potentiostat readings and
bluesky documents in from one thread; every browser session pulls from its own thread.
The model keeps the latest partial map (the display path is latest-wins), a bounded
history of final maps, the full reading traces (bounded) and the latest status, each behind
one lock with version counters so a session can ask "what changed since I last looked".
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.errors import OpmonError

#: FORMATS.md map arrays the dashboard shows; `q` and `mean_q` are optional extras.
MAP_FIELDS: tuple[str, ...] = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width")


class MapMessageError(OpmonError):
    """A map update lacks a FORMATS.md array or holds arrays of different shapes."""


@dataclass
class MapUpdate:
    """One partial or final map as it arrives on the display channel.

    Attributes
    ----------
    map_number
        Which map of the run (0-based), as the processor numbers them.
    arrays
        FORMATS.md map arrays by name, each (ny, nx) float64 (`q` is (ny, nx, 3)).
    progress
        Fraction of the map's frames processed, 0..1.
    final
        True for the finished map.
    seq
        Sequence number of the message on its channel (for latency and loss accounting).
    t_processed
        Wall-clock time (s since epoch) the newest frame in this map was processed; used to
        measure the display latency.
    extent
        (x0, y0, width, height) in um of the map on the sample, or None for pixel units.
    meta
        Everything else the producer sent (run uid, voltage at map start, ...).
    """

    map_number: int
    arrays: dict[str, npt.NDArray[Any]]
    progress: float = 0.0
    final: bool = False
    seq: int = 0
    t_processed: float = 0.0
    extent: tuple[float, float, float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [k for k in MAP_FIELDS if k not in self.arrays]
        if missing:
            raise MapMessageError(f"map {self.map_number}: missing arrays {missing}")
        shape = np.shape(self.arrays["d_spacing"])
        if len(shape) != 2:
            raise MapMessageError(f"map {self.map_number}: d_spacing must be 2-D, got shape {shape}")
        for k in MAP_FIELDS:
            if np.shape(self.arrays[k]) != shape:
                raise MapMessageError(
                    f"map {self.map_number}: {k} has shape {np.shape(self.arrays[k])}, d_spacing {shape}")

    def dose(self) -> DoseView | None:
        """The run's dose so far, when the map carries it (checked by the subscriber's codec)."""
        photons, grid = self.arrays.get("dose"), self.meta.get("dose")
        if photons is None or not isinstance(grid, dict):
            return None
        y0, x0 = grid["origin_um"]
        return DoseView(np.asarray(photons, dtype=np.float64), float(x0), float(y0), float(grid["step_um"]))

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the map."""
        s = np.shape(self.arrays["d_spacing"])
        return int(s[0]), int(s[1])


@dataclass(frozen=True)
class DoseView:
    """Photons per sample position over the run so far; cell [0, 0] centred at (x0, y0) µm."""

    photons: npt.NDArray[np.float64]
    x0: float
    y0: float
    step: float

    @property
    def peak(self) -> float:
        """The most photons any one position has taken."""
        return float(self.photons.max()) if self.photons.size else 0.0


STEERING_STREAM = "steering"     # the plans' decision stream (opmon.acquisition.decisions)


def _grid_of(start: dict[str, Any]) -> tuple[float, float, float, tuple[int, int]] | None:
    """The map grid a run's start document announces (opmon's plans write it), else None."""
    try:
        x, y = (float(v) for v in start["map_origin_um"])
        step = float(start["map_step_um"])
        ny, nx = (int(v) for v in start["geometry"]["map_shape"])
    except (KeyError, TypeError, ValueError):
        return None
    return (x, y, step, (ny, nx)) if step > 0 and ny > 0 and nx > 0 else None


def call_key(command: str, args: dict[str, Any]) -> tuple[str, str]:
    """A control command with its arguments as one comparable value."""
    return command, json.dumps(args, sort_keys=True, default=str)


@dataclass(frozen=True)
class DecisionAction:
    """A way to undo, override or answer a decision: a button `label` sending control `command`
    with `args`; `awaited` when the plan waits for it (a proposal's accept: kept in view until a
    later decision `answers` it)."""

    label: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    awaited: bool = False

    @property
    def call(self) -> tuple[str, str]:
        return call_key(self.command, self.args)

    @classmethod
    def parse(cls, raw: Any) -> tuple[DecisionAction, ...]:
        """Actions from their JSON form (a list of {label, command, args[, awaited]}); malformed ones are dropped."""
        try:
            items = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return ()
        out = []
        for item in items if isinstance(items, list) else []:
            if (isinstance(item, dict) and isinstance(item.get("label"), str) and isinstance(item.get("command"), str)
                    and isinstance(item.get("args", {}), dict)):
                out.append(cls(item["label"], item["command"], dict(item.get("args", {})), item.get("awaited") is True))
        return tuple(out)


def disable_action(name: str) -> DecisionAction:
    """The override of an automatic action: switch `name` (onset, dose) off for the rest of the run."""
    return DecisionAction(f"Disable {name} actions", "set_automatic",
                          {"name": name, "enabled": False, "reason": f"{name} actions disabled from the dashboard"})


@dataclass(frozen=True)
class Decision:
    """One decision shown in the decisions panel: the kind (`decision`), why, what it set, and the
    actions that undo or override it (empty: nothing to undo). Rows come from the run's `steering`
    stream, from flags in the live maps (onset) and from the acquisition's status (a pause)."""

    t: float
    decision: str
    reason: str
    detail: dict[str, Any]
    actions: tuple[DecisionAction, ...] = ()

    @property
    def answers(self) -> list[tuple[str, str]]:
        """The awaited actions this decision settles (detail `answers`: one {command, args} or a list:
        a re-centring carries out a proposal's accept, a newer proposal replaces an open one)."""
        done = self.detail.get("answers")
        return [call_key(a["command"], dict(a.get("args", {}))) for a in (done if isinstance(done, list) else [done])
                if isinstance(a, dict) and isinstance(a.get("command"), str) and isinstance(a.get("args", {}), dict)]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Decision | None:
        """The decision an event carries (keys `<device>-decision`, `-reason`, `-detail`, `-actions`), or None."""
        data = event.get("data") or {}
        found = {key.rsplit("-", 1)[-1]: value for key, value in data.items() if isinstance(key, str)}
        if not isinstance(found.get("decision"), str):
            return None
        try:
            detail = json.loads(found.get("detail") or "{}")
        except (TypeError, ValueError):
            detail = {"detail": str(found.get("detail"))}
        t = event.get("time")
        return cls(float(t) if isinstance(t, (int, float)) else time.time(), found["decision"],
                   str(found.get("reason", "")), detail if isinstance(detail, dict) else {"detail": detail},
                   DecisionAction.parse(found.get("actions")))


def pause_decision(status: dict[str, Any]) -> Decision | None:
    """While the acquisition reports a pause with a reason: a row to resume it (the undo), and to
    switch off the automatic action that paused it (status `paused_by`), else None."""
    if str(status.get("state")) != "paused" or not status.get("pause_reason"):
        return None
    reason = str(status["pause_reason"])
    actions = [DecisionAction("Undo: resume", "resume", {"reason": f"undo of the pause: {reason}"})]
    if isinstance(status.get("paused_by"), str) and status["paused_by"]:
        actions.append(disable_action(status["paused_by"]))
    t = status.get("paused_at")
    return Decision(float(t) if isinstance(t, (int, float)) else time.time(), "pause", reason, {}, tuple(actions))


@dataclass(frozen=True)
class MapContext:
    """What a map's title says: its number, start time (s since epoch), voltage and trigger reason."""

    map_number: int
    t: float
    voltage: float
    reason: str

    def title(self, what: str) -> str:
        """``what · map N · 4.512 V · 21:03:12 UTC · reason`` (parts that are unknown left out)."""
        parts = [what, f"map {self.map_number}"]
        if np.isfinite(self.voltage):
            parts.append(f"{self.voltage:.3f} V")
        if np.isfinite(self.t):
            parts.append(time.strftime("%H:%M:%S UTC", time.gmtime(self.t)))
        if self.reason:
            parts.append(self.reason)
        return " · ".join(parts)


@dataclass
class FinalMap:
    """A final map with when it was taken, for the gallery, histograms and markers."""

    update: MapUpdate
    t: float                 # s, reading clock, when the map's first frames arrived (it was triggered)
    voltage: float           # V at that time (NaN if no reading yet)
    capacity: float          # mAh at that time (NaN if no reading yet)


class DashboardModel:
    """Thread-safe store of the run as the dashboard sees it.

    Parameters
    ----------
    history
        How many final maps to keep for the gallery and histograms (oldest dropped).
    max_readings
        How many potentiostat readings to keep (a 48 h run at 1 Hz is ~173,000).
    """

    def __init__(self, history: int = 200, max_readings: int = 500_000) -> None:
        self._lock = threading.Lock()
        self._latest: MapUpdate | None = None
        self._map_version = 0
        self._history: deque[FinalMap] = deque(maxlen=history)
        self._history_version = 0
        self._n_final = 0
        self._map_start: dict[int, tuple[float, float, float]] = {}  # map -> reading when first seen
        self._status: dict[str, dict[str, Any]] = {}
        self._status_version = 0
        self._status_time = 0.0
        self._max_readings = max_readings
        self._readings: dict[str, list[float]] = {"t": [], "voltage": [], "current": [], "charge": []}
        self._readings_dropped = 0   # readings discarded off the front (bounded memory)
        self._documents: deque[tuple[str, dict[str, Any]]] = deque(maxlen=100)
        self._doc_version = 0
        self._stream_of: dict[str, str] = {}                 # descriptor uid -> stream name (open run)
        self._grid: tuple[float, float, float, tuple[int, int]] | None = None   # origin x, y, step (µm), shape
        self._decisions: deque[Decision] = deque(maxlen=200)  # the run's `steering` stream, newest last
        self._decision_version = 0
        self._pause: Decision | None = None     # the acquisition's pause while it lasts (not in the stream yet)
        self.messages_received = 0

    # ---- feed side -------------------------------------------------------------------------
    def on_map(self, update: MapUpdate) -> None:
        """Take a partial or final map; a final one also enters the history."""
        with self._lock:
            self.messages_received += 1
            self._latest = update
            self._map_version += 1
            if update.map_number not in self._map_start:
                self._map_start[update.map_number] = self._last_reading_locked()
                while len(self._map_start) > 4 * (self._history.maxlen or 200):
                    self._map_start.pop(next(iter(self._map_start)))
            if update.final:
                if self._history and self._history[-1].update.map_number == update.map_number:
                    self._history.pop()   # a repeated final of the same map replaces it
                else:
                    self._n_final += 1
                onset = update.meta.get("onset")
                if isinstance(onset, dict):     # the live processor flagged a transformation here
                    self._decisions.append(Decision(float(update.meta.get("t", time.time())), "onset flagged",
                                                    str(onset.get("reason", "")),
                                                    {"map": update.map_number, "kind": onset.get("kind")},
                                                    (disable_action("onset"),)))
                    self._decision_version += 1
                # the marker goes where the map was taken: its start, when the trigger fired
                t, v, c = self._map_start.get(update.map_number) or self._last_reading_locked()
                t_map = float(update.meta.get("t_start", t if np.isfinite(t) else time.time()))
                self._history.append(FinalMap(update, t_map, float(update.meta.get("voltage", v)),
                                               float(update.meta.get("capacity", c))))
                self._history_version += 1

    def on_status(self, status: dict[str, Any]) -> None:
        """Take a status message from one service (its `source`: acquisition, live, archiver)."""
        with self._lock:
            self.messages_received += 1
            source = str(status.get("source", "live"))
            if source == "acquisition":
                pause = pause_decision(status)
                if (pause is None) != (self._pause is None) or (pause is not None and self._pause is not None
                                                                and pause.reason != self._pause.reason):
                    self._pause = pause
                    self._decision_version += 1
            self._status[source] = dict(status)
            self._status_version += 1
            self._status_time = time.time()

    def on_reading(self, t: float, voltage: float, current: float, charge: float) -> None:
        """Take one potentiostat reading: time (s since epoch), V, A, charge (mAh)."""
        with self._lock:
            self.messages_received += 1
            r = self._readings
            r["t"].append(float(t))
            r["voltage"].append(float(voltage))
            r["current"].append(float(current))
            r["charge"].append(float(charge))
            over = len(r["t"]) - self._max_readings
            if over > self._max_readings // 10:
                for k in r:
                    del r[k][:over]
                self._readings_dropped += over

    def on_document(self, name: str, doc: dict[str, Any]) -> None:
        """Take a bluesky document; only the newest hundred are kept (shown as run events), and
        the events of the `steering` stream (the plan's decisions) are kept apart."""
        with self._lock:
            self.messages_received += 1
            self._documents.append((name, doc))
            self._doc_version += 1
            if name == "start":            # a new run: its own streams, decisions and map grid
                self._grid = _grid_of(doc)
                self._stream_of.clear()
                self._decisions.clear()
                self._decision_version += 1
            elif name == "descriptor" and isinstance(doc.get("uid"), str):
                self._stream_of[doc["uid"]] = str(doc.get("name", ""))
            elif name == "event" and self._stream_of.get(doc.get("descriptor", "")) == STEERING_STREAM:
                decision = Decision.from_event(doc)
                if decision is not None:
                    self._decisions.append(decision)
                    self._decision_version += 1

    # ---- session side ----------------------------------------------------------------------
    def latest_map(self) -> tuple[int, MapUpdate | None]:
        """(version, latest partial or final map)."""
        with self._lock:
            return self._map_version, self._latest

    def history(self) -> tuple[int, list[FinalMap]]:
        """(version, final maps oldest first)."""
        with self._lock:
            return self._history_version, list(self._history)

    def status(self) -> tuple[int, dict[str, Any], float]:
        """(version, merged status, wall-clock time the newest part arrived).

        The run state comes from the acquisition (it alone knows paused/aborted), rates,
        losses and map progress from the live processor, the archive file from the archiver.
        """
        with self._lock:
            return self._status_version, merge_status(self._status), self._status_time

    def readings_since(self, cursor: int) -> tuple[dict[str, npt.NDArray[np.float64]], int]:
        """Readings after absolute index `cursor` and the new cursor.

        Cursors count every reading ever received, so trimming the front never makes a
        session skip or repeat points.
        """
        with self._lock:
            start = max(cursor - self._readings_dropped, 0)
            out = {k: np.asarray(v[start:], dtype=np.float64) for k, v in self._readings.items()}
            return out, self._readings_dropped + len(self._readings["t"])

    def documents(self) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
        """(version, newest bluesky documents, oldest first)."""
        with self._lock:
            return self._doc_version, list(self._documents)

    def grid_extent(self, shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """(x0, y0, width, height) in µm of a map of `shape` on the run's piezo grid (its start
        document's map_origin_um and map_step_um), None when the run did not say or the shape
        is another grid's."""
        with self._lock:
            grid = self._grid
        if grid is None or grid[3] != tuple(shape):
            return None
        x, y, step, (ny, nx) = grid
        return (x - step / 2, y - step / 2, nx * step, ny * step)

    def map_context(self, map_number: int) -> MapContext:
        """When map `map_number` was taken, at which voltage, and why (the plan's "map" decision
        for it in the `steering` stream; empty when the plan did not record one)."""
        with self._lock:
            t, v, _ = self._map_start.get(map_number) or (float("nan"),) * 3
            for r in reversed(self._history):
                if r.update.map_number == map_number:
                    t, v = r.t, r.voltage
                    break
            decision = next((d for d in reversed(self._decisions)
                             if d.decision == "map" and d.detail.get("map") == map_number), None)
        if decision is None:
            return MapContext(map_number, t, v, "")
        recorded = decision.detail.get("voltage_v")
        voltage = float(recorded) if isinstance(recorded, (int, float)) else v
        return MapContext(map_number, t, voltage, decision.reason)

    def decisions(self) -> tuple[int, list[Decision]]:
        """(version, the decisions, oldest first; a pause in progress last)."""
        with self._lock:
            return self._decision_version, list(self._decisions) + ([self._pause] if self._pause is not None else [])

    def _last_reading_locked(self) -> tuple[float, float, float]:
        r = self._readings
        if not r["t"]:
            return float("nan"), float("nan"), float("nan")
        return r["t"][-1], r["voltage"][-1], r["charge"][-1]


def merge_status(by_source: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One status line from the per-service status messages (see `DashboardModel.status`)."""
    acq, live, arch = (by_source.get(k, {}) for k in ("acquisition", "live", "archiver"))
    out: dict[str, Any] = {"state": acq.get("state", live.get("state", "unknown"))}
    for key in ("frames_per_s", "frames_lost", "map", "map_progress", "maps_done", "frames"):
        for src in (live, acq):
            if src.get(key) is not None:
                out[key] = src[key]
                break
    out["frames_lost"] = max(int(s.get("frames_lost") or 0) for s in (acq, live, arch, {}))
    for src in (arch, live, acq):
        if src.get("archive"):
            out["archive"] = src["archive"]
            break
    limit = acq.get("dose_limit")
    out["dose_limit"] = float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None
    out["sources"] = sorted(by_source)
    return out
