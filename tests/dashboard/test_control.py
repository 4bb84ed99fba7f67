"""Steering over a real REQ/REP socket: token checked in constant time, refusals explained."""
from __future__ import annotations

import json
import threading

import bluesky.plan_stubs as bps
import pytest
import zmq
from bluesky import RunEngine
from bokeh.events import ButtonClick

from dashboard_http import http_get, session_document, steering_page
from opmon.acquisition import SteeringRequests, VoltageThresholds, rule_from_values
from opmon.dashboard.control_client import ControlClient, ControlError
from opmon.dashboard.steering import box_to_region, parse_thresholds, token_allows
from opmon.acquisition.steering import RunEngineSteering
from opmon.errors import ControlCommandError
from opmon.streaming.control import ControlServer, check_token, handle_request
from tests.waiting import until


def _wait(pred, what, timeout_s=20.0):
    assert until(pred, timeout_s, interval_s=0.01), f"timed out waiting for {what}"


class Recorder:
    """A Steerable that records what it was asked (stands in for the RunEngine adapter)."""

    def __init__(self):
        self.calls = []
        self.state = "running"

    def pause(self):
        self.calls.append("pause")
        self.state = "paused"
        return {"state": self.state}

    def resume(self):
        if self.state != "paused":
            raise ControlCommandError(f"cannot resume: run is {self.state}")
        self.calls.append("resume")
        self.state = "running"
        return {"state": self.state}

    def abort(self, reason=""):
        self.calls.append(("abort", reason))
        return {}

    def stop(self):
        return {}

    def start_map(self):
        self.calls.append("start_map")
        return {}

    def set_trigger(self, **rule):
        self.calls.append(("set_trigger", rule))
        return {"trigger": rule}

    def set_region(self, **region):
        self.calls.append(("set_region", region))
        return {"region": region}

    def status(self):
        return {"state": self.state}


@pytest.fixture
def served():
    ctx = zmq.Context()
    target = Recorder()
    server = ControlServer("tcp://127.0.0.1:0", "s3cret", target, ctx).start()
    client = ControlClient(server.endpoint, timeout=5.0, context=ctx)
    yield server, client, target
    client.close()
    server.close()
    ctx.term()


def test_token_gates_steering_but_not_status(served):
    server, client, target = served
    assert client.request("pause", "wrong") == {"v": 1, "ok": False, "error": "bad token"}
    assert client.request("pause", None)["error"] == "bad token"
    assert target.calls == []
    assert client.request("status", None) == {"v": 1, "ok": True, "result": {"state": "running"}}
    reply = client.request("pause", "s3cret")
    assert reply["ok"] and reply["result"]["state"] == "paused" and target.calls == ["pause"]
    assert server.refused == 2


def test_commands_carry_their_arguments_and_refusals_name_the_reason(served):
    _, client, target = served
    assert client.request("set_trigger", "s3cret", thresholds=[4.7, 4.75], period=90.0)["ok"]
    assert client.request("set_region", "s3cret", x0=1.0, x1=3.0, y0=0.5, y1=2.0)["ok"]
    assert target.calls[-2] == ("set_trigger", {"thresholds": [4.7, 4.75], "period": 90.0})
    reply = client.request("resume", "s3cret")
    assert not reply["ok"] and "cannot resume: run is running" in reply["error"]
    reply = client.request("start_map", "s3cret", bogus=1)
    assert not reply["ok"] and "bad arguments" in reply["error"]


def test_handle_request_rejects_malformed_requests():
    t = Recorder()
    assert "not JSON" in handle_request(b"{nope", "k", t)["error"]
    assert "v = 1" in handle_request(json.dumps({"command": "pause"}).encode(), "k", t)["error"]
    assert "unknown command" in handle_request(json.dumps({"v": 1, "command": "rm -rf"}).encode(), "k", t)["error"]
    assert "too large" in handle_request(b" " * 70000, "k", t)["error"]
    assert t.calls == []


def test_check_token():
    assert check_token("abc", "abc")
    assert not check_token("abd", "abc") and not check_token("", "abc") and not check_token(None, "abc")
    assert not check_token("", "")                  # an unset token never lets anyone steer
    with pytest.raises(ControlCommandError, match="token"):
        ControlServer("tcp://127.0.0.1:0", "", Recorder())


def test_client_times_out_and_recovers_when_nobody_answers():
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    client = ControlClient(f"tcp://127.0.0.1:{port}", timeout=0.3, context=ctx)
    try:
        with pytest.raises(ControlError, match="no reply"):
            client.request("status", None)           # the REP never answers
        rep.recv()                                    # the first request arrived ...
        rep.send(b"too late")                         # ... its late reply goes nowhere

        def answer():
            rep.recv()
            rep.send(json.dumps({"v": 1, "ok": True, "result": {}}).encode())

        t = threading.Thread(target=answer)
        t.start()
        assert client.request("status", None)["ok"]  # a fresh socket after the timeout
        t.join()
        with pytest.raises(ControlError, match="unknown control command"):
            client.request("format_disk", "x")
    finally:
        client.close()
        rep.close(0)
        ctx.term()


def test_session_token_rules_and_threshold_parsing():
    assert token_allows("abc", "abc") and not token_allows("abd", "abc") and not token_allows(None, "abc")
    assert token_allows("anything", None)            # dashboard has no token: acquisition decides
    assert not token_allows("", None)
    assert parse_thresholds("4.70, 4.75;4.8") == [4.7, 4.75, 4.8]
    assert parse_thresholds("") == []
    with pytest.raises(ValueError, match="'4.7V'"):
        parse_thresholds("4.7V")


def test_box_to_region_covers_touched_pixels_and_clips():
    geom = (24, 32, 0.0, 0.0, 32.0, 24.0)                  # pixel units, as the live maps come
    assert box_to_region({"x0": 6.2, "x1": 22.5, "y0": 4.9, "y1": 17.0}, geom) == {"r0": 4, "r1": 17, "c0": 6, "c1": 23}
    assert box_to_region({"x0": -5, "x1": 99, "y0": -1, "y1": 99}, geom) == {"r0": 0, "r1": 24, "c0": 0, "c1": 32}
    um = (10, 10, 100.0, 50.0, 2.0, 1.0)                    # 0.2 um x 0.1 um pixels at (100, 50) um
    assert box_to_region({"x0": 100.45, "x1": 100.85, "y0": 50.0, "y1": 50.3}, um) == {"r0": 0, "r1": 3, "c0": 2, "c1": 5}
    with pytest.raises(ValueError, match="misses"):
        box_to_region({"x0": 40, "x1": 50, "y0": 0, "y1": 5}, geom)
    with pytest.raises(ValueError, match="no map"):
        box_to_region({"x0": 0, "x1": 1, "y0": 0, "y1": 1}, None)


def test_run_engine_steering_pauses_resumes_and_aborts_a_real_run():
    RE = RunEngine({}, context_managers=[])
    requests = SteeringRequests(loop=RE.loop)
    steer = RunEngineSteering(RE, requests, lambda thresholds=None, period_s=None: VoltageThresholds(thresholds))
    ticks = []

    def plan():
        for i in range(2000):
            yield from bps.checkpoint()
            yield from bps.sleep(0.01)
            ticks.append(i)

    result = []
    runner = threading.Thread(target=lambda: result.append(steer.run(plan())))
    runner.start()
    _wait(lambda: len(ticks) > 3, "the plan to run")
    with pytest.raises(ControlCommandError, match="cannot resume"):
        steer.resume()
    assert steer.pause()["state"] in ("running", "pausing", "paused")  # deferred: pauses at the next checkpoint
    _wait(lambda: RE.state == "paused", "the pause")
    n = len(ticks)
    assert steer.status()["state"] == "paused" and len(ticks) == n
    steer.resume()
    _wait(lambda: len(ticks) > n + 3, "the plan to go on")
    steer.set_region(r0=2, r1=5, c0=1, c1=4)
    assert json.loads(requests.current()["region"])["region"] == [2, 5, 1, 4]   # on the plan's soft signals
    steer.set_trigger(thresholds=[4.7])
    assert rule_from_values(**json.loads(requests.current()["rule"])["values"]).pending == [4.7]
    steer.start_map()
    assert requests.current()["map_reason"] == "steering: map now"
    with pytest.raises(ControlCommandError, match="r0, r1, c0, c1"):
        steer.set_region(r0=1)
    steer.abort("test over")
    runner.join(20)
    assert result == ["abort"] and RE.state == "idle" and len(ticks) < 2000


def _on_server_loop(doc, fn):
    """Run `fn` the way the server runs a browser's event: on its loop, with the document locked."""
    done = threading.Event()

    def call():
        try:
            fn()
        finally:
            done.set()
    doc.add_next_tick_callback(call)
    assert done.wait(10), "the dashboard's event loop never ran the callback"


def test_abort_needs_arming_and_the_token_reaches_the_acquisition(dashboard, experiment, token):
    """Through the real token path: the steering URL's token becomes the session cookie, the page's
    Bokeh session steers with it, and the acquisition's control server checks it and aborts its
    RunEngine."""
    _wait(lambda: experiment.RE.state == "running", "the acquisition's plan to run")
    read_only = session_document(dashboard, http_get(dashboard.port, "/")[2])
    assert read_only.get_model_by_name("abort").disabled       # no session cookie: no steering
    assert read_only.get_model_by_name("arm_abort").disabled
    doc = steering_page(dashboard, token)
    abort, arm, feedback = (doc.get_model_by_name(n) for n in ("abort", "arm_abort", "feedback"))
    requests_before = experiment.control.requests
    _on_server_loop(doc, lambda: doc.callbacks.trigger_event(ButtonClick(abort)))   # not armed: refused locally
    assert "arm" in feedback.text and experiment.control.requests == requests_before
    assert experiment.RE.state == "running" and experiment.exit_status is None
    _on_server_loop(doc, lambda: setattr(arm, "active", True))
    assert not abort.disabled                                  # arming enables the button
    _on_server_loop(doc, lambda: doc.callbacks.trigger_event(ButtonClick(abort)))
    _wait(lambda: experiment.exit_status is not None, "the abort to reach the acquisition")
    stops = [d for name, d in experiment.documents if name == "stop"]
    assert experiment.exit_status == "abort" and experiment.control.refused == 0
    assert [d["exit_status"] for d in stops] == ["abort"]
    assert experiment.steering.abort_reason == "aborted from the dashboard"
    assert not arm.active


def test_resolve_token_order(monkeypatch):
    from opmon.streaming.control import resolve_token
    monkeypatch.setenv("OPMON_CONTROL_TOKEN", "from-env")
    assert resolve_token("given", "configured") == "given"
    assert resolve_token(None, "configured") == "configured"
    assert resolve_token(None, "") == "from-env"
    monkeypatch.delenv("OPMON_CONTROL_TOKEN")
    assert resolve_token(None, "", generate=False) is None
    generated = resolve_token(None, "")
    assert generated and generated != resolve_token(None, "")
