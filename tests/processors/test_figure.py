"""The summary figure states what a scientist needs to show a map: real positions with a scale
bar, masked pixels grey in every panel, distinct d labels without offset notation, and a title
with the map's voltage, time and trigger read from the archived run's files."""
from __future__ import annotations

import time

import h5py
import numpy as np
import pytest
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from opmon.cli import main
from opmon.processors.colorwheel import MASKED_RGB
from opmon.processors.figure import build_figure
from opmon.processors.figure_context import MapContext, map_context
from opmon.processors.maps import MASK_RULE, MapResult
from opmon.streaming.archive.layout import POTENTIOSTAT
from opmon.streaming.archive.run_writer import PotentiostatLog

GREY = tuple(c / 255 for c in MASKED_RGB)


def _result(ny: int = 6, nx: int = 8) -> MapResult:
    """A map whose d spans only 4e-5 Å (so a %.4f label or an offset would repeat or hide it),
    with two masked pixels."""
    rng = np.random.default_rng(1)
    d = 2.03680 + 4e-5 * rng.random((ny, nx))
    mask = np.ones((ny, nx), dtype=np.uint8)
    mask[0, 0] = mask[2, 3] = 0
    nan = np.where(mask.astype(bool), 0.0, np.nan)
    return MapResult(d_spacing=d + nan, tilt_altitude=0.01 * rng.random((ny, nx)) + nan,
                     tilt_azimuth=360 * rng.random((ny, nx)) + nan, intensity=1e4 * (1 + rng.random((ny, nx))),
                     peak_width=np.full((ny, nx), 0.01), q=np.zeros((ny, nx, 3)), mask=mask, mean_q=np.zeros(3),
                     frames=np.full((ny, nx), 10, dtype=np.int64))


def _labels(axis) -> list[str]:
    axis.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_masked_pixels_are_grey_and_d_labels_distinct_without_offset():
    fig = build_figure(_result(), MapContext())
    d_ax, tilt_ax, int_ax, hist_ax = fig.axes[0], fig.axes[1], fig.axes[2], fig.axes[3]
    for ax in (d_ax, int_ax):
        image = ax.get_images()[0]
        assert np.allclose(image.cmap.get_bad()[:3], GREY)
        rgba = image.to_rgba(image.get_array())
        assert np.allclose(rgba[0, 0, :3], GREY) and np.allclose(rgba[2, 3, :3], GREY)
    assert np.allclose(tilt_ax.get_images()[0].get_array()[0, 0], GREY)
    colorbar_ax = next(a for a in fig.axes if a not in (d_ax, tilt_ax, int_ax, hist_ax) and a.get_images() == []
                       and a.get_label() == "<colorbar>")
    for axis in (colorbar_ax.yaxis, hist_ax.xaxis):
        labels = _labels(axis)
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
        assert axis.get_offset_text().get_text() == ""
    assert any(MASK_RULE in t.get_text() for t in fig.texts)


def test_positions_in_um_with_a_scale_bar_and_no_made_up_axes():
    x, y = 1.5 + 0.1 * np.arange(8), -0.3 + 0.1 * np.arange(6)
    fig = build_figure(_result(), MapContext(x_um=x, y_um=y))
    d_ax = fig.axes[0]
    assert d_ax.get_xlabel() == "x (µm)"
    np.testing.assert_allclose(d_ax.get_images()[0].get_extent(), (1.45, 2.25, 0.25, -0.35))
    bars = [a for a in d_ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1 and bars[0].txt_label.get_text() == "0.1 µm"
    plain = build_figure(_result(), MapContext())
    assert plain.axes[0].get_xlabel() == "x (map pixel)" and not plain.axes[0].artists


def test_title_reads_voltage_time_and_trigger_from_an_archived_map(tmp_path, make_raw):
    """An archive run directory: raw map file (trigger, frame times), its maps file, the
    potentiostat log; the figure of the maps file says 4.7010 V, the first frame's time, the trigger."""
    t0 = 1_790_000_000.0
    raw = make_raw(tmp_path / "map_0002.h5")
    with h5py.File(raw, "a") as f:
        f["entry"].attrs["trigger"] = '{"reason": "voltage threshold 4.7000 V reached at 4.7010 V"}'
        f["entry/scan/timestamp"] = t0 + 100.0 + np.arange(f["entry/scan/map_index"].shape[0])
    log = PotentiostatLog(tmp_path / POTENTIOSTAT, t0)
    for k, v in enumerate((4.60, 4.65, 4.701, 4.75)):         # readings at t0 + 0, 60, 120 (after), 180
        log.add({"t": t0 + 60.0 * k if k != 2 else t0 + 99.0, "voltage_v": v})
    log.close()
    assert main(["process", str(raw), "-o", str(tmp_path / "map_0002_maps.h5"), "-q"]) == 0
    with h5py.File(tmp_path / "map_0002_maps.h5", "r") as f:
        context = map_context(f["entry"], "map 2")
    assert context.voltage_v == pytest.approx(4.701)
    assert context.started == pytest.approx(t0 + 100.0)
    title = context.title()
    assert "4.7010 V" in title and "voltage threshold 4.7000 V reached" in title
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + 100.0)) in title
    assert main(["plot", str(tmp_path / "map_0002_maps.h5"), "-o", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_series_of_an_archived_run_puts_integrated_intensity_against_charge(tmp_path, make_raw):
    """Three maps whose reflection fades (peak counts 400, 200, 50) taken at 100 s, 200 s, 300 s;
    the log's charge grows 1e-4 mA h per second: the curve has one point per map at the right
    charge, Σ intensity falling, and `opmon plot RUN --series` draws it."""
    from opmon.processors.series import run_series
    t0 = 1_790_000_000.0
    log = PotentiostatLog(tmp_path / POTENTIOSTAT, t0)
    for k in range(0, 400, 10):
        log.add({"t": t0 + k, "voltage_v": 4.5 + 1e-3 * k, "charge_mah": 1e-4 * k})
    log.close()
    for m, counts in enumerate((400.0, 200.0, 50.0)):
        raw = make_raw(tmp_path / f"map_{m:04d}.h5", seed=m, intensity=counts)
        with h5py.File(raw, "a") as f:
            f["entry/scan/timestamp"] = t0 + 100.0 * (m + 1) + np.arange(f["entry/scan/map_index"].shape[0])
        assert main(["process", str(raw), "-o", str(tmp_path / f"map_{m:04d}_maps.h5"), "-q"]) == 0
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f.attrs["run_uid"] = "r1"
    points = run_series(tmp_path)
    assert [p.number for p in points] == [0, 1, 2]
    np.testing.assert_allclose([p.charge_mah for p in points], [0.01, 0.02, 0.03], atol=1e-12)
    np.testing.assert_allclose([p.voltage_v for p in points], [4.6, 4.7, 4.8], atol=1e-12)
    for m, p in enumerate(points):
        with h5py.File(tmp_path / f"map_{m:04d}_maps.h5", "r") as f:
            assert p.integrated_intensity == pytest.approx(np.nansum(f["entry/maps/intensity"][()]))
    assert points[0].integrated_intensity > 1.8 * points[1].integrated_intensity > 3 * points[2].integrated_intensity
    assert main(["plot", str(tmp_path / "run.h5"), "--series"]) == 0
    assert (tmp_path / "series.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "map_0000.h5"), "--series", "-o", str(tmp_path / "x.txt")]) != 0
