"""Steering over a real REQ/REP socket: token checked in constant time, refusals explained."""
from __future__ import annotations

import json
import threading

import pytest
import zmq

from opmon.dashboard.control_client import ControlClient, ControlError
from opmon.dashboard.steering import parse_thresholds, token_allows
from opmon.streaming.control import ControlCommandError, ControlServer, check_token, handle_request


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
