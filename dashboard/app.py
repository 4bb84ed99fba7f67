"""One browser session of the dashboard: layout, gallery and the throttled update loop.

Each session pulls from the shared `DashboardModel` on its own periodic callback (at most one
map per 250 ms by default, latest wins, and only after the page painted the previous one), so
the display never slows the data path and a slow browser sees fewer updates, not later ones
(PEERS.md 1).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import Button, CustomJS, Div, Range1d, Slider

from opmon.dashboard import panels as P
from opmon.dashboard.auth import SteeringSessions
from opmon.dashboard.control_client import ControlClient
from opmon.dashboard.model import DashboardModel, MapUpdate
from opmon.dashboard.steering import Steering, session_cookies
from opmon.dashboard.decisions_panel import DecisionsPanel
from opmon.dashboard.views import DoseMapView, HistogramView, MapView, status_html

log = logging.getLogger(__name__)

#: Browser-side hook, run when the server reports which map message it just sent: after the
#: next painted frame (two animation frames) the page records (message, wall-clock ms) in
#: window.__opmon_seen (benchmarks read it) and acknowledges it to the server, which sends
#: the next map update only then. So a slow browser gets fewer updates, never a growing queue.
_SEEN_JS = """
const text = cb_obj.text;
requestAnimationFrame(() => requestAnimationFrame(() => {
  window.__opmon_seen = window.__opmon_seen || [];
  window.__opmon_seen.push([text, Date.now()]);
  if (window.__opmon_seen.length > 5000) { window.__opmon_seen.splice(0, 1000); }
  ack.text = text;
}));
"""
#: Without an acknowledgement (tab hidden: no animation frames) send again after this long.
ACK_TIMEOUT_S = 1.5
#: Granularity of the display loop; the period (`update_ms`) is what limits the rate.
TICK_MS = 50


@dataclass
class DashboardOptions:
    """Settings shared by every session of one dashboard server."""

    update_ms: int = 250                 # throttle of the display loop (at most one map per period)
    max_altitude: float | None = None    # tilt (deg) that saturates the wheel; None = 99th pct
    title: str = "opmon — operando SXDM monitor"


class Session:
    """The figures, widgets and update loop of one browser tab."""

    def __init__(self, doc: Document, model: DashboardModel, control: ControlClient | None,
                 sessions: SteeringSessions | None, options: DashboardOptions) -> None:
        self.doc, self.model, self.options = doc, model, options
        # steering is decided by the session cookie the token was exchanged for (auth.py)
        token = sessions.token_of_cookies(session_cookies(doc)) if sessions is not None else None
        self.authorized = token is not None
        xr, yr = Range1d(0, 1), Range1d(0, 1)
        self.d = P.d_map(xr, yr)
        self.tilt = P.tilt_panel(xr, yr)
        self.intensity, roi = P.intensity_map(xr, yr)
        self.width = P.width_map(xr, yr)
        self.dose = DoseMapView(P.dose_map())
        self.hist_fig, hist_cur, hist_earlier = P.histogram_panel()
        self.pole_fig, pole_pts, pole_rings = P.pole_panel()
        self.echem = P.echem_panels()
        self.maps = MapView(self.d, self.intensity, self.width, self.tilt, self.pole_fig, pole_pts,
                            pole_rings, options.max_altitude)
        self.hist = HistogramView(hist_cur, hist_earlier)
        self.steering = Steering(doc, control, token if self.authorized else None, self.authorized,
                                 self.intensity.fig, roi, lambda: self.maps.geometry)
        self.status_div = Div(text=status_html({}, 0.0, "waiting for data"), name="status",
                              sizing_mode="stretch_width", height=44, min_width=300,
                              styles={"overflow": "hidden"})
        self.decisions = DecisionsPanel(self.steering)
        self.decisions_div = self.decisions.table
        self._decision_version = -1
        self.seen_div = Div(text="", name="seen", visible=False)
        self.ack_div = Div(text="", name="ack", visible=False)
        self.seen_div.js_on_change("text", CustomJS(args={"ack": self.ack_div}, code=_SEEN_JS))
        self.ack_div.on_change("text", lambda attr, old, new: self._acked(new))
        self._in_flight: tuple[str, float] | None = None
        self.ack_timeouts = 0
        self.gallery = Slider(start=0, end=1, value=0, step=1, title="step back through maps",
                              name="gallery", disabled=True, sizing_mode="stretch_width", height=40)
        self.live_button = Button(label="● Live", button_type="success", name="live", width=90, height=34)
        self.gallery.on_change("value_throttled", lambda a, o, n: self._pick(int(n)))
        self.live_button.on_click(self._go_live)
        self.follow_live = True
        self._shown: tuple[int, int] = (-1, -1)     # (map version, map number) on screen
        self._status_version = -1
        self._doc_version = -1
        self._run_info = ""
        self._history_version = -1
        self._reading_cursor = 0
        self._t0: float | None = None
        self._i_range: tuple[float, float] | None = None
        self._last_marker = -1
        self._history: list[Any] = []
        self._showing = "waiting for data"
        self.updates = 0
        doc.title = options.title
        doc.add_root(self._layout())
        self._period = options.update_ms / 1000.0
        self._last_full = self._last_map = 0.0
        doc.add_periodic_callback(self._tick, min(TICK_MS, options.update_ms))

    def _layout(self) -> Any:
        tilt_box = row(self.tilt.fig, self.tilt.legend, sizing_mode="stretch_both")
        maps = row(self.d.fig, tilt_box, self.intensity.fig, self.width.fig, self.dose.panel.fig, sizing_mode="stretch_both")
        plots = row(self.hist_fig, self.pole_fig, self.echem.vt, self.echem.vq, self.echem.iq,
                    sizing_mode="stretch_both")
        gallery = row(self.live_button, self.gallery, self.seen_div, self.ack_div, sizing_mode="stretch_width", height=44)
        return column(self.status_div, self.steering.layout(), self.decisions.layout(), maps,
                      plots, gallery,
                      sizing_mode="stretch_both", styles={"padding": "4px 8px"})

    # ---- the throttled loop -------------------------------------------------------------------
    def _tick(self) -> None:
        """Every TICK_MS: a full update once per period; a map as soon as the page has painted
        the previous one (and a period has passed), so the page neither waits nor queues."""
        now = time.monotonic()
        if now - self._last_full >= self._period:
            self.update()
        elif now - self._last_map >= self._period:
            self._push_map(self._history)

    def update(self) -> None:
        """Push what changed since the last period: maps, histogram, traces, markers, status."""
        self.updates += 1
        self._last_full = time.monotonic()
        hv, history = self.model.history()
        if hv != self._history_version:
            self._history_version = hv
            self._update_history(history)
        self._push_map(history)
        self._update_readings()
        dv, docs = self.model.documents()
        if dv != self._doc_version:
            self._doc_version = dv
            self._run_info = run_info(docs)
        cv, decisions = self.model.decisions()
        if cv != self._decision_version:
            self._decision_version = cv
            self.decisions.show(decisions)
        sv, status, received = self.model.status()
        self._status_version = sv
        if status.get("map_progress") is None:          # services that do not know it:
            _, latest = self.model.latest_map()         # use the newest map's own progress
            if latest is not None:
                status["map_progress"] = latest.progress
        showing = f"{self._showing} · {self._run_info}" if self._run_info else self._showing
        self.status_div.text = status_html(status, received, showing)

    def _push_map(self, history: list[Any]) -> None:
        """Send the latest map if it is new and the page has acknowledged the previous one."""
        if self._in_flight is not None and time.monotonic() - self._in_flight[1] > ACK_TIMEOUT_S:
            self._in_flight = None
            self.ack_timeouts += 1
            log.debug("no paint acknowledgement within %.1f s (%d so far)", ACK_TIMEOUT_S, self.ack_timeouts)
        if not self.follow_live or self._in_flight is not None:
            return
        mv, latest = self.model.latest_map()
        if latest is not None and mv != self._shown[0]:
            self._show_map(latest, history, mv)
            self._last_map = time.monotonic()

    def _show_map(self, u: MapUpdate, history: list[Any], version: int) -> None:
        if u.extent is None:                  # positions in µm from the run's grid when it announced one
            extent = self.model.grid_extent(u.shape)
            if extent is not None:
                u = dataclasses.replace(u, extent=extent)
        self.maps.show(u)
        self.maps.scalar["d_spacing"].fig.title.text = self.model.map_context(u.map_number).title(P.D_TITLE)
        self.dose.show(u.dose(), self.model.status()[1].get("dose_limit"))
        self.hist.show(np.asarray(u.arrays["d_spacing"], dtype=np.float64), history, u.map_number)
        self._shown = (version, u.map_number)
        kind = "final" if u.final else f"{100 * u.progress:.0f}%"
        self._showing = f"showing {'live ' if self.follow_live else ''}map {u.map_number} ({kind})"
        # latency hook: sequence number and processing time of what was just sent
        marker = f"{u.seq} {u.t_processed:.6f} {u.map_number} {version}"
        self.seen_div.text = marker
        self._in_flight = (marker, time.monotonic())

    def _acked(self, marker: str) -> None:
        """The browser painted the update tagged `marker`: the next one may go."""
        if self._in_flight is not None and self._in_flight[0] == marker:
            self._in_flight = None

    def _update_history(self, history: list[Any]) -> None:
        n = len(history)
        if n >= 2:
            self.gallery.disabled = False
            self.gallery.end = n - 1
            if self.follow_live:
                self.gallery.value = n - 1
        new = [r for r in history if r.update.map_number > self._last_marker]
        if new and self._t0 is not None:
            self.echem.markers.stream({
                "hours": [(r.t - self._t0) / 3600.0 for r in new],
                "voltage": [r.voltage for r in new],
                "capacity": [r.capacity for r in new],
                "label": [str(r.update.map_number) for r in new],
                "intensity": [integrated_intensity(r.update) for r in new]})
            self._last_marker = new[-1].update.map_number
        self._history = history

    def _update_readings(self) -> None:
        new, cursor = self.model.readings_since(self._reading_cursor)
        if cursor == self._reading_cursor or new["t"].size == 0:
            return
        self._reading_cursor = cursor
        if self._t0 is None:
            self._t0 = float(new["t"][0])
            self._history_version = -1       # markers need t0: resend them next tick
        current_ma = new["current"] * 1e3
        self.echem.readings.stream({
            "hours": (new["t"] - self._t0) / 3600.0, "voltage": new["voltage"],
            "current_ma": current_ma, "capacity": new["charge"]}, rollover=200_000)
        lo, hi = float(np.nanmin(current_ma)), float(np.nanmax(current_ma))
        if self._i_range is not None:
            lo, hi = min(lo, self._i_range[0]), max(hi, self._i_range[1])
        if self._i_range != (lo, hi):
            pad = max(abs(hi - lo) * 0.1, abs(hi) * 0.1, 1e-3)
            rng = self.echem.vt.extra_y_ranges["current"]
            rng.start, rng.end = lo - pad, hi + pad
            self._i_range = (lo, hi)

    # ---- gallery -------------------------------------------------------------------------------
    def _pick(self, index: int) -> None:
        history = self._history
        if not 0 <= index < len(history):
            return
        self.follow_live = False
        self.live_button.button_type = "default"
        self.live_button.label = "● Go live"
        rec = history[index]
        self._show_map(rec.update, history, -2 - index)
        self._showing = f"showing earlier map {rec.update.map_number} at {rec.voltage:.3f} V"

    def _go_live(self) -> None:
        self.follow_live = True
        self.live_button.button_type = "success"
        self.live_button.label = "● Live"
        self._shown = (-1, -1)


def integrated_intensity(update: MapUpdate) -> float:
    """Σ over the map of Σ I: how strongly the imaged reflection diffracts in this map."""
    intensity = update.arrays.get("intensity")
    return float(np.nansum(intensity)) if intensity is not None else float("nan")


def run_info(docs: list[tuple[str, dict[str, Any]]]) -> str:
    """One phrase from the newest bluesky documents: plan of the open run, or how the last ended."""
    for name, doc in reversed(docs):
        if name == "stop":
            return f"last run {doc.get('exit_status', '?')}" + (f": {doc['reason']}" if doc.get("reason") else "")
        if name == "start":
            return f"plan {doc.get('plan_name', '?')} (run {str(doc.get('uid', ''))[:8]})"
    return ""


def make_app(model: DashboardModel, control: ControlClient | None, sessions: SteeringSessions | None,
             options: DashboardOptions | None = None):
    """A Bokeh `modify_doc` function building one `Session` per browser tab."""
    opts = options or DashboardOptions()

    def modify_doc(doc: Document) -> None:
        Session(doc, model, control, sessions, opts)

    return modify_doc
