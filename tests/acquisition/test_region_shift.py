"""`shift_region`: the control channel's command moves the scan region of a running series (real
RunEngine, simulated beamline, ControlServer + RunEngineSteering); a user's shift holds against
automatic re-centring until cleared; a shift beyond the stage's travel is refused; every shift is
a decision with its reason in the run's `steering` stream."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from bluesky import RunEngine

from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.plans import operando_series
from opmon.acquisition.steering import RunEngineSteering
from opmon.acquisition.steering_requests import SteeringRequests
from opmon.acquisition.triggers import PeriodicTrigger
from opmon.dashboard.control_client import ControlClient
from opmon.streaming.control import COMMANDS, ControlServer
from tests.acquisition.conftest import stream

STEP = 0.1
TOKEN = "shift-token"


@pytest.fixture
def channel(RE: RunEngine):
    box = SteeringRequests(loop=RE.loop)
    server = ControlServer("tcp://127.0.0.1:0", TOKEN, RunEngineSteering(RE, box)).start()
    client = ControlClient(server.endpoint, timeout=5.0)
    yield box, client
    client.close()
    server.close()


def test_shift_region_is_one_command_of_the_table_and_checks_its_arguments(channel):
    box, client = channel
    assert "shift_region" in COMMANDS
    assert not client.request("shift_region", "wrong", dx_um=1.0, dy_um=0.0)["ok"]          # steering: token
    for args, error in [({"dx_um": 1.0}, "both"), ({"dx_um": 1, "dy_um": 1, "by": "robot"}, "by='robot'"),
                        ({"by": "auto"}, "needs dx_um"), ({"dx_um": "x", "dy_um": 0}, "shift_region"),
                        ({"dx_um": float("nan"), "dy_um": 0}, "finite")]:
        reply = client.request("shift_region", TOKEN, **args)
        assert not reply["ok"] and error in reply["error"], (args, reply)
    assert json.loads(box.current()["offsets"]) == []
    user = client.request("shift_region", TOKEN, dx_um=0.3, dy_um=-0.2, reason="centre the particle")
    assert user["ok"] and user["result"] == {"shift_um": [0.3, -0.2], "by": "user", "manual": True}
    auto = client.request("shift_region", TOKEN, dx_um=1.0, dy_um=1.0, by="auto", reason="drift")
    assert not auto["ok"] and "holds" in auto["error"]                    # the user's shift wins
    assert client.request("status", None)["result"]["manual_shift_um"] == [0.3, -0.2]
    assert client.request("shift_region", TOKEN)["result"] == {"shift_um": [0.0, 0.0], "by": "user", "manual": False}
    assert client.request("shift_region", TOKEN, dx_um=1.0, dy_um=1.0, by="auto", reason="drift")["ok"]
    assert [entry[1:] for entry in json.loads(box.current()["offsets"])] == [
        [0.3, -0.2, "user override: centre the particle"], [0.0, 0.0, "user cleared the region shift"],
        [1.0, 1.0, "drift"]]


def test_the_plan_maps_the_shifted_region_and_refuses_a_shift_beyond_travel(RE, docs, make_beamline, channel):
    box, client = channel
    bl = make_beamline(acceleration=300.0)
    assert client.request("shift_region", TOKEN, dx_um=0.3, dy_um=-0.2, reason="centre the particle")["ok"]

    def steer() -> None:                 # a client elsewhere: the requests wait for the RunEngine's loop
        client.request("shift_region", TOKEN)                                        # the user clears it
        client.request("shift_region", TOKEN, dx_um=80.0, dy_um=0.0, by="auto", reason="drift far away")
        box.map_now("second map")

    steering_thread = threading.Thread(target=steer, daemon=True)

    def after_first_map(name, doc):      # steer from the control channel once map 0 has started
        if name == "event" and doc["data"].get("detector-map_number") == 0 and "potentiostat-voltage" in doc["data"]:
            if not steering_thread.is_alive() and steering_thread.ident is None:
                steering_thread.start()

    RE.subscribe(after_first_map)
    result = RE(operando_series(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector,
                                grid=MapGrid((3, 4), STEP), etas=bl.etas()[:1], requests=box,
                                triggers=PeriodicTrigger(1e6), max_maps=2)).plan_result
    assert [m.offset_um for m in result.maps] == [(0.3, -0.2), (0.0, 0.0)]
    frames = stream(docs, "primary")
    for number, (dx, dy) in enumerate([(0.3, -0.2), (0.0, 0.0)]):
        got = [(e["data"]["detector-map_index"], e["data"]["stage-x"], e["data"]["stage-y"])
               for e in frames if e["data"]["detector-map_number"] == number]
        assert len(got) == 12
        for index, x, y in got:                              # same map pixels, moved in the piezo frame
            row, col = divmod(index, 4)
            assert (x, y) == pytest.approx((dx + col * STEP, dy + row * STEP)), (number, index)
    decisions = [(e["data"]["steering-decision"], e["data"]["steering-reason"], json.loads(e["data"]["steering-detail"]))
                 for e in stream(docs, "steering")]
    assert [d for d, _, _ in decisions] == ["map offset", "map", "map offset", "map offset refused", "map", "end"]
    assert decisions[0][1] == "user override: centre the particle" and decisions[0][2]["offset_um"] == [0.3, -0.2]
    assert decisions[1][2]["offset_um"] == [0.3, -0.2] and decisions[4][2]["offset_um"] == [0.0, 0.0]
    assert decisions[2][1] == "user cleared the region shift"
    assert "drift far away" in decisions[3][1] and "outside its travel" in decisions[3][1]
    assert decisions[3][2]["kept_um"] == [0.0, 0.0]
    assert np.isfinite(result.maps[1].start.voltage)
