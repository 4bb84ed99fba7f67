"""One-page PNG summary of a map: d, tilt colour wheel, intensity, d histogram.

For the logbook and for talks: real positions (µm, with a scale bar) when the map has them,
masked pixels grey in every panel, d labels that stay distinct (no offset notation), and a
title with the map's voltage, time and trigger. Uses matplotlib's Agg backend only.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402

from opmon.processors.colorwheel import MASKED_RGB, auto_max_altitude, tilt_rgb, wheel_legend  # noqa: E402
from opmon.processors.figure_context import MapContext  # noqa: E402
from opmon.processors.maps import MASK_RULE, MapResult  # noqa: E402
from opmon.processors.series import MapPoint  # noqa: E402
from opmon.streaming.archive.safe_writes import atomic_path  # noqa: E402

MASKED_COLOUR = tuple(c / 255.0 for c in MASKED_RGB)


def plot_maps(result: MapResult, path: str | Path, context: MapContext | None = None) -> Path:
    """Write the summary figure of one map to `path` (PNG) and return the path."""
    fig = build_figure(result, context or MapContext())
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # an interrupted or failed save leaves no half PNG
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def build_figure(result: MapResult, context: MapContext) -> Figure:
    """The summary figure (not saved): four panels, the mask rule and the context's title."""
    extent, unit = _extent(result.shape, context)
    fig, axes = plt.subplots(2, 2, figsize=(11, 9), constrained_layout=True)
    ax = axes[0, 0]
    im = ax.imshow(result.d_spacing, cmap=_with_grey_nan("viridis"), extent=extent, interpolation="nearest")
    ax.set_title("d-spacing (Å)")
    fig.colorbar(im, ax=ax, format=_plain_formatter())
    ax = axes[0, 1]
    max_alt = auto_max_altitude(result.tilt_altitude)
    ax.imshow(tilt_rgb(result.tilt_altitude, result.tilt_azimuth, max_alt), extent=extent, interpolation="nearest")
    ax.set_title(f"tilt (hue = azimuth, saturation = altitude, max {max_alt:.3f}°)")
    _wheel_beside(ax)
    ax = axes[1, 0]
    intensity = np.where(result.mask.astype(bool), result.intensity, np.nan)
    im = ax.imshow(intensity, cmap=_with_grey_nan("magma"), extent=extent, interpolation="nearest")
    ax.set_title("intensity Σ I (counts)")
    fig.colorbar(im, ax=ax)
    _histogram(axes[1, 1], result)
    for a in (axes[0, 0], axes[0, 1], axes[1, 0]):
        a.set_xlabel(f"x ({unit})")
        a.set_ylabel(f"y ({unit})")
        if extent is not None:
            _scale_bar(a, extent)
    fig.supxlabel(MASK_RULE, fontsize=8, color="0.3")      # laid out below the panels, never over a label
    title = context.title()
    if title:
        fig.suptitle(title)
    return fig


def _extent(shape: tuple[int, int], context: MapContext) -> tuple[tuple[float, float, float, float] | None, str]:
    """imshow extent in µm from the columns' and rows' positions (pixel edges), or map pixels."""
    x, y = context.x_um, context.y_um
    if x is None or y is None or x.size != shape[1] or y.size != shape[0]:
        return None, "map pixel"
    dx = float(np.median(np.diff(x))) if x.size > 1 else 1.0
    dy = float(np.median(np.diff(y))) if y.size > 1 else 1.0
    dx, dy = dx or 1.0, dy or 1.0
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2), "µm"


def _with_grey_nan(name: str) -> matplotlib.colors.Colormap:
    """A colour map that paints NaN (masked) pixels the one masked grey of every figure."""
    return plt.get_cmap(name).with_extremes(bad=MASKED_COLOUR)


def _plain_formatter() -> ScalarFormatter:
    """Tick labels with as many digits as the ticks need to differ, never an offset (+2.036)."""
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    return formatter


def _scale_bar(ax: Axes, extent: tuple[float, float, float, float]) -> None:
    """A 1-2-5 µm bar about a fifth of the map's width, lower right."""
    width = abs(extent[1] - extent[0])
    target = width / 5
    exponent = np.floor(np.log10(target))
    length = max(m for m in (1, 2, 5, 10) if m * 10 ** exponent <= target) * 10 ** exponent
    label = f"{length:g} µm"
    ax.add_artist(AnchoredSizeBar(ax.transData, length, label, "lower right", pad=0.3, color="black",
                                  frameon=False, size_vertical=abs(extent[2] - extent[3]) / 60))


def _wheel_beside(ax: Axes) -> None:
    """The colour-wheel legend beside the tilt map, never over it."""
    legend = ax.inset_axes((1.02, 0.62, 0.34, 0.34))
    legend.imshow(wheel_legend(96), origin="lower")
    legend.set_axis_off()
    for angle in (0, 90, 180, 270):
        x = 47.5 + 56 * np.cos(np.radians(angle))
        y = 47.5 + 56 * np.sin(np.radians(angle))
        legend.text(x, y, f"{angle}°", ha="center", va="center", fontsize=7)


def _histogram(ax: Axes, result: MapResult) -> None:
    d = result.valid_d()
    if d.size:
        ax.hist(d, bins=min(100, max(10, d.size // 10)), color="tab:blue")
        ax.axvline(float(np.mean(d)), color="k", lw=1, ls="--", label=f"mean {np.mean(d):.5f} Å")
        ax.legend()
    ax.xaxis.set_major_formatter(_plain_formatter())
    ax.xaxis.set_major_locator(MaxNLocator(5))      # five labels of ~7 digits stay apart
    ax.set_xlabel("d (Å)")
    ax.set_ylabel("pixels")
    ax.set_title(f"d histogram ({d.size} valid pixels, std {np.std(d) if d.size else float('nan'):.2e} Å)")


def plot_series(points: list[MapPoint], path: str | Path, title: str = "") -> Path:
    """Write the run's curve (integrated intensity and mean d of each map against charge) to `path`."""
    fig = build_series_figure(points, title)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def build_series_figure(points: list[MapPoint], title: str = "") -> Figure:
    """Two panels sharing the x axis: Σ intensity per map, and mean d; x is the charge passed
    (mA h) when every map has it, else the map number. Each point is labelled with its map."""
    by_charge = bool(points) and all(p.charge_mah is not None for p in points)
    x = [p.charge_mah if by_charge else p.number for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, constrained_layout=True)
    top.plot(x, [p.integrated_intensity for p in points], "o-", color="tab:red")
    top.set_ylabel("integrated intensity Σ I (counts)")
    top.set_ylim(bottom=0)                           # a fade reads as a fade, not as a zoomed wiggle
    top.set_title("imaged reflection per map (it fades as its phase transforms)")
    for xi, p in zip(x, points):
        label = f"map {p.number}" + (f"\n{p.voltage_v:.3f} V" if p.voltage_v is not None else "")
        top.annotate(label, (xi, p.integrated_intensity), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=7)
    with_d = [(xi, p.mean_d) for xi, p in zip(x, points) if p.mean_d is not None]
    bottom.plot([a for a, _ in with_d], [b for _, b in with_d], "s-", color="tab:blue")
    bottom.yaxis.set_major_formatter(_plain_formatter())
    bottom.set_ylabel("mean d of valid pixels (Å)")
    bottom.set_xlabel("charge passed (mA h)" if by_charge else "map number")
    if title:
        fig.suptitle(title)
    return fig
