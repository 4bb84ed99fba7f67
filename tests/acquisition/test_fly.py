"""Fly scans: the trajectory triggers the detector, a line is recorded whole or not at all."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
from bluesky.utils import RunEngineInterrupted

from opmon.acquisition.mapping import MapGrid, sxdm_map
from opmon.errors import ConfigError
from tests.acquisition.conftest import MemorySink, validate_all

GRID = (4, 5)           # 4 lines of 5 points per angle


def _fly(bl, etas, point_time_s=0.0, **kw):
    return sxdm_map(bl.detector, bl.stage, bl.diffractometer, MapGrid(GRID, 0.1), etas, fly=True,
                    point_time_s=point_time_s, **kw)


def _datum_ranges(docs) -> list[tuple[int, int]]:
    return [(d["indices"]["start"], d["indices"]["stop"]) for n, d in docs if n == "stream_datum"]


def _check_whole_lines(sink: MemorySink, docs) -> None:
    """Every frame in the sink belongs to a whole line, and is referenced by exactly one range."""
    ranges = _datum_ranges(docs)
    assert all(b - a == GRID[1] for a, b in ranges)                       # a StreamDatum per line
    assert [a for a, _ in ranges] == list(range(0, len(sink.headers), GRID[1]))   # contiguous, nothing orphaned
    assert len(sink.headers) == (ranges[-1][1] if ranges else 0)
    assert [h["seq"] for h in sink.headers] == list(range(len(sink.headers)))     # no seq skipped
    for a, _ in ranges:
        line = sink.headers[a:a + GRID[1]]
        assert len({h["eta"] for h in line}) == 1 and len({h["y"] for h in line}) == 1
        assert [h["map_index"] for h in line] == list(range(line[0]["map_index"], line[0]["map_index"] + GRID[1]))


def test_fly_map_takes_every_point_once_with_one_stream_datum_per_line(RE, docs, make_beamline):
    sink = MemorySink()
    bl = make_beamline(setup={"map_shape": GRID}, sink=sink)
    etas = bl.etas()[:3]
    RE(_fly(bl, etas, potentiostat=bl.potentiostat))
    n = GRID[0] * GRID[1]
    assert len(sink.headers) == 3 * n
    assert Counter((h["eta"], h["map_index"]) for h in sink.headers) == Counter(
        {(e, i): 1 for e in etas for i in range(n)})
    assert [h["x"] for h in sink.headers[:GRID[1]]] == pytest.approx([0.1 * c for c in range(GRID[1])])
    assert len(_datum_ranges(docs)) == 3 * GRID[0]
    _check_whole_lines(sink, docs)
    assert [n for n, _ in docs].count("event") == sum(1 for n, d in docs if n == "event")  # potentiostat only
    assert docs[-1][1]["exit_status"] == "success"
    validate_all(docs)


def _pause_in_second_line(RE, bl, defer: bool) -> None:
    """Ask for a pause when the second line's second pulse fires: that line is then in flight."""
    fire, fired = bl.trigger_cable.fire, []

    def firing(pulses):
        fire(pulses)
        fired.extend(pulses)
        if len(fired) - len(pulses) < GRID[1] + 2 <= len(fired):
            threading.Thread(target=RE.request_pause, kwargs={"defer": defer}).start()

    bl.trigger_cable.fire = firing


@pytest.mark.parametrize("defer", [True, False], ids=["deferred-finishes-the-line", "immediate-drops-the-line"])
def test_pause_mid_line_then_resume_records_each_line_whole_and_once(RE, docs, make_beamline, defer):
    sink = MemorySink()
    bl = make_beamline(setup={"map_shape": GRID}, sink=sink)
    etas = bl.etas()[:2]
    _pause_in_second_line(RE, bl, defer)
    with pytest.raises(RunEngineInterrupted):
        RE(_fly(bl, etas, point_time_s=0.04))        # 0.2 s a line: the pause comes while one flies
    assert RE.state == "paused"
    _check_whole_lines(sink, docs)
    at_pause = len(sink.headers)
    # deferred: the line in flight was finished and saved; immediate: nothing of it is saved
    assert at_pause == (2 if defer else 1) * GRID[1]
    RE.resume()
    # immediate: the line flew to its end during the pause, and was dropped when flown again
    assert bl.detector.recorder.lines_dropped == (0 if defer else 1)
    n = GRID[0] * GRID[1]
    assert Counter((h["eta"], h["map_index"]) for h in sink.headers) == Counter(
        {(e, i): 1 for e in etas for i in range(n)})
    _check_whole_lines(sink, docs)
    assert docs[-1][1]["exit_status"] == "success"
    validate_all(docs)


def test_abort_mid_line_leaves_only_whole_saved_lines(RE, docs, make_beamline):
    sink = MemorySink()
    bl = make_beamline(setup={"map_shape": GRID}, sink=sink)
    _pause_in_second_line(RE, bl, defer=False)     # how steering aborts: immediate pause, then abort
    with pytest.raises(RunEngineInterrupted):
        RE(_fly(bl, bl.etas()[:2], point_time_s=0.04))
    RE.abort("test")
    assert docs[-1][0] == "stop" and docs[-1][1]["exit_status"] == "abort"
    # the line in flight at the pause is either saved whole (the RunEngine collects what was
    # kicked off before it closes the run) or dropped whole: never a part of it
    _check_whole_lines(sink, docs)
    assert len(sink.headers) + bl.detector.recorder.lines_dropped * GRID[1] in (GRID[1], 2 * GRID[1])
    validate_all(docs)


def test_fly_needs_eta_outer_order(RE, make_beamline):
    bl = make_beamline(setup={"map_shape": GRID}, sink=MemorySink())
    with pytest.raises(ConfigError, match="eta-outer"):
        RE(_fly(bl, bl.etas()[:2], order="point-outer"))


def test_operando_series_flies_its_maps(RE, docs, make_beamline):
    """The operando plan with `fly`: its map flown line by line, the cell logged."""
    from opmon.acquisition.cell_state import CellMode
    from opmon.acquisition.mapping import FlyScan
    from opmon.acquisition.plans import operando_series
    from opmon.acquisition.potentiostat import CellCommand
    from opmon.acquisition.triggers import PeriodicTrigger

    sink = MemorySink()
    bl = make_beamline(setup={"map_shape": GRID}, sink=sink)
    etas = bl.etas()[:2]
    result = RE(operando_series(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector, grid=MapGrid(GRID, 0.1),
                                etas=etas, triggers=PeriodicTrigger(1e6), max_maps=1, order="eta-outer",
                                charge=CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15), cutoff=4.9),
                                fly=FlyScan(0.0))).plan_result
    assert [m.frames for m in result.maps] == [2 * GRID[0] * GRID[1]]
    for number in (0,):
        heads = [h for h in sink.headers if h["map_number"] == number]
        assert Counter((h["eta"], h["map_index"]) for h in heads) == Counter(
            {(e, i): 1 for e in etas for i in range(GRID[0] * GRID[1])})
    _check_whole_lines(sink, docs)
    assert len([d for n, d in docs if n == "event"]) >= 2     # the potentiostat stream (and the maps stream)
    validate_all(docs)
