"""Denser mapping steered mid-run through the plan's soft signals: a finer grid (next maps on it,
recorded with the undo that restores the old one; a grid beyond the axis limits refused and
recorded) and a periodic rule "for a while" that hands back to the rule before it."""
from __future__ import annotations

import json

from opmon.acquisition import operando_series
from opmon.acquisition.cell_state import CellMode
from opmon.acquisition.decisions import describe_rule
from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.potentiostat import CellCommand
from opmon.acquisition.steering_requests import SteeringRequests
from opmon.acquisition.triggers import CellReading, ForAWhile, PeriodicTrigger, VoltageThresholds

from .conftest import stream, validate_all


def test_a_finer_grid_and_a_rule_for_a_while_apply_from_the_next_map(RE, docs, make_beamline) -> None:
    bl = make_beamline(acceleration=300.0)
    step = bl.config.setup.map_step_um
    box = SteeringRequests(loop=RE.loop)
    maps = {"n": 0}

    def steer(name, doc):
        if name != "event":
            return
        if doc["data"].get("potentiostat-voltage") and not maps.get("asked"):
            maps["asked"] = True
            box.set_grid((3, 3), step / 2, (step, step), "onset: finer map")
            box.set_rule({"period_s": 50.0, "for_s": 1e5}, "onset: maps every 50 s for a while")
        if "detector-map_number" in doc["data"] and "potentiostat-voltage" in doc["data"]:
            maps["n"] += 1
            if maps["n"] == 1:
                box.set_grid((3, 3), step, (1e6, 0.0), "a grid beyond the stage")
            elif maps["n"] == 2:
                box.finish()

    RE.subscribe(steer)
    result = RE(operando_series(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector,
                                grid=MapGrid((4, 4), step), etas=bl.etas()[1:3],
                                triggers=PeriodicTrigger(1e6, start_now=False),
                                charge=CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15), cutoff=4.9),
                                requests=box)).plan_result
    validate_all(docs)
    assert [m.frames for m in result.maps] == [9 * 2, 9 * 2]          # both maps on the finer 3 x 3 grid
    assert all("periodic (50 s)" in m.reason for m in result.maps)
    xs = sorted({round(e["data"]["stage-x"], 6) for e in stream(docs, "primary")})
    assert xs == [round(step + k * step / 2, 6) for k in range(3)]
    decided = [(e["data"]["steering-decision"], e["data"]["steering-reason"], json.loads(e["data"]["steering-detail"]),
                json.loads(e["data"]["steering-actions"])) for e in stream(docs, "steering")]
    kinds = [d for d, _, _, _ in decided]
    assert kinds[:3] == ["trigger rule", "map grid", "map"] and "map grid refused" in kinds and kinds[-1] == "end"
    _, why, detail, actions = decided[1]
    assert why == "onset: finer map" and detail["shape"] == [3, 3] and detail["step_um"] == step / 2
    assert actions == [{"label": "Undo: restore the previous grid", "command": "set_grid",
                        "args": {"reason": "undo: previous map grid restored", "shape": [4, 4], "step_um": step,
                                 "origin_um": [0.0, 0.0]}}]
    _, why, detail, actions = decided[0]
    assert detail["for_s"] == 1e5 and detail["then"] == {"period_s": 1e6} and actions[0]["args"]["period_s"] == 1e6
    refused = [why for d, why, _, _ in decided if d == "map grid refused"]
    assert "a grid beyond the stage" in refused[0]


def test_a_rule_for_a_while_hands_back_in_step() -> None:
    before = VoltageThresholds([4.5, 4.8])
    rule = ForAWhile(PeriodicTrigger(10), before, hold_s=30)
    fired = {t: rule.update(CellReading(t, 4.4 + 0.01 * t, 1e-5)) for t in range(0, 60, 5)}
    # every 10 s for 30 s, then the thresholds again: 4.5 V (passed at 10 s) does not fire late at 30 s
    assert [t for t, why in fired.items() if why] == [0, 10, 20, 40]
    assert all("periodic" in fired[t] for t in (0, 10, 20)) and "4.8000" in fired[40]
    assert before.pending == []
    assert describe_rule(rule) == {"period_s": 10.0, "for_s": 30.0, "then": {"thresholds_v": [], "direction": "charge"}}


def test_a_finer_grid_renders_the_crystal_at_the_piezo_position(RE, make_beamline) -> None:
    """The simulated detector sees the crystal model's pixel under the beam on a steered grid
    (the model has the setup's step; a finer map samples it at the nearest pixel)."""
    bl = make_beamline()
    step = bl.config.setup.map_step_um
    source = bl.source
    assert source.map_shape == (4, 4)
    assert source.crystal_pixel(5, {"x": 0.0, "y": 0.0}) == 5                    # the setup's grid: by index
    import bluesky.plan_stubs as bps
    RE(bps.mv(bl.detector.map_ny, 7, bl.detector.map_nx, 9))
    assert source.map_shape == (7, 9)
    assert source.crystal_pixel(40, {"x": 1.4 * step, "y": 2.6 * step}) == 3 * 4 + 1   # nearest model pixel
    assert source.crystal_pixel(62, {"x": 99.0, "y": -5.0}) == 3                      # clipped to the model
