"""Operando plans on a real RunEngine with the time-accelerated simulated beamline."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted

from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.plans import operando_series, potentiostatic_steps
from opmon.acquisition.potentiostat import CellCommand
from opmon.acquisition.steering_requests import SteeringRequests
from opmon.acquisition.triggers import PeriodicTrigger, PlateauTrigger, RestTrigger, VoltageThresholds
from opmon.errors import LimitError
from opmon.acquisition.cell_state import CellMode
from opmon.simulators.ocv import LMNO
from tests.acquisition.conftest import MemorySink, stream, validate_all
from tests.waiting import until


def _series(bl, **kw):
    kw.setdefault("grid", MapGrid((4, 4), bl.config.setup.map_step_um))
    kw.setdefault("etas", bl.etas()[1:3])
    return operando_series(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector, **kw)


def _c15(bl) -> CellCommand:
    return CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15), cutoff=4.9)


def test_maps_start_within_5_mV_of_each_threshold(RE, docs, make_beamline) -> None:
    bl = make_beamline(acceleration=600.0)
    thresholds = [4.0, 4.2, 4.3, 4.4, 4.5]  # 4.0 V is already passed when the run starts
    # small maps (4 frames), so no threshold is crossed while a map is still running
    result = RE(_series(bl, triggers=VoltageThresholds(thresholds), charge=_c15(bl), grid=MapGrid((2, 2), 0.1),
                        etas=bl.etas()[:1], max_maps=len(thresholds))).plan_result
    validate_all(docs)
    starts = [e["data"]["potentiostat-voltage"] for e in stream(docs, "maps")]
    assert len(starts) == len(result.maps) == 5
    assert starts[0] == pytest.approx(4.05, abs=0.01) and "4.0000" in result.maps[0].reason
    for threshold, v in zip(thresholds[1:], starts[1:]):
        assert abs(v - threshold) < 5e-3, (threshold, v)
    assert [e["data"]["detector-map_number"] for e in stream(docs, "maps")] == [0, 1, 2, 3, 4]
    # why each map was taken is in the documents, as the plan decided it
    assert [e["data"]["detector-map_trigger"] for e in stream(docs, "maps")] == [m.reason for m in result.maps]
    assert all("voltage threshold" in m.reason for m in result.maps)
    assert bl.cell.mode is CellMode.OPEN_CIRCUIT  # safe at the end


def _plateau_starts(limit: float, rate_x_per_s: float) -> list[float]:
    """x where |dV/dt| of the OCV at this rate first drops below the limit, for each plateau."""
    xs = np.linspace(0.99, 0.02, 97001)
    flat = np.array([abs(LMNO.slope(x)) * rate_x_per_s < limit for x in xs])
    begins = xs[1:][flat[1:] & ~flat[:-1]]
    return [float(b) for b in begins if b > 0.1]


def test_full_c15_charge_plateau_trigger_and_voltage_curve(RE, docs, make_beamline) -> None:
    bl = make_beamline(acceleration=6000.0, tick_s=0.005)
    limit = 5e-6
    result = RE(_series(bl, triggers=PlateauTrigger(max_slope_v_per_s=limit, hold_s=300.0), charge=_c15(bl),
                        grid=MapGrid((2, 2), 0.1), etas=bl.etas()[:2], cell_period_s=0.05)).plan_result
    validate_all(docs)
    assert result.end_reason.startswith("cut-off"), result.end_reason
    capacity = bl.cell.capacity_c
    maps = stream(docs, "maps")
    x_at_map = [1.0 - e["data"]["potentiostat-charge"] / capacity for e in maps]
    starts = _plateau_starts(limit, bl.c_rate(1 / 15) / capacity)
    assert len(starts) == 2 and len(x_at_map) == 2, (starts, x_at_map)
    for x_plateau, x_map in zip(starts, x_at_map):
        assert 0.0 <= x_plateau - x_map <= 0.02, (x_plateau, x_map)  # within the first 2 % of capacity
    log = stream(docs, "potentiostat")
    v = np.array([e["data"]["potentiostat-voltage"] for e in log])
    assert len(v) > 100 and v.max() >= 4.85, (len(v), v.max())
    hist, edges = np.histogram(v, bins=np.arange(4.0, 4.95, 0.01))
    top = sorted(np.round(edges[np.argsort(hist)[-2:]], 2))
    assert top == [4.70, 4.75], (top, hist)
    t = np.array([e["data"]["potentiostat-elapsed"] for e in log])
    assert 14.0 < t[-1] / 3600 < 15.5, t[-1]


def test_potentiostatic_steps_reach_cutoff_then_high_impedance_before_mapping(RE, docs, make_beamline) -> None:
    memory = MemorySink()
    bl = make_beamline(acceleration=900.0, sink=memory)
    steps = [4.3, 4.5, 4.68]
    result = RE(potentiostatic_steps(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector, steps=steps,
                                     current_cutoff_a=2e-6, timeout_s=7200.0, grid=MapGrid((4, 4), 0.1),
                                     etas=bl.etas()[:2])).plan_result
    validate_all(docs)
    assert [s.voltage for s in result.steps] == steps
    assert all(s.reached_cutoff and abs(s.end.current) < 2e-6 for s in result.steps)
    for e in stream(docs, "maps"):
        assert e["data"]["potentiostat-mode"] == "high_impedance" and e["data"]["potentiostat-current"] == 0.0
    modes = [(m.value, round(sp, 3)) for _, m, sp, _ in bl.cell.commands]
    assert modes == [("potentiostatic", 4.3), ("high_impedance", 0.0), ("potentiostatic", 4.5),
                     ("high_impedance", 0.0), ("potentiostatic", 4.68), ("high_impedance", 0.0),
                     ("open_circuit", 0.0)]
    # every frame of a map was taken while the cell was in high impedance (cell time of each frame)
    assert len(stream(docs, "primary")) == 3 * 16 * 2
    times = {m: [t for t, mode, _, _ in bl.cell.commands if mode is m] for m in CellMode}
    hz, steps_at = times[CellMode.HIGH_IMPEDANCE], times[CellMode.POTENTIOSTATIC][1:] + [float("inf")]
    for h in memory.headers:
        k = h["map_number"]
        assert hz[k] <= h["cell_time"] <= steps_at[k], (k, h["cell_time"])  # same tick at most


def test_steps_beyond_limit_fail_before_the_run(RE, docs, make_beamline) -> None:
    bl = make_beamline()
    with pytest.raises(LimitError, match="setpoint=5.1 V"):
        RE(potentiostatic_steps(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector, steps=[4.3, 5.1],
                                current_cutoff_a=1e-6, timeout_s=10.0, grid=MapGrid((4, 4), 0.1), etas=[19.0]))
    with pytest.raises(LimitError, match="galvanostatic setpoint=0.01 A"):
        RE(_series(bl, triggers=PeriodicTrigger(60), charge=CellCommand(CellMode.GALVANOSTATIC, 0.01)))
    assert docs == [] and bl.cell.commands == []
    assert bl.stage.x.source  # nothing moved: the stage is still at its start
    assert (RE(_read_x(bl)).plan_result) == 0.0


def _read_x(bl):
    import bluesky.plan_stubs as bps
    return (yield from bps.rd(bl.stage.x))


def test_requests_add_maps_and_change_rule_and_region_mid_run(RE, docs, make_beamline) -> None:
    bl = make_beamline(acceleration=300.0)
    box = SteeringRequests(loop=RE.loop)   # set from RunEngine callbacks: inside its loop
    seen = {"maps": 0}
    asked: list[str] = []

    def steer(name, doc):
        if name == "event" and doc["data"].get("potentiostat-voltage") and seen["maps"] == 0 and "detector-map_number" not in doc["data"]:
            if not asked:
                asked.append("asked")
                box.set_region((0, 2, 0, 2))
                box.map_now("user asked")
        if name == "event" and "detector-map_number" in doc["data"] and "potentiostat-voltage" in doc["data"]:
            seen["maps"] += 1
            if seen["maps"] == 1:  # first map started: a rule already true, and the whole grid again
                box.set_rule(VoltageThresholds([3.5]))
                box.set_region(None)
            elif seen["maps"] == 2:
                box.finish()

    RE.subscribe(steer)
    result = RE(_series(bl, triggers=PeriodicTrigger(1e6, start_now=False), charge=_c15(bl),
                        requests=box)).plan_result
    validate_all(docs)
    assert [m.reason for m in result.maps][0] == "user asked"
    assert "threshold 3.5000" in result.maps[1].reason and len(result.maps) == 2
    assert result.end_reason == "finish requested"
    assert result.maps[0].region == (0, 2, 0, 2) and result.maps[0].frames == 4 * 2
    assert result.maps[1].region is None and result.maps[1].frames == 16 * 2
    first = [e["data"]["detector-map_index"] for e in stream(docs, "primary") if e["data"]["detector-map_number"] == 0]
    assert sorted(set(first)) == [0, 1, 4, 5]
    # every decision and its reason is in the run's own documents, in the order it was taken
    decisions = [(e["data"]["steering-decision"], e["data"]["steering-reason"], json.loads(e["data"]["steering-detail"]))
                 for e in stream(docs, "steering")]
    assert [d for d, _, _ in decisions] == ["map region", "map", "trigger rule", "map region", "map", "end"]
    assert decisions[0][2] == {"region": [0, 2, 0, 2]} and decisions[1][1] == "user asked"
    assert decisions[2][1] == "steering request" and decisions[2][2] == {"thresholds_v": [3.5], "direction": "charge"}
    assert decisions[3][2] == {"region": None} and "threshold 3.5000" in decisions[4][1]
    assert decisions[5][1] == "finish requested"


def _frames_in_files(docs) -> int:
    n = 0
    for name, doc in docs:
        if name == "stream_resource":
            with h5py.File(Path(urlparse(doc["uri"]).path), "r") as f:
                n += f["entry/instrument/detector/data"].shape[0]
    return n


def _check_references(docs) -> None:
    """Each event's StreamDatum points at a frame in the file with the event's map pixel and eta."""
    resources = {d["uid"]: d for n, d in docs if n == "stream_resource"}
    events = {e["seq_num"]: e for e in stream(docs, "primary")}
    datums = [d for n, d in docs if n == "stream_datum"]
    assert len(datums) == len(events)
    for d in datums:
        event = events[d["seq_nums"]["start"]]
        with h5py.File(Path(urlparse(resources[d["stream_resource"]]["uri"]).path), "r") as f:
            i = d["indices"]["start"]
            assert d["indices"]["stop"] == i + 1 and i < f["entry/instrument/detector/data"].shape[0]
            assert f["entry/scan/map_index"][i] == event["data"]["detector-map_index"]
            assert f["entry/sample/positioners/eta"][i] == event["data"]["diffractometer-eta"]


@pytest.mark.parametrize("safe_mode, defer", [("open_circuit", True), ("hold", True), ("open_circuit", False)])
def test_pause_resume_abort_during_a_map_keep_the_cell_safe_and_every_frame(RE, docs, make_beamline, safe_mode,
                                                                             defer) -> None:
    bl = make_beamline(acceleration=600.0, safe_mode=safe_mode)
    pause_at = {10, 30}
    count = {"frames": 0}

    def pauser(name, doc):
        if name == "event" and "detector-map_index" in doc["data"] and "stage-x" in doc["data"]:
            count["frames"] += 1
            if count["frames"] in pause_at:
                threading.Thread(target=RE.request_pause, kwargs={"defer": defer}).start()

    RE.subscribe(pauser)
    charge = _c15(bl)
    with pytest.raises(RunEngineInterrupted):
        RE(_series(bl, triggers=PeriodicTrigger(1e6), charge=charge, grid=MapGrid((4, 4), 0.1), etas=bl.etas()))
    assert RE.state == "paused"
    safe = CellMode.OPEN_CIRCUIT if safe_mode == "open_circuit" else CellMode.POTENTIOSTATIC
    assert bl.cell.mode is safe
    if safe_mode == "open_circuit":
        q, t = bl.cell.charge, bl.clock.time
        assert until(lambda: bl.clock.time >= t + 60.0, 120, interval_s=0.01)  # a simulated minute passes while paused
        assert bl.cell.charge == q  # no current flows while paused
    n_paused = len(stream(docs, "primary"))
    assert n_paused >= 10
    _check_references(docs)  # every frame saved so far is in the file, where its event says
    if defer:
        assert n_paused == _frames_in_files(docs)
    with pytest.raises(RunEngineInterrupted):
        RE.resume()
    commands = [(m, sp) for _, m, sp, _ in bl.cell.commands]
    assert commands[:3] == [(CellMode.GALVANOSTATIC, charge.setpoint), (safe, commands[1][1]),
                            (CellMode.GALVANOSTATIC, charge.setpoint)]  # resume restored the charge
    assert bl.cell.mode is safe and len(stream(docs, "primary")) > n_paused
    RE.abort()
    assert bl.cell.mode is safe
    if safe is CellMode.OPEN_CIRCUIT:
        assert bl.cell.current == 0.0
    assert docs[-1][0] == "stop" and docs[-1][1]["exit_status"] == "abort"
    validate_all(docs)
    _check_references(docs)
    frames = stream(docs, "primary")
    assert len(frames) >= 30 and _frames_in_files(docs) >= len(frames)
    if defer:
        assert _frames_in_files(docs) == len(frames)
    assert len({e["data"]["detector-map_index"] for e in frames}) == 16  # >= 16 frames of eta-outer


def test_rest_trigger_maps_when_cycling_pauses(RE, docs, make_beamline) -> None:
    bl = make_beamline(acceleration=900.0)
    charge = CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 2), cutoff=4.3)  # seed 003: pause, then image
    result = RE(_series(bl, triggers=RestTrigger(), charge=charge, grid=MapGrid((2, 2), 0.1), etas=bl.etas()[:2],
                        stop_at_rest=False, max_maps=1)).plan_result
    assert len(result.maps) == 1 and "rest" in result.maps[0].reason
    start = stream(docs, "maps")[0]["data"]
    assert start["potentiostat-mode"] == "open_circuit" and start["potentiostat-current"] == 0.0
    assert 4.25 < start["potentiostat-voltage"] <= 4.3  # relaxing just below the cut-off


def test_periodic_maps_follow_cell_time(RE, docs, make_beamline) -> None:
    bl = make_beamline(acceleration=900.0)
    result = RE(_series(bl, triggers=PeriodicTrigger(900.0), charge=_c15(bl), grid=MapGrid((2, 2), 0.1),
                        etas=bl.etas()[:1], max_cell_time_s=3700.0)).plan_result
    t = [m.start.time for m in result.maps]
    assert len(t) >= 4 and t[0] < 60.0
    # a fixed cadence from the first map: one map per period, none skipped, none early
    assert [int((x - t[0]) // 900.0) for x in t] == list(range(len(t))), t
    assert result.end_reason.startswith("cell time")


def test_seed_001_protocol_on_lco_steps_with_timeouts(RE, docs, make_beamline) -> None:
    from opmon.acquisition.potentiostat import PotentiostatLimits
    from opmon.simulators.cell import CellConfig

    # Keithley steps 2.5/3/3.5/4 V (charge), then 3.5 and 3 V (discharge), 5 min each, high impedance to image
    bl = make_beamline(acceleration=900.0, cell=CellConfig(material="lco"),
                       limits=PotentiostatLimits(v_min=2.5, v_max=4.3, i_max=1e-3))
    steps = [2.5, 3.0, 3.5, 4.0, 3.5, 3.0]
    result = RE(potentiostatic_steps(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector, steps=steps,
                                     current_cutoff_a=1e-6, timeout_s=300.0, grid=MapGrid((2, 2), 0.1),
                                     etas=bl.etas()[:1])).plan_result
    validate_all(docs)
    assert len(result.steps) == 6 and len(result.maps) == 6
    by_v = {(i, s.voltage): s for i, s in enumerate(result.steps)}
    assert by_v[(0, 2.5)].reached_cutoff  # a fully lithiated cathode takes no more lithium
    assert not by_v[(3, 4.0)].reached_cutoff and by_v[(3, 4.0)].end.current > 1e-6  # still charging at 5 min
    assert by_v[(4, 3.5)].end.current < 0 or by_v[(4, 3.5)].reached_cutoff  # stepping down discharges
    log = stream(docs, "potentiostat")
    assert min(e["data"]["potentiostat-current"] for e in log) < 0 < max(e["data"]["potentiostat-current"] for e in log)
    assert all(e["data"]["potentiostat-mode"] == "high_impedance" for e in stream(docs, "maps"))
