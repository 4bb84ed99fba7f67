"""Steering widgets: pause, resume, abort, map now, trigger rule, next map's region.

A session may steer only if its page request carried the session cookie that a first load with
``?token=...`` was exchanged for (auth.py); otherwise the widgets are disabled and every
callback refuses before anything is sent. The command goes to the
acquisition process, which checks the token again and acts through its RunEngine; the
dashboard then shows the state the acquisition reports, never the state it asked for.
Commands run on a worker thread so a slow reply never freezes the page.
"""
from __future__ import annotations

import hmac
import html
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from bokeh.document import Document
from bokeh.events import SelectionGeometry
from bokeh.layouts import row
from bokeh.models import Button, Checkbox, ColumnDataSource, Div, NumericInput, TextInput
from bokeh.plotting import figure

from opmon.dashboard.control_client import ControlClient, ControlError

log = logging.getLogger(__name__)
_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="opmon-steer")


def session_cookies(doc: Document) -> dict[str, str]:
    """The cookies of the page request (those the server lets into the session), or {}."""
    ctx = getattr(doc, "session_context", None)
    request = getattr(ctx, "request", None) if ctx is not None else None
    return dict(getattr(request, "cookies", None) or {})


def token_allows(given: str | None, expected: str | None) -> bool:
    """True if a session presenting `given` may steer.

    With a configured `expected` token the two must match (constant-time compare). Without
    one the dashboard cannot judge, so any non-empty token enables the widgets and the
    acquisition side makes the decision.
    """
    if not given:
        return False
    if expected is None:
        return True
    return hmac.compare_digest(given.encode(), expected.encode())


def parse_thresholds(text: str) -> list[float]:
    """'4.70, 4.75' -> [4.7, 4.75]; raises ValueError naming the bad entry."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError(f"threshold {part!r} is not a voltage") from None
    return out


def box_to_region(box: dict[str, float], geometry: tuple[Any, ...] | None) -> dict[str, int]:
    """A box drawn on the map (plot coordinates) -> grid rows [r0, r1) and columns [c0, c1).

    `geometry` is (ny, nx, x0, y0, width, height) of the displayed map: pixel (r, c) covers
    x in [x0 + c*w/nx, x0 + (c+1)*w/nx) and likewise y, row 0 at the bottom as Bokeh draws
    it. Every pixel the box touches is included; the result is clipped to the grid.

    Raises
    ------
    ValueError
        If no map is shown yet or the box misses the map.
    """
    if geometry is None:
        raise ValueError("no map shown yet: wait for data before drawing a region")
    ny, nx, x0, y0, w, h = geometry
    c0 = max(int(np.floor((box["x0"] - x0) / w * nx)), 0)
    c1 = min(int(np.ceil((box["x1"] - x0) / w * nx)), nx)
    r0 = max(int(np.floor((box["y0"] - y0) / h * ny)), 0)
    r1 = min(int(np.ceil((box["y1"] - y0) / h * ny)), ny)
    if c1 <= c0 or r1 <= r0:
        raise ValueError(f"the box x {box['x0']:.2f}…{box['x1']:.2f}, y {box['y0']:.2f}…{box['y1']:.2f} "
                         f"misses the {ny} x {nx} map")
    return {"r0": r0, "r1": r1, "c0": c0, "c1": c1}


class Steering:
    """The control row of one session and the callbacks behind it."""

    def __init__(self, doc: Document, control: ControlClient | None, token: str | None,
                 authorized: bool, intensity_fig: figure, roi_source: ColumnDataSource,
                 geometry: Callable[[], tuple[Any, ...] | None] = lambda: None) -> None:
        self.doc, self.control, self.token, self.authorized = doc, control, token, authorized
        self.geometry = geometry
        self.roi_source = roi_source
        self.pending_region: dict[str, float] | None = None
        self.last_reply: dict[str, Any] | None = None
        enabled = authorized and control is not None
        b = dict(height=34, disabled=not enabled)
        self.pause = Button(label="Pause", button_type="warning", name="pause", width=90, **b)
        self.resume = Button(label="Resume", button_type="success", name="resume", width=95, **b)
        self.map_now = Button(label="Map now", button_type="primary", name="map_now", width=90, **b)
        self.thresholds = TextInput(title="", placeholder="thresholds V: 4.70, 4.75", width=170,
                                    name="thresholds", disabled=not enabled, height=34)
        self.period = NumericInput(title="", placeholder="period s", width=80, name="period",
                                   mode="float", low=0, disabled=not enabled, height=34)
        self.plateau = Checkbox(label="plateau", active=False, name="plateau", disabled=not enabled)
        self.apply_triggers = Button(label="Set triggers", name="set_triggers", width=95, **b)
        self.set_region = Button(label="Set region", name="set_region", width=95, **b)
        self.arm = Checkbox(label="arm", active=False, name="arm_abort", disabled=not enabled)
        self.abort = Button(label="Abort", button_type="danger", name="abort", width=85, height=34,
                            disabled=True)
        mode = ("steering enabled" if enabled else
                "read-only view: open the steering URL (with its token) once to steer" if control is not None else
                "read-only view: no control channel")
        self.feedback = Div(text=f'<span style="color:#555">{html.escape(mode)}</span>',
                            name="feedback", sizing_mode="stretch_width", min_width=150, height=34,
                            styles={"font-size": "13px", "overflow": "hidden"})
        self.pause.on_click(lambda: self.send("pause"))
        self.resume.on_click(lambda: self.send("resume"))
        self.map_now.on_click(lambda: self.send("start_map"))
        self.abort.on_click(self._abort)
        self.apply_triggers.on_click(self._triggers)
        self.set_region.on_click(self._region)
        self.arm.on_change("active", lambda attr, old, new: self._arm(new))
        intensity_fig.on_event(SelectionGeometry, self._on_box)

    @property
    def enabled(self) -> bool:
        """May this session steer (a valid token and a control channel)?"""
        return self.authorized and self.control is not None

    def layout(self) -> Any:
        """One row of controls."""
        return row(self.pause, self.resume, self.map_now, self.thresholds, self.period, self.plateau,
                   self.apply_triggers, self.set_region, self.arm, self.abort, self.feedback,
                   sizing_mode="stretch_width", height=40)

    # ---- callbacks (server event loop) -------------------------------------------------------
    def send(self, cmd: str, **args: Any) -> None:
        """Send `cmd` if this session may steer; the reply shows in the feedback line."""
        if not self.authorized or self.control is None:
            log.warning("refused %s from a session without a valid token", cmd)
            self._show({"ok": False, "error": "refused: this view is read-only (no valid token)"}, cmd)
            return
        self._show_text(f"{cmd}: sent, waiting for the acquisition…", "#555")
        fut = _EXECUTOR.submit(self._request, cmd, args)
        fut.add_done_callback(lambda f: self._post(partial(self._show, f.result(), cmd)))

    def _request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        assert self.control is not None
        try:
            return self.control.request(cmd, self.token, **args)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}

    def _post(self, fn: Callable[[], None]) -> None:
        try:
            self.doc.add_next_tick_callback(fn)
        except Exception:   # session already closed
            log.debug("session closed before a control reply arrived")

    def _abort(self) -> None:
        if not self.arm.active:
            self._show({"ok": False, "error": "tick 'arm' first"}, "abort")
            return
        self.arm.active = False
        self.send("abort", reason="aborted from the dashboard")

    def _arm(self, active: bool) -> None:
        self.abort.disabled = not (active and self.authorized and self.control is not None)

    def _triggers(self) -> None:
        try:
            thresholds = parse_thresholds(self.thresholds.value or "")
        except ValueError as exc:
            self._show({"ok": False, "error": str(exc)}, "set_trigger")
            return
        args: dict[str, Any] = {"thresholds": thresholds}
        if self.period.value is not None:
            args["period_s"] = float(self.period.value)
        if self.plateau.active:
            args["plateau"] = True
        if not thresholds and "period_s" not in args and "plateau" not in args:
            self._show({"ok": False, "error": "give voltage thresholds, a period and/or plateau"}, "set_trigger")
            return
        self.send("set_trigger", **args)

    def _on_box(self, event: SelectionGeometry) -> None:
        g = event.geometry or {}
        if g.get("type") != "rect" or not event.final:
            return
        x0, x1 = sorted((float(g["x0"]), float(g["x1"])))
        y0, y1 = sorted((float(g["y0"]), float(g["y1"])))
        self.pending_region = {"x0": x0, "x1": x1, "y0": y0, "y1": y1}
        self.roi_source.data = {"x": [(x0 + x1) / 2], "y": [(y0 + y1) / 2], "w": [x1 - x0], "h": [y1 - y0]}
        self._show_text(f"box x {x0:.2f}…{x1:.2f}, y {y0:.2f}…{y1:.2f}: press 'Set region' to use it "
                        f"for the next map", "#00838f")

    def _region(self) -> None:
        if self.pending_region is None:
            self._show({"ok": False, "error": "draw a box on the intensity map first"}, "set_region")
            return
        try:
            region = box_to_region(self.pending_region, self.geometry())
        except ValueError as exc:
            self._show({"ok": False, "error": str(exc)}, "set_region")
            return
        self.send("set_region", **region)

    def _show(self, reply: dict[str, Any], cmd: str) -> None:
        self.last_reply = dict(reply, cmd=cmd, t=time.time())
        if reply.get("ok"):
            result = reply.get("result") or {}
            extra = f" (acquisition: {result['state']})" if "state" in result else ""
            self._show_text(f"{cmd}: accepted{extra}", "#2e7d32")
        else:
            self._show_text(f"{cmd}: {reply.get('error', 'refused')}", "#c62828")

    def _show_text(self, text: str, colour: str) -> None:
        self.feedback.text = (f'<span id="opmon-feedback" style="color:{colour}">'
                              f'{html.escape(text)}</span>')
