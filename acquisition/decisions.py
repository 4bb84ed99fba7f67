"""The plan's steering decisions as soft signals, recorded in the run's `steering` stream.

A map taken because a voltage threshold was crossed, a trigger rule or a map region changed
from the dashboard, a series ended on request: each is a decision with a reason. The plan sets
them on ophyd-async soft signals and reads them with `trigger_and_read` into an event stream
named `steering`, so the run's own documents say what was decided, when and why (before,
a rule or region change left no trace in the documents).
"""
from __future__ import annotations

import json
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator
from ophyd_async.core import StandardReadable, soft_signal_rw

from opmon.acquisition.triggers import AnyOf, ForAWhile, TriggerRule, VoltageThresholds, rule_values
from opmon.errors import ConfigError

STREAM = "steering"


class SteeringLog(StandardReadable):
    """Four soft signals: the decision ("map", "trigger rule", "map region", "pause", "end",
    ...), its reason, what it set (JSON), and what would undo or override it (JSON `actions`)."""

    def __init__(self, name: str = "steering") -> None:
        with self.add_children_as_readables():
            self.decision = soft_signal_rw(str, "")
            self.reason = soft_signal_rw(str, "")
            self.detail = soft_signal_rw(str, "{}")
            self.actions = soft_signal_rw(str, "[]")
        super().__init__(name=name)


def action(label: str, command: str, **args: Any) -> dict[str, Any]:
    """One way to undo or override a decision: a button `label` sending control `command` with `args`
    (a command of `opmon.streaming.control.COMMANDS`; the dashboard's decisions panel shows it)."""
    return {"label": label, "command": command, "args": args}


def awaited(label: str, command: str, **args: Any) -> dict[str, Any]:
    """An action the plan waits for (a proposal's accept): the decisions panel keeps its button in
    view, however many decisions follow, until a later decision says it `answers` it."""
    return {**action(label, command, **args), "awaited": True}


def answers(command: str, **args: Any) -> dict[str, Any]:
    """The `answers` detail (one, or a list) of a decision that carries out or replaces an awaited
    action (same command and args): the panel then drops that action's button in every session."""
    return {"command": command, "args": args}


def record(log: SteeringLog, decision: str, reason: str, actions: list[dict[str, Any]] | None = None,
           **detail: Any) -> MsgGenerator[None]:
    """Set the decision on the soft signals and read them into the `steering` stream."""
    yield from bps.mv(log.decision, decision, log.reason, reason, log.detail, json.dumps(detail, default=str),
                      log.actions, json.dumps(actions or [], default=str))
    yield from bps.trigger_and_read([log], name=STREAM)


def describe_rule(rule: TriggerRule) -> dict[str, Any]:
    """A trigger rule as plain values, for the steering stream (unknown rules by class name);
    thresholds as `thresholds_v`, those still pending in firing order."""
    if isinstance(rule, AnyOf):
        return {"any_of": [describe_rule(r) for r in rule.rules]}
    if isinstance(rule, ForAWhile):
        return {**describe_rule(rule.rule), "for_s": rule.hold_s, "then": describe_rule(rule.then)}
    try:
        values = rule_values(rule)
    except ConfigError:
        return {"rule": type(rule).__name__}
    if isinstance(rule, VoltageThresholds):
        del values["thresholds"]
        values["thresholds_v"] = list(rule.pending)
    return values
