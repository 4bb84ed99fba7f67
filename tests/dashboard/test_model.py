"""The dashboard's in-process model: latest-wins maps, bounded history, reading cursors."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from opmon.dashboard.model import DashboardModel, MapMessageError, MapUpdate, merge_status


def _arrays(ny=3, nx=4, value=2.04):
    a = {k: np.full((ny, nx), value) for k in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width")}
    return a


def test_latest_map_wins_and_finals_enter_history():
    m = DashboardModel(history=2)
    m.on_reading(100.0, 4.7, 1e-5, 0.5)
    for n in range(3):
        m.on_map(MapUpdate(n, _arrays(), progress=0.5))
        m.on_map(MapUpdate(n, _arrays(value=2.03), final=True, progress=1.0))
    version, latest = m.latest_map()
    assert latest.map_number == 2 and latest.final and version == 6
    _, hist = m.history()
    assert [r.update.map_number for r in hist] == [1, 2]          # bounded: oldest dropped
    assert hist[-1].voltage == 4.7 and hist[-1].capacity == 0.5 and hist[-1].t == 100.0


def test_map_marker_sits_where_the_map_started_not_where_it_ended():
    m = DashboardModel()
    m.on_reading(100.0, 4.60, 1e-5, 0.40)
    m.on_map(MapUpdate(0, _arrays(), progress=0.1))       # first frames: the map was triggered here
    m.on_reading(200.0, 4.70, 1e-5, 0.55)
    m.on_map(MapUpdate(0, _arrays(value=2.03), final=True, progress=1.0))
    _, hist = m.history()
    assert (hist[-1].t, hist[-1].voltage, hist[-1].capacity) == (100.0, 4.60, 0.40)


def test_repeated_final_replaces_its_map():
    m = DashboardModel()
    m.on_map(MapUpdate(0, _arrays(), final=True))
    m.on_map(MapUpdate(0, _arrays(value=1.0), final=True))
    _, hist = m.history()
    assert len(hist) == 1 and hist[0].update.arrays["d_spacing"][0, 0] == 1.0


def test_bad_maps_name_the_field():
    a = _arrays()
    del a["peak_width"]
    with pytest.raises(MapMessageError, match="peak_width"):
        MapUpdate(0, a)
    a = _arrays()
    a["intensity"] = np.zeros((2, 2))
    with pytest.raises(MapMessageError, match="intensity"):
        MapUpdate(0, a)


def test_reading_cursor_survives_trimming_and_threads():
    m = DashboardModel(max_readings=100)
    seen = []
    cursor = 0

    def feed():
        for i in range(1000):
            m.on_reading(float(i), 4.0, 0.0, 0.0)

    t = threading.Thread(target=feed)
    t.start()
    while t.is_alive() or cursor < 1000:
        new, cursor = m.readings_since(cursor)
        seen.extend(new["t"].tolist())
    t.join()
    # every reading is delivered once, in order, unless it was trimmed before being read
    assert seen == sorted(set(seen)) and seen[-1] == 999.0


def test_status_merges_services():
    s = merge_status({"acquisition": {"state": "paused", "frames_lost": 0},
                      "live": {"state": "running", "frames_per_s": 900.0, "frames_lost": 3, "map": 4,
                               "map_progress": 0.5},
                      "archiver": {"archive": "/a/run.h5"}})
    assert s["state"] == "paused"             # only the acquisition knows it paused
    assert s["frames_per_s"] == 900.0 and s["frames_lost"] == 3 and s["archive"] == "/a/run.h5"
    assert merge_status({})["state"] == "unknown"
