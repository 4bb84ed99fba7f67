"""The plan's steering soft signals: set from many threads through the RunEngine's loop, read by a
plan with bps.rd / bps.read, nothing lost or read twice; rules travel as plain values."""
from __future__ import annotations

import json
import threading

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine

from opmon.acquisition.decisions import describe_rule
from opmon.acquisition.steering_requests import RequestReader, SteeringRequests
from opmon.acquisition.triggers import (AnyOf, PeriodicTrigger, PlateauTrigger, RestTrigger, VoltageThresholds,
                                        rule_from_values, rule_values)
from opmon.errors import ConfigError, ControlCommandError


def _poll(RE: RunEngine, reader: RequestReader):
    def plan():
        return (yield from reader.poll())
    return RE(plan()).plan_result


def test_requests_from_many_threads_are_each_counted_and_read_once() -> None:
    RE = RunEngine({}, call_returns_result=True)
    box = SteeringRequests(loop=RE.loop)
    threads = [threading.Thread(target=lambda k=k: [box.map_now(f"{k}-{i}") for i in range(50)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    box.note("pause", "dose limit")
    box.note("resume", "undo: dose pause")
    box.set_region((0, 2, 1, 3), "user box")
    reader = RequestReader(box)
    first = _poll(RE, reader)
    assert box.current()["map_requests"] == 200 and len(first.maps) == 1 and first.maps[0].endswith("(200 requests)")
    assert first.notes == [("pause", "dose limit"), ("resume", "undo: dose pause")]   # neither lost
    assert first.region == (0, 2, 1, 3) and first.region_reason == "user box" and first.rule is None
    again = _poll(RE, reader)
    assert again.maps == [] and again.notes == [] and again.region == "unchanged"      # read once
    box.set_region(None)
    box.set_rule(PeriodicTrigger(10), "faster")
    box.finish("dose limit: stop")
    later = _poll(RE, RequestReader(box))           # a new reader of the same device: only what is new
    assert later.region is None and later.rule == {"period_s": 10.0} and later.rule_reason == "faster"
    assert later.finish == "dose limit: stop" and later.maps == []
    with pytest.raises(ConfigError, match=r"\(2, 1, 0, 1\)"):
        box.set_region((2, 1, 0, 1))
    with pytest.raises(ConfigError, match="plain-value"):
        box.set_rule(object())  # type: ignore[arg-type]


def test_a_request_without_a_running_loop_is_refused_in_one_line() -> None:
    import asyncio
    loop = asyncio.new_event_loop()                  # never run
    try:
        with pytest.raises(ControlCommandError, match="event loop is not running"):
            SteeringRequests(loop=loop).map_now()
    finally:
        loop.close()


def test_every_rule_the_channel_speaks_comes_back_from_its_values() -> None:
    rules = [VoltageThresholds([4.7, 4.5]), VoltageThresholds([3.9], "discharge"), PeriodicTrigger(60),
             PlateauTrigger(1e-5, 120), RestTrigger(1e-7), AnyOf(VoltageThresholds([4.8]), PeriodicTrigger(30))]
    for rule in rules:
        values = json.loads(json.dumps(rule_values(rule)))      # as the soft signal carries them
        assert describe_rule(rule_from_values(**values)) == describe_rule(rule)        # the same rule again
    spent = VoltageThresholds([4.0])
    spent.pending.clear()
    with pytest.raises(ConfigError, match="at least one"):
        rule_from_values(**rule_values(spent))
    with pytest.raises(ConfigError, match="twice"):
        rule_values(AnyOf(PeriodicTrigger(1), PeriodicTrigger(2)))


def test_the_plan_reads_requests_with_rd_and_read_only() -> None:
    """The plan's view costs one `locate` per poll while nothing changed."""
    RE = RunEngine({}, call_returns_result=True)
    box = SteeringRequests(loop=RE.loop)
    reader = RequestReader(box)
    msgs: list[str] = []
    RE.msg_hook = lambda msg: msgs.append(msg.command)

    def plan():
        yield from bps.null()
        yield from reader.poll()
        box.map_now("in the loop")          # as a RunEngine callback does: scheduled in the loop
        yield from bps.sleep(0.01)
        return (yield from reader.poll())
    changes = RE(plan()).plan_result
    assert changes.maps == ["in the loop"]
    assert msgs.count("locate") == 2 and msgs.count("read") == 1
