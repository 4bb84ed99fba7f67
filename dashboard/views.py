"""Per-session view updates: pull from the model, push the difference to the browser.

Runs only on the Bokeh server's event loop (from the session's periodic callback), so the
feed thread never touches a Bokeh document. Maps are patched by changed row range, traces
and markers are streamed, the histogram is patched in place; whole sources are replaced
only when the map shape changes or the user steps to another map in the gallery.
"""
from __future__ import annotations

import html
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from bokeh.models import ColumnDataSource

from opmon.dashboard import panels as P
from opmon.dashboard.colors import pack_rgba, tilt_to_rgb
from opmon.dashboard.model import Decision, DoseView, FinalMap, MapUpdate
from opmon.dashboard.patching import changed_rows, flat_rows_patch, image_row_patch, robust_range
from opmon.processors.colorwheel import auto_max_altitude

STATE_COLOURS = {"running": "#2e7d32", "paused": "#ef6c00", "aborted": "#c62828", "idle": "#616161",
                 "finished": "#1565c0", "unknown": "#616161", "stale": "#6a1b9a", "error": "#c62828"}
STALE_AFTER = 5.0   # s without a status message before the badge says STALE


class DoseMapView:
    """Keeps the dose panel on the newest dose a map message carried (the whole image each time:
    the grid grows as maps reach new positions, and the dose changes everywhere the beam went),
    with the dose limit when the acquisition has one: positions at or over it are crossed out
    and the colour scale tops out at the limit, so "how close" reads at a glance."""

    def __init__(self, panel: P.MapPanel) -> None:
        self.panel = panel
        self.shown: DoseView | None = None
        self.limit: float | None = None
        self.over = ColumnDataSource({"x": [], "y": []}, name="dose_over_source")
        panel.fig.scatter(x="x", y="y", source=self.over, marker="x", size=9, line_width=2, color="#00e5ff")

    def show(self, dose: DoseView | None, limit: float | None = None) -> bool:
        """Show `dose` against `limit` (photons, None: no limit); returns True if anything was sent
        (False without a dose, or the same one against the same limit)."""
        if dose is None or (self.shown is not None and self.shown.photons.shape == dose.photons.shape
                            and np.array_equal(self.shown.photons, dose.photons) and limit == self.limit):
            return False
        ny, nx = dose.photons.shape
        x, y, w, h = dose.x0 - dose.step / 2, dose.y0 - dose.step / 2, nx * dose.step, ny * dose.step
        self.panel.source.data = {"image": [dose.photons.copy()], "x": [x], "y": [y], "dw": [w], "dh": [h]}
        self.panel.mapper.low, self.panel.mapper.high = 0.0, max(dose.peak, limit or 0.0, 1.0)
        fig = self.panel.fig
        fig.x_range.start, fig.x_range.end = x, x + w
        fig.y_range.start, fig.y_range.end = y, y + h
        title = f"dose (photons per position, all maps): max {dose.peak:.3g}"
        if limit is not None:
            rows, cols = np.nonzero(dose.photons >= limit)
            self.over.data = {"x": (dose.x0 + cols * dose.step).tolist(), "y": (dose.y0 + rows * dose.step).tolist()}
            title += f" of limit {limit:.3g} ({rows.size} over, ×)"
        else:
            self.over.data = {"x": [], "y": []}
        fig.title.text = title
        self.shown, self.limit = dose, limit
        return True


class MapView:
    """Keeps the four map panels, the tilt wheel and the pole figure in step with one map."""

    def __init__(self, d: P.MapPanel, intensity: P.MapPanel, width: P.MapPanel, tilt: P.TiltPanel,
                 pole_fig: Any, pole: Any, pole_rings: Any, max_altitude: float | None) -> None:
        self.scalar = {"d_spacing": d, "intensity": intensity, "peak_width": width}
        self.tilt = tilt
        self.pole_fig, self.pole, self.pole_rings = pole_fig, pole, pole_rings
        self.max_altitude = max_altitude
        self._geometry: tuple[Any, ...] | None = None
        self._sent: dict[str, npt.NDArray[Any] | None] = {}
        self._ranges: dict[str, tuple[float, float]] = {}
        self._alt_max = 0.0
        self.patches_sent = 0
        self.replacements = 0

    @property
    def geometry(self) -> tuple[Any, ...] | None:
        """(ny, nx, x0, y0, width, height) of the map on screen, None before the first map."""
        return self._geometry

    def show(self, u: MapUpdate) -> bool:
        """Bring every map panel up to `u`; returns True if anything was sent."""
        ny, nx = u.shape
        x0, y0, w, h = u.extent if u.extent is not None else (0.0, 0.0, float(nx), float(ny))
        geometry = (ny, nx, x0, y0, w, h)
        if geometry != self._geometry:
            self._replace(u, geometry)
            return True
        sent = False
        for name, panel in self.scalar.items():
            new = np.asarray(u.arrays[name], dtype=np.float64)
            rows = changed_rows(self._sent.get(name), new)
            if rows is not None:
                panel.source.patch(image_row_patch("image", new, rows))
                self._sent[name] = new.copy()
                self.patches_sent += 1
                sent = True
            self._update_range(name, panel, new)
        rgba, alt_max = self._tilt_rgba(u)
        rows = changed_rows(self._sent.get("tilt"), rgba)
        if rows is not None:
            self.tilt.source.patch(image_row_patch("image", rgba, rows))
            self._sent["tilt"] = rgba.copy()
            sent = True
        self._set_alt_max(alt_max)
        x, y, colours = self._pole_points(u, rgba)
        rows = changed_rows(self._sent.get("pole"), np.stack([x, y], axis=-1).reshape(ny, -1))
        if rows is not None:
            for col, values in (("x", x), ("y", y), ("color", colours)):
                self.pole.patch(flat_rows_patch(col, values, rows, nx))
            self._sent["pole"] = np.stack([x, y], axis=-1).reshape(ny, -1)
            sent = True
        return sent

    def _replace(self, u: MapUpdate, geometry: tuple[Any, ...]) -> None:
        """A new map shape or extent: the only case where whole image sources are replaced."""
        ny, nx, x0, y0, w, h = geometry
        for name, panel in self.scalar.items():
            new = np.array(u.arrays[name], dtype=np.float64)
            panel.source.data = {"image": [new], "x": [x0], "y": [y0], "dw": [w], "dh": [h]}
            self._sent[name] = new.copy()
            self._ranges.pop(name, None)
            self._update_range(name, panel, new)
        rgba, alt_max = self._tilt_rgba(u)
        self.tilt.source.data = {"image": [rgba], "x": [x0], "y": [y0], "dw": [w], "dh": [h]}
        self._sent["tilt"] = rgba.copy()
        self._set_alt_max(alt_max)
        x, y, colours = self._pole_points(u, rgba)
        self.pole.data = {"x": x, "y": y, "color": colours}
        self._sent["pole"] = np.stack([x, y], axis=-1).reshape(ny, -1)
        fig = self.scalar["d_spacing"].fig
        fig.x_range.start, fig.x_range.end = x0, x0 + w
        fig.y_range.start, fig.y_range.end = y0, y0 + h
        unit = "µm" if u.extent is not None else "map pixel"
        for panel_fig in [p.fig for p in self.scalar.values()] + [self.tilt.fig]:
            panel_fig.xaxis.axis_label, panel_fig.yaxis.axis_label = f"x ({unit})", f"y ({unit})"
        self._geometry = geometry
        self.replacements += 1

    def _update_range(self, name: str, panel: P.MapPanel, values: npt.NDArray[np.float64]) -> None:
        rng = robust_range(values, 0.5, 99.5) if name != "intensity" else robust_range(values, 0.0, 100.0)
        if rng is None:
            return
        old = self._ranges.get(name)
        span = rng[1] - rng[0]
        if old is None or abs(old[0] - rng[0]) > 0.02 * span or abs(old[1] - rng[1]) > 0.02 * span:
            panel.mapper.low, panel.mapper.high = rng
            self._ranges[name] = rng

    def _tilt_rgba(self, u: MapUpdate) -> tuple[npt.NDArray[np.uint32], float]:
        alt = np.asarray(u.arrays["tilt_altitude"], dtype=np.float64)
        azi = np.asarray(u.arrays["tilt_azimuth"], dtype=np.float64)
        alt_max = self.max_altitude or auto_max_altitude(alt)
        alt_max = float(f"{alt_max:.2g}")   # two digits: a live map does not recolour every tick
        mask = u.arrays.get("mask")
        return pack_rgba(tilt_to_rgb(alt, azi, alt_max, mask)), alt_max

    def _set_alt_max(self, alt_max: float) -> None:
        if alt_max == self._alt_max:
            return
        self._alt_max = alt_max
        self.tilt.legend_label_source.patch({"text": [(4, f"edge = {alt_max:.2g}°")]})
        self.pole_rings.data = {"r": [alt_max / 2, alt_max], "ly": [alt_max / 2, alt_max],
                                "label": [f"{alt_max / 2:.2g}°", f"{alt_max:.2g}°"]}
        fig = self.pole_fig
        fig.x_range.start, fig.x_range.end = -1.15 * alt_max, 1.15 * alt_max
        fig.y_range.start, fig.y_range.end = -1.15 * alt_max, 1.15 * alt_max

    @staticmethod
    def _pole_points(u: MapUpdate, rgba: npt.NDArray[np.uint32]) -> tuple[Any, Any, list[str]]:
        alt = np.asarray(u.arrays["tilt_altitude"], dtype=np.float64).ravel()
        azi = np.radians(np.asarray(u.arrays["tilt_azimuth"], dtype=np.float64).ravel())
        x, y = alt * np.cos(azi), alt * np.sin(azi)
        rgb = rgba.ravel().view(np.uint8).reshape(-1, 4)[:, :3]
        colours = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]
        return x, y, colours


class HistogramView:
    """Current-map d histogram (patched) over up to N earlier maps (replaced per new final map)."""

    def __init__(self, current: Any, earlier: Any) -> None:
        self.current, self.earlier = current, earlier
        self.edges: npt.NDArray[np.float64] | None = None
        self._earlier_key: tuple[Any, ...] | None = None

    def show(self, d: npt.NDArray[np.float64], history: list[FinalMap], map_number: int) -> None:
        """Histogram of `d` on edges shared with the earlier maps (so peaks line up)."""
        earlier = [r for r in history if r.update.map_number != map_number][-P.N_EARLIER:]
        valid = d[np.isfinite(d)]
        pool = [valid] + [_valid_d(r) for r in earlier]
        allv = np.concatenate(pool) if pool else valid
        if allv.size == 0:
            return
        lo, hi = float(np.min(allv)), float(np.max(allv))
        if self.edges is None or lo < self.edges[0] or hi > self.edges[-1] or \
                (hi - lo) < 0.3 * (self.edges[-1] - self.edges[0]):
            pad = max((hi - lo) * 0.05, 1e-5)
            self.edges = np.linspace(lo - pad, hi + pad, P.N_BINS + 1)
            self._earlier_key = None
            counts = _fractions(valid, self.edges)
            self.current.data = {"left": self.edges[:-1], "right": self.edges[1:], "top": counts}
        else:
            counts = _fractions(valid, self.edges)
            old = np.asarray(self.current.data["top"])
            idx = np.flatnonzero(old != counts)
            if idx.size:
                self.current.patch({"top": [(slice(int(idx[0]), int(idx[-1]) + 1), counts[idx[0]:idx[-1] + 1])]})
        key = (tuple(r.update.map_number for r in earlier), self.edges[0], self.edges[-1])
        if key != self._earlier_key:
            centres = 0.5 * (self.edges[:-1] + self.edges[1:])
            n = len(earlier)
            self.earlier.data = {
                "xs": [centres] * n,
                "ys": [_fractions(_valid_d(r), self.edges) for r in earlier],
                "color": [_grey(i, n) for i in range(n)],
                "label": [f"map {r.update.map_number}" for r in earlier]}
            self._earlier_key = key


def _fractions(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Histogram as fractions of the valid pixels, so a half-filled map compares with full ones."""
    counts = np.histogram(values, edges)[0].astype(np.float64)
    return counts / max(values.size, 1)


def _valid_d(r: FinalMap) -> npt.NDArray[np.float64]:
    d = np.asarray(r.update.arrays["d_spacing"], dtype=np.float64)
    return d[np.isfinite(d)]


def _grey(i: int, n: int) -> str:
    """Older maps lighter: oldest ~#c8c8c8, newest ~#505050."""
    level = int(200 - 120 * (i + 1) / max(n, 1))
    return f"#{level:02x}{level:02x}{level:02x}"


def status_html(status: dict[str, Any], received: float, showing: str, now: float | None = None) -> str:
    """The run-status bar: state badge, map progress, rates, losses and archive, readable at a glance."""
    now = time.time() if now is None else now
    state = str(status.get("state", "unknown")).lower()
    age = now - received if received else float("inf")
    badge_state = state if age < STALE_AFTER else "stale"
    colour = STATE_COLOURS.get(badge_state, "#616161")
    progress = float(status.get("map_progress", status.get("progress", 0.0)) or 0.0)
    pct = max(0.0, min(100.0, 100.0 * progress))
    fps = status.get("frames_per_s", status.get("fps"))
    lost = status.get("frames_lost", 0)
    lost_colour = "#c62828" if lost else "#2e7d32"
    archive_full = str(status.get("archive") or "—")
    archive = "/".join(archive_full.split("/")[-2:]) if "/" in archive_full else archive_full
    map_no = status.get("map", "—")
    age_txt = "no status yet" if not received else f"updated {age:.1f} s ago"
    fps_txt = f"{float(fps):,.0f}" if isinstance(fps, (int, float)) else "—"
    keep = "white-space:nowrap;flex:none;"
    squeeze = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;min-width:0;"
    return (
        f'<div style="display:flex;align-items:center;gap:16px;font:15px sans-serif;width:100%;">'
        f'<span id="opmon-state" data-state="{html.escape(state)}" style="{keep}background:{colour};color:white;'
        f'padding:6px 14px;border-radius:6px;font-weight:bold;font-size:20px;min-width:110px;'
        f'text-align:center;">{html.escape(badge_state.upper())}</span>'
        f'<span style="{keep}"><b>map {html.escape(str(map_no))}</b> '
        f'<span style="display:inline-block;width:140px;height:14px;background:#e0e0e0;border-radius:3px;'
        f'vertical-align:middle;"><span style="display:block;width:{pct:.0f}%;height:100%;'
        f'background:{colour};border-radius:3px;"></span></span> {pct:.0f}%</span>'
        f'<span style="{keep}"><b>{fps_txt}</b> frames/s</span>'
        f'<span style="{keep}color:{lost_colour}"><b>{html.escape(str(lost))}</b> frames lost</span>'
        f'<span style="{squeeze}color:#444;flex:0 1 auto" title="{html.escape(archive_full)}">archive: '
        f'<code>{html.escape(archive)}</code></span>'
        f'<span style="{squeeze}color:#777;font-size:13px;flex:1 1 0">{html.escape(showing)} · {age_txt}</span></div>')


def decisions_html(decisions: list[Decision], shown: int = 6, now: float | None = None,
                   total: int | None = None) -> str:
    """The plan's newest decisions, newest first: when, what, why (the run's `steering` stream);
    `total` decisions this run (default: as many as given)."""
    if not decisions:
        return '<div style="font:13px sans-serif;color:#777">decisions: none yet this run</div>'
    now = time.time() if now is None else now
    rows = []
    for d in reversed(decisions[-shown:]):
        ago = max(0.0, now - d.t)
        when = f"{ago:.0f} s ago" if ago < 120 else time.strftime("%H:%M:%S", time.localtime(d.t))
        what = ", ".join(f"{k} {v}" for k, v in d.detail.items() if k not in ("maps", "answers"))
        rows.append(f'<tr data-decision="{html.escape(d.decision)}"><td style="color:#777;padding-right:8px">'
                    f'{html.escape(when)}</td><td style="padding-right:8px"><b>{html.escape(d.decision)}</b></td>'
                    f'<td style="padding-right:8px">{html.escape(d.reason)}</td>'
                    f'<td style="color:#555">{html.escape(what)}</td></tr>')
    return ('<div style="font:13px sans-serif" id="opmon-decisions"><b>decisions</b> '
            f'({len(decisions) if total is None else total} this run)<table style="border-collapse:collapse">{"".join(rows)}</table></div>')
