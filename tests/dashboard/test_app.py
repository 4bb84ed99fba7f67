"""A session's update loop sends patches and streams, not whole sources, as a map fills in."""
from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ColumnsPatchedEvent, ColumnsStreamedEvent

from opmon.dashboard.app import DashboardOptions, Session, run_info
from opmon.dashboard.model import DashboardModel, MapUpdate
from opmon.dashboard.views import status_html

FIELDS = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width")


def _partial(full, rows, n, final=False):
    a = {k: v.copy() for k, v in full.items()}
    for v in a.values():
        v[rows:] = np.nan
    return MapUpdate(n, a, progress=rows / len(full["d_spacing"]), final=final, seq=rows)


def _full(ny=8, nx=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"d_spacing": 2.04 + rng.normal(0, 1e-4, (ny, nx)), "tilt_altitude": rng.uniform(0, 0.2, (ny, nx)),
            "tilt_azimuth": rng.uniform(0, 360, (ny, nx)), "intensity": rng.uniform(1e3, 1e4, (ny, nx)),
            "peak_width": rng.uniform(1e-3, 2e-3, (ny, nx))}


def _tick(session):
    """One display period, then the acknowledgement the page sends after painting."""
    session.update()
    session._acked(session.seen_div.text)


def _record(doc):
    events = []
    doc.on_change(lambda event: events.append(event))
    return events


def test_filling_map_is_sent_as_row_patches():
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    full = _full()
    model.on_map(_partial(full, 1, 0))
    _tick(s)                                     # first map of this shape: sources are set once
    events = _record(doc)
    d_src = s.d.source
    for rows in range(2, 9):
        model.on_map(_partial(full, rows, 0, final=rows == 8))
        _tick(s)
    d_events = [e for e in events if getattr(e, "model", None) is d_src]
    assert d_events and all(isinstance(e, ColumnsPatchedEvent) for e in d_events)
    assert len(d_events) == 7                    # one patch per tick, each only the new row
    for e in d_events:
        ((index, values),) = e.patches["image"]
        assert index[1].stop - index[1].start == 1 and len(values) == 10
    np.testing.assert_array_equal(d_src.data["image"][0], full["d_spacing"])
    assert not any(isinstance(e, ColumnDataChangedEvent) and e.model in (s.d.source, s.tilt.source,
                                                                         s.intensity.source, s.width.source)
                   for e in events)


def test_nothing_is_sent_when_nothing_changed_and_readings_stream():
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    model.on_map(_partial(_full(), 8, 0, final=True))
    _tick(s)
    events = _record(doc)
    _tick(s)                                     # same map version: no map traffic at all
    assert not [e for e in events if isinstance(e, (ColumnsPatchedEvent, ColumnDataChangedEvent))]
    for i in range(5):
        model.on_reading(1000.0 + i, 4.7, 1e-5, 0.01 * i)
    s.update()
    streamed = [e for e in events if isinstance(e, ColumnsStreamedEvent)]
    assert streamed and streamed[0].model is s.echem.readings
    assert len(s.echem.readings.data["voltage"]) == 5


def test_gallery_steps_back_and_returns_live():
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    maps = [_full(seed=k) for k in range(3)]
    for k, full in enumerate(maps):
        model.on_map(_partial(full, 8, k, final=True))
    _tick(s)
    assert s.gallery.end == 2 and not s.gallery.disabled
    s._pick(0)
    s._acked(s.seen_div.text)
    np.testing.assert_array_equal(s.d.source.data["image"][0], maps[0]["d_spacing"])
    model.on_map(_partial(_full(seed=9), 3, 3))
    _tick(s)                                     # not following live: stays on map 0
    np.testing.assert_array_equal(s.d.source.data["image"][0], maps[0]["d_spacing"])
    s._go_live()
    _tick(s)
    assert s._shown[1] == 3


def test_a_browser_that_has_not_painted_gets_no_new_map():
    """Flow control: one map update in flight per page, so a slow browser never builds a queue."""
    model = DashboardModel()
    s = Session(Document(), model, None, None, DashboardOptions())
    full = _full()
    model.on_map(_partial(full, 2, 0))
    s.update()
    first = s.seen_div.text
    model.on_map(_partial(full, 5, 0))
    s.update()                                   # no acknowledgement yet: nothing new is sent
    assert s.seen_div.text == first and np.isnan(s.d.source.data["image"][0][4]).all()
    s._acked("something else")                   # a stale acknowledgement does not count
    s.update()
    assert s.seen_div.text == first
    s._acked(first)
    s.update()                                   # acknowledged: the latest map goes out
    assert s.seen_div.text != first and np.isfinite(s.d.source.data["image"][0][4]).all()


def test_read_only_session_refuses_without_sending():
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    assert s.steering.pause.disabled and not s.authorized
    s.steering.send("pause")
    assert not s.steering.last_reply["ok"] and "read-only" in s.steering.last_reply["error"]


def test_run_line_names_the_plan_and_how_the_run_ended():
    assert run_info([]) == ""
    assert run_info([("start", {"plan_name": "operando_series", "uid": "1234567890"}), ("event", {})]) == \
        "plan operando_series (run 12345678)"
    assert run_info([("start", {"plan_name": "p", "uid": "u"}),
                     ("stop", {"exit_status": "abort", "reason": "beam lost"})]) == "last run abort: beam lost"
    model = DashboardModel()
    s = Session(Document(), model, None, None, DashboardOptions())
    model.on_document("start", {"plan_name": "operando_series", "uid": "abcdef123"})
    s.update()
    assert "plan operando_series (run abcdef12)" in s.status_div.text


def test_status_bar_shows_state_staleness_losses_and_a_short_archive_name():
    st = {"state": "paused", "frames_per_s": 812.4, "frames_lost": 3, "map": 7, "map_progress": 0.5,
          "archive": "/very/long/archive/dir/1234-uid/run.h5"}
    html = status_html(st, received=100.0, showing="showing live map 7", now=101.0)
    assert 'data-state="paused"' in html and ">PAUSED<" in html and "812 frames/s" in html.replace("</b>", "")
    assert "#c62828" in html                                # lost frames in red
    assert "<code>1234-uid/run.h5</code>" in html and 'title="/very/long/archive/dir/1234-uid/run.h5"' in html
    assert ">STALE<" in status_html(st, received=100.0, showing="", now=110.0)   # no news for 10 s
    assert ">UNKNOWN<" not in status_html({}, 0.0, "")       # never heard anything: stale, not unknown


def test_histogram_overlays_earlier_maps_on_shared_bins_as_fractions():
    model = DashboardModel()
    s = Session(Document(), model, None, None, DashboardOptions())
    one_phase = _full()
    one_phase["d_spacing"][:] = 2.0409
    two_phase = _full()
    two_phase["d_spacing"][:4] = 2.0409
    two_phase["d_spacing"][4:] = 2.0332                 # phase coexistence: two peaks
    model.on_map(_partial(one_phase, 8, 0, final=True))
    model.on_map(_partial(two_phase, 4, 1))             # half-filled current map
    _tick(s)
    tops = np.asarray(s.hist.current.data["top"])
    assert tops.sum() == pytest.approx(1.0) and np.count_nonzero(tops) == 1   # only the filled rows so far
    (earlier,) = s.hist.earlier.data["ys"]
    assert earlier.sum() == pytest.approx(1.0) and s.hist.earlier.data["label"] == ["map 0"]
    model.on_map(_partial(two_phase, 8, 1, final=True))
    _tick(s)
    tops = np.asarray(s.hist.current.data["top"])
    assert np.count_nonzero(tops) == 2 and tops.max() == pytest.approx(0.5)     # two peaks, half each


def test_each_final_map_adds_its_integrated_intensity_at_its_capacity():
    """Three final maps taken at 0.1, 0.2, 0.3 mAh whose reflection fades (x1, x0.5, x0.1):
    the Σ I per map panel gets one point per map, at its capacity, with the map's Σ I."""
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    expected = []
    for k, scale in enumerate((1.0, 0.5, 0.1)):
        model.on_reading(1000.0 + 60 * k, 4.6 + 0.05 * k, 1e-5, 0.1 * (k + 1))
        full = _full(seed=k)
        full["intensity"] = full["intensity"] * scale
        full["intensity"][0, 0] = np.nan                 # a masked pixel counts as nothing
        expected.append(np.nansum(full["intensity"]))
        model.on_map(_partial(full, 8, k, final=True))
        _tick(s)
    marks = s.echem.markers.data
    np.testing.assert_allclose(marks["capacity"], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(marks["intensity"], expected)
    assert marks["label"] == ["0", "1", "2"]
    assert s.echem.iq in doc.roots[0].references()


def test_the_plans_decisions_show_newest_first_with_their_reasons():
    """Documents as the acquisition publishes them: a `steering` stream's events become the
    decisions panel (newest first); other streams' events do not; a new run starts afresh."""
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    model.on_document("start", {"uid": "r1", "time": 1.0, "plan_name": "operando_series"})
    model.on_document("descriptor", {"uid": "d-steer", "name": "steering", "run_start": "r1"})
    model.on_document("descriptor", {"uid": "d-prim", "name": "primary", "run_start": "r1"})
    for k, (decision, reason, detail) in enumerate([("map region", "steering request", '{"region": [0, 2, 0, 2]}'),
                                                    ("map", "voltage threshold 4.5000 V reached", '{"map": 0}')]):
        model.on_document("event", {"descriptor": "d-steer", "time": 10.0 + k, "data": {
            "steering-decision": decision, "steering-reason": reason, "steering-detail": detail}})
    model.on_document("event", {"descriptor": "d-prim", "time": 12.0, "data": {"detector-map_index": 3}})
    s.update()
    text = s.decisions_div.text
    assert text.index('data-decision="map"') < text.index('data-decision="map region"')
    assert "voltage threshold 4.5000 V reached" in text and "region [0, 2, 0, 2]" in text and "(2 this run)" in text
    model.on_document("start", {"uid": "r2", "time": 20.0})
    model.on_document("event", {"descriptor": "d-steer", "time": 21.0, "data": {"steering-decision": "end"}})
    s.update()
    assert "none yet this run" in s.decisions_div.text     # r1's decisions and descriptors are not r2's


def test_maps_are_placed_in_um_on_the_run_grid_its_start_document_announces():
    """The plan's start document gives the piezo grid (origin, step): the maps are drawn in µm
    there, axes labelled; a map of another shape stays in map pixels."""
    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    model.on_document("start", {"uid": "r1", "time": 1.0, "map_origin_um": [1.0, 2.0], "map_step_um": 0.1,
                                "geometry": {"map_shape": [8, 10]}})
    model.on_map(_partial(_full(), 8, 0, final=True))
    _tick(s)
    data = s.d.source.data
    assert data["x"] == [pytest.approx(0.95)] and data["y"] == [pytest.approx(1.95)]
    assert data["dw"] == [pytest.approx(1.0)] and data["dh"] == [pytest.approx(0.8)]
    assert s.d.fig.xaxis[0].axis_label == "x (µm)"
    model.on_map(_partial(_full(ny=4, nx=4), 4, 1, final=True))
    _tick(s)
    assert s.d.source.data["dw"] == [4.0] and s.d.fig.xaxis[0].axis_label == "x (map pixel)"


def test_the_d_map_title_gives_the_maps_voltage_time_and_trigger_reason_and_the_mask_rule_is_stated():
    """As the figures of `opmon plot` do: the map's voltage at its start (the plan's "map"
    decision), the UTC time and the trigger reason over the d map; the mask rule under it."""
    from opmon.processors.maps import MASK_RULE

    model = DashboardModel()
    doc = Document()
    s = Session(doc, model, None, None, DashboardOptions())
    model.on_document("start", {"uid": "r1", "time": 1.0})
    model.on_document("descriptor", {"uid": "d-steer", "name": "steering", "run_start": "r1"})
    for n, (reason, volts) in enumerate([("voltage threshold 4.5000 V reached", 4.5003),
                                         ("map requested: on demand", 4.6126)]):
        model.on_document("event", {"descriptor": "d-steer", "time": 10.0 + n, "data": {
            "steering-decision": "map", "steering-reason": reason,
            "steering-detail": f'{{"map": {n}, "voltage_v": {volts}}}'}})
    model.on_reading(3600.0 * 7 + 62.0, 4.40, 1e-5, 0.1)
    model.on_map(_partial(_full(), 8, 1, final=True))
    _tick(s)
    title = s.d.fig.title.text
    assert title == "d-spacing (Å) · map 1 · 4.613 V · 07:01:02 UTC · map requested: on demand"
    assert [t.text for t in s.d.fig.below if getattr(t, "name", None) == "mask_rule"] == [MASK_RULE]
    model.on_map(_partial(_full(), 8, 2, final=True))     # no decision for map 2: voltage of its first reading
    _tick(s)
    assert s.d.fig.title.text == "d-spacing (Å) · map 2 · 4.400 V · 07:01:02 UTC"
