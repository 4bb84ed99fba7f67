"""The dashboard's figures, built once per browser session; data arrives later by patch/stream.

Every panel owns one or more ColumnDataSources whose columns keep a fixed layout for the
life of a map, so the session can send `patch` (maps, histogram, pole figure) and `stream`
(potentiostat traces, map markers) messages instead of replacing whole figures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from bokeh.models import (BoxSelectTool, ColorBar, ColumnDataSource, LinearAxis, LinearColorMapper,
                          PrintfTickFormatter, Range1d, Span, Title)
from bokeh.palettes import Cividis256, Inferno256, Viridis256
from bokeh.plotting import figure

from opmon.dashboard.colors import wheel_legend
from opmon.processors.maps import MASK_RULE

TOOLS = "pan,wheel_zoom,reset,save"


def _style(p: figure) -> figure:
    """Readable at a glance: larger titles, no toolbar logo, no clutter."""
    p.title.text_font_size = "14px"
    p.toolbar.logo = None
    p.axis.major_label_text_font_size = "11px"
    p.axis.axis_label_text_font_size = "12px"
    p.min_border = 4
    return p


def empty_image_source() -> ColumnDataSource:
    """Image source with one 1 x 1 NaN image; replaced when the first map of a shape arrives."""
    return ColumnDataSource({"image": [np.full((1, 1), np.nan)], "x": [0.0], "y": [0.0],
                             "dw": [1.0], "dh": [1.0]})


@dataclass
class MapPanel:
    """One scalar map (d, intensity or width) with its colour bar."""

    fig: figure
    source: ColumnDataSource
    mapper: LinearColorMapper


def map_panel(title: str, palette: list[str], unit: str, x_range: Range1d | None = None,
              y_range: Range1d | None = None, fmt: str = "%.4g") -> MapPanel:
    """A map image whose pixels are patched row by row as the map fills in; NaN shows grey."""
    src = empty_image_source()
    mapper = LinearColorMapper(palette=palette, nan_color="#d0d0d0", low=0.0, high=1.0)
    kw = {"x_range": x_range, "y_range": y_range} if x_range is not None else {}
    p = figure(title=title, tools=TOOLS, match_aspect=True, sizing_mode="stretch_both",
               min_width=220, min_height=200, **kw)
    p.image(image="image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
    bar = ColorBar(color_mapper=mapper, width=10, title=unit, title_text_font_size="11px",
                   major_label_text_font_size="11px", padding=3, formatter=PrintfTickFormatter(format=fmt))
    p.add_layout(bar, "right")
    p.grid.visible = False
    return MapPanel(_style(p), src, mapper)


D_TITLE = "d-spacing (Å)"


def d_map(x_range: Range1d | None = None, y_range: Range1d | None = None) -> MapPanel:
    """d-spacing map (Å): the lithium content at a glance."""
    panel = map_panel(D_TITLE, Viridis256, "Å", x_range, y_range, fmt="%.5f")
    panel.source.name = "d_source"     # tests find the live d map by this name
    panel.fig.title.name = "d_title"   # the map's voltage, time and trigger reason go here
    panel.fig.add_layout(Title(text=MASK_RULE, text_font_size="10px", text_font_style="normal",
                               text_color="#555555", name="mask_rule"), "below")
    return panel


def intensity_map(x_range: Range1d, y_range: Range1d) -> tuple[MapPanel, ColumnDataSource]:
    """Intensity map with a persistent box-select tool to pick the next map's region.

    Returns the panel and the source of the proposed-region rectangle.
    """
    panel = map_panel("intensity (drag a box: next region)", Inferno256,
                      "counts", x_range, y_range)
    panel.fig.name = "intensity_fig"      # tests find the plot to drag a box on it
    box = BoxSelectTool(persistent=True, description="Draw the next map's region")
    panel.fig.add_tools(box)
    panel.fig.toolbar.active_drag = box
    roi = ColumnDataSource({"x": [], "y": [], "w": [], "h": []})
    panel.fig.rect(x="x", y="y", width="w", height="h", source=roi, fill_alpha=0.0,
                   line_color="#00e5ff", line_width=2, line_dash="dashed")
    return panel, roi


def width_map(x_range: Range1d, y_range: Range1d) -> MapPanel:
    """Peak-width map (1/Å): strain gradients and defects broaden the peak."""
    return map_panel("peak width σ (1/Å)", Cividis256, "1/Å", x_range, y_range)


def dose_map() -> MapPanel:
    """Dose per sample position over all maps of the run (photons), in the piezo frame (µm):
    its own axes, since re-centred maps cover other regions of the sample."""
    panel = map_panel("dose (photons per position, all maps)", Inferno256, "photons", Range1d(0, 1), Range1d(0, 1),
                      fmt="%.2g")
    panel.fig.name = "dose_fig"
    panel.source.name = "dose_source"     # tests find the dose map by this name
    panel.fig.xaxis.axis_label = "x (µm)"
    panel.fig.yaxis.axis_label = "y (µm)"
    return panel


@dataclass
class TiltPanel:
    """Tilt colour-wheel map and its legend."""

    fig: figure
    source: ColumnDataSource
    legend: figure
    legend_label_source: ColumnDataSource


def tilt_panel(x_range: Range1d, y_range: Range1d) -> TiltPanel:
    """Tilt map: hue = azimuth, saturation = altitude, with the wheel beside it."""
    src = ColumnDataSource({"image": [np.zeros((1, 1), dtype=np.uint32)], "x": [0.0], "y": [0.0],
                            "dw": [1.0], "dh": [1.0]})
    p = figure(title="tilt (colour wheel)", tools=TOOLS, match_aspect=True,
               sizing_mode="stretch_both", min_width=220, min_height=200,
               x_range=x_range, y_range=y_range)
    p.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=src)
    p.grid.visible = False
    leg = figure(width=140, height=160, tools="", toolbar_location=None, title="azimuth / altitude",
                 x_range=(-1.9, 1.9), y_range=(-1.45, 2.0))
    leg.image_rgba(image=[wheel_legend(121)], x=-1, y=-1, dw=2, dh=2)
    lbl = ColumnDataSource({"x": [1.08, 0.0, -1.08, 0.0, 0.0], "y": [0.0, 1.08, 0.0, -1.08, 1.55],
                            "text": ["0°", "90°", "180°", "270°", "edge = 1.0°"],
                            "align": ["left", "center", "right", "center", "center"],
                            "base": ["middle", "bottom", "middle", "top", "bottom"]})
    leg.text(x="x", y="y", text="text", text_align="align", text_baseline="base", source=lbl,
             text_font_size="10px")
    leg.axis.visible = False
    leg.grid.visible = False
    leg.outline_line_color = None
    leg.title.text_font_size = "11px"
    return TiltPanel(_style(p), src, leg, lbl)


N_BINS = 60
N_EARLIER = 4


def histogram_panel() -> tuple[figure, ColumnDataSource, ColumnDataSource]:
    """d histogram of the current map (bars) over earlier maps (lines, newest darkest)."""
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    cur = ColumnDataSource({"left": edges[:-1], "right": edges[1:], "top": np.zeros(N_BINS)})
    earlier = ColumnDataSource({"xs": [], "ys": [], "color": [], "label": []})
    p = figure(title="d histogram (bars = current map)", tools=TOOLS,
               sizing_mode="stretch_both", min_width=240, min_height=180,
               x_axis_label="d (Å)", y_axis_label="fraction of valid pixels")
    p.multi_line(xs="xs", ys="ys", line_color="color", line_width=2, source=earlier, legend_field="label")
    p.quad(left="left", right="right", top="top", bottom=0, source=cur, fill_color="#1f77b4",
           fill_alpha=0.55, line_color="#1f77b4", legend_label="current")
    p.legend.label_text_font_size = "10px"
    p.legend.location = "top_left"
    p.legend.background_fill_alpha = 0.6
    p.xaxis.major_label_orientation = 0.5
    return _style(p), cur, earlier


def pole_panel() -> tuple[figure, ColumnDataSource, ColumnDataSource]:
    """Pole figure of local Q directions around the mean Q (radius = altitude in deg)."""
    pts = ColumnDataSource({"x": [], "y": [], "color": []})
    rings = ColumnDataSource({"r": [0.5, 1.0], "label": ["0.5°", "1.0°"], "ly": [0.5, 1.0]})
    p = figure(title="pole figure of local Q (deg)", tools=TOOLS, match_aspect=True,
               sizing_mode="stretch_both", min_width=200, min_height=180,
               x_range=Range1d(-1.1, 1.1), y_range=Range1d(-1.1, 1.1))
    p.circle(x=0, y=0, radius="r", source=rings, fill_alpha=0, line_color="#999999", line_dash="dotted")
    p.text(x=0, y="ly", text="label", source=rings, text_font_size="10px", text_color="#666666")
    p.scatter(x="x", y="y", fill_color="color", line_color="#666666", line_width=0.5, source=pts,
              size=6, alpha=0.85)
    p.add_layout(Span(location=0, dimension="width", line_color="#bbbbbb"))
    p.add_layout(Span(location=0, dimension="height", line_color="#bbbbbb"))
    p.grid.visible = False
    return _style(p), pts, rings


@dataclass
class EchemPanels:
    """Voltage/current vs time and voltage vs capacity, with map markers."""

    vt: figure
    vq: figure
    iq: figure                 # integrated intensity of each final map against capacity
    readings: ColumnDataSource
    markers: ColumnDataSource


def echem_panels() -> EchemPanels:
    """Traces stream in; each finished map adds a numbered marker where it was taken."""
    readings = ColumnDataSource({"hours": [], "voltage": [], "current_ma": [], "capacity": []})
    markers = ColumnDataSource({"hours": [], "voltage": [], "capacity": [], "label": [], "intensity": []})
    vt = figure(title="V and I vs time (▼ = map)", tools=TOOLS, sizing_mode="stretch_both",
                min_width=260, min_height=180, x_axis_label="time (h)", y_axis_label="V")
    v_line = vt.line(x="hours", y="voltage", source=readings, line_width=2, color="#1f77b4", legend_label="V")
    vt.extra_y_ranges = {"current": Range1d(-1.0, 1.0)}
    vt.add_layout(LinearAxis(y_range_name="current", axis_label="mA"), "right")
    vt.line(x="hours", y="current_ma", source=readings, y_range_name="current", color="#ff7f0e",
            line_width=1.5, legend_label="I")
    v_marks = vt.scatter(x="hours", y="voltage", source=markers, marker="inverted_triangle", size=11,
                         color="#d62728")
    vt.y_range.renderers = [v_line, v_marks]   # the current trace has its own axis
    vt.text(x="hours", y="voltage", text="label", source=markers, y_offset=-10, text_font_size="10px",
            text_align="center", text_color="#d62728")
    vt.legend.location = "bottom_right"
    vt.y_range.range_padding = 0.2           # room for the map labels above the markers
    vt.legend.label_text_font_size = "10px"
    vt.legend.background_fill_alpha = 0.6
    vq = figure(title="V vs capacity (▼ = map)", tools=TOOLS, sizing_mode="stretch_both",
                min_width=220, min_height=180, x_axis_label="capacity (mAh)", y_axis_label="V")
    vq.line(x="capacity", y="voltage", source=readings, line_width=2, color="#1f77b4")
    vq.y_range.range_padding = 0.2
    vq.scatter(x="capacity", y="voltage", source=markers, marker="inverted_triangle", size=11,
               color="#d62728")
    vq.text(x="capacity", y="voltage", text="label", source=markers, y_offset=-10, text_font_size="10px",
            text_align="center", text_color="#d62728")
    # the imaged reflection fades as its phase transforms (seed 000, Supplementary Fig. 10)
    iq = figure(title="Σ I per map vs capacity (imaged reflection)", tools=TOOLS, sizing_mode="stretch_both",
                min_width=220, min_height=180, x_axis_label="capacity (mAh)", y_axis_label="Σ I (counts)")
    iq.line(x="capacity", y="intensity", source=markers, line_width=1.5, color="#d62728")
    iq.scatter(x="capacity", y="intensity", source=markers, size=8, color="#d62728")
    iq.text(x="capacity", y="intensity", text="label", source=markers, y_offset=-8, text_font_size="10px",
            text_align="center", text_color="#d62728")
    iq.y_range.start = 0                      # a fade reads as a fade
    iq.yaxis.formatter.use_scientific = True
    return EchemPanels(_style(vt), _style(vq), _style(iq), readings, markers)
