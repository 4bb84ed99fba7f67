"""The dose panel shows the run's dose map that the live processor's map messages carry."""
from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document

from opmon.dashboard.app import DashboardOptions, Session
from opmon.dashboard.model import DashboardModel
from opmon.dashboard.subscriber import DisplayMessageError, map_update
from opmon.processors.dose import DoseGrid
from opmon.processors.maps import MapResult
from opmon.streaming import protocol as P
from opmon.streaming.map_messages import encode_map


def _message(dose: DoseGrid | None, number: int = 0) -> tuple[dict, list]:
    """A real map message (the live processor's codec) of a 3 x 4 map, with the run's dose."""
    rng = np.random.default_rng(number)
    shape = (3, 4)
    maps = MapResult.from_arrays({"d_spacing": 2.04 + rng.normal(0, 1e-4, shape), "tilt_altitude": np.zeros(shape),
                                  "tilt_azimuth": np.zeros(shape), "intensity": rng.uniform(1e3, 1e4, shape),
                                  "peak_width": np.full(shape, 1e-3), "mask": np.ones(shape, np.uint8),
                                  "q": np.zeros((*shape, 3)), "mean_q": np.zeros(3)})
    _, head, *buffers = encode_map(maps, run="r1", map_number=number, final=True, frames=12, n_frames=12,
                                   frames_lost=0, dose=dose)
    return P.unpack(head), buffers


def test_dose_panel_shows_the_dose_on_its_piezo_grid():
    photons = np.array([[1e7, 2e7, 0.0], [3e7, 4e7, 5e7]])
    header, buffers = _message(DoseGrid(photons, origin_um=(0.5, 1.0), step_um=0.1))
    model = DashboardModel()
    model.on_map(map_update(header, buffers))
    session = Session(Document(), model, None, None, DashboardOptions())
    session.update()
    source = session.dose.panel.source
    np.testing.assert_array_equal(source.data["image"][0], photons)
    assert source.data["x"][0] == pytest.approx(0.95) and source.data["y"][0] == pytest.approx(0.45)
    assert source.data["dw"][0] == pytest.approx(0.3) and source.data["dh"][0] == pytest.approx(0.2)
    assert session.dose.panel.mapper.high == pytest.approx(5e7)
    assert "max 5e+07" in session.dose.panel.fig.title.text
    assert session.doc.select_one({"name": "dose_fig"}) is session.dose.panel.fig   # in the page


def test_a_map_without_dose_leaves_the_panel_empty_and_a_dose_without_grid_is_refused():
    model = DashboardModel()
    model.on_map(map_update(*_message(None)))
    session = Session(Document(), model, None, None, DashboardOptions())
    session.update()
    assert np.isnan(session.dose.panel.source.data["image"][0]).all()
    header, buffers = _message(DoseGrid(np.ones((2, 2)), (0.0, 0.0), 0.1))
    del header["dose"]["step_um"]
    with pytest.raises(DisplayMessageError, match="dose grid"):
        map_update(header, buffers)


def test_the_dose_limit_the_acquisition_reports_is_drawn_with_the_positions_over_it():
    photons = np.array([[1e7, 2e7, 0.0], [3e7, 4e7, 5e7]])
    header, buffers = _message(DoseGrid(photons, origin_um=(0.5, 1.0), step_um=0.1))
    model = DashboardModel()
    model.on_status({"source": "acquisition", "state": "running", "dose_limit": 3.5e7})
    model.on_map(map_update(header, buffers))
    session = Session(Document(), model, None, None, DashboardOptions())
    session.update()
    over = session.dose.over.data
    assert sorted(zip(np.round(over["x"], 6), np.round(over["y"], 6))) == [(1.1, 0.6), (1.2, 0.6)]   # 4e7, 5e7
    assert "of limit 3.5e+07 (2 over" in session.dose.panel.fig.title.text
    assert session.dose.panel.mapper.high == pytest.approx(5e7)
