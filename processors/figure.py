"""One-page PNG summary of a map: d, tilt colour wheel, intensity, d histogram.

For the logbook and for users without a dashboard; uses matplotlib's Agg backend only.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from opmon.streaming.archive.safe_writes import atomic_path  # noqa: E402
from opmon.processors.colorwheel import auto_max_altitude, tilt_rgb, wheel_legend  # noqa: E402
from opmon.processors.maps import MapResult  # noqa: E402


def plot_maps(result: MapResult, path: str | Path, title: str = "", step_um: float | None = None) -> Path:
    """Write the summary figure of one map to `path` (PNG) and return the path."""
    ny, nx = result.shape
    extent = None if step_um is None else (0, nx * step_um, ny * step_um, 0)
    unit = "µm" if step_um is not None else "pixel"
    fig, axes = plt.subplots(2, 2, figsize=(11, 9), constrained_layout=True)
    ax = axes[0, 0]
    im = ax.imshow(result.d_spacing, cmap="viridis", extent=extent, interpolation="nearest")
    ax.set_title("d-spacing (Å)")
    fig.colorbar(im, ax=ax, format="%.4f")
    ax = axes[0, 1]
    max_alt = auto_max_altitude(result.tilt_altitude)
    ax.imshow(tilt_rgb(result.tilt_altitude, result.tilt_azimuth, max_alt), extent=extent, interpolation="nearest")
    ax.set_title(f"tilt (hue = azimuth, saturation = altitude, max {max_alt:.3f}°)")
    legend = ax.inset_axes((1.02, 0.62, 0.34, 0.34))  # beside the map, never over it
    legend.imshow(wheel_legend(96), origin="lower")
    legend.set_axis_off()
    for angle in (0, 90, 180, 270):
        x = 47.5 + 56 * np.cos(np.radians(angle))
        y = 47.5 + 56 * np.sin(np.radians(angle))
        legend.text(x, y, f"{angle}°", ha="center", va="center", fontsize=7)
    ax = axes[1, 0]
    im = ax.imshow(result.intensity, cmap="magma", extent=extent, interpolation="nearest")
    ax.set_title("intensity Σ I (counts)")
    fig.colorbar(im, ax=ax)
    ax = axes[1, 1]
    d = result.valid_d()
    if d.size:
        ax.hist(d, bins=min(100, max(10, d.size // 10)), color="tab:blue")
        ax.axvline(float(np.mean(d)), color="k", lw=1, ls="--", label=f"mean {np.mean(d):.5f} Å")
        ax.legend()
    ax.set_xlabel("d (Å)")
    ax.set_ylabel("pixels")
    ax.set_title(f"d histogram ({d.size} valid pixels, std {np.std(d) if d.size else float('nan'):.2e} Å)")
    for a in (axes[0, 0], axes[0, 1], axes[1, 0]):
        a.set_xlabel(f"x ({unit})")
        a.set_ylabel(f"y ({unit})")
    if title:
        fig.suptitle(title)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # an interrupted or failed save leaves no half PNG
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
