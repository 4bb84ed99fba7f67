"""The decisions panel: each automatic or steered decision with its reason, and a button per way
to undo or override it.

Rows are generic (`opmon.dashboard.model.Decision`: a kind, a reason, what it set, and actions,
each a label and a control command with its arguments), so any producer of decisions (the plan's
`steering` stream, the live processor's onset flag, the acquisition's pause) adds undo buttons by
naming the inverse command; the panel knows no decision kind. A button sends its command through
the session's `Steering` (token-checked, the reply in the feedback line) once, then greys out;
the acquisition records the undo as a decision of its own. An *awaited* action (phase tracking's
"Accept: re-centre on d = …" of a proposal) keeps its decision in view however many decisions
follow, until a later decision `answers` it (the plan's re-centring, or a newer proposal that
replaces it); then its button goes in every session.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import Button, Div

from opmon.dashboard.model import Decision, DecisionAction
from opmon.dashboard.steering import Steering
from opmon.dashboard.views import decisions_html

SHOWN = 6


def action_key(decision: Decision, action: DecisionAction) -> tuple[float, str, str]:
    """What identifies one action of one decision across refreshes (a button is used once)."""
    return (decision.t, decision.decision, action.label)


def answered_calls(decisions: list[Decision]) -> set[tuple[str, str]]:
    """Every awaited action some decision settled (its `answers`)."""
    return {call for d in decisions for call in d.answers}


def open_actions(decision: Decision, answered: set[tuple[str, str]]) -> list[DecisionAction]:
    """The decision's actions still to offer: one a later decision answered is done."""
    return [a for a in decision.actions if a.call not in answered]


def in_view(decisions: list[Decision], shown: int) -> list[Decision]:
    """The newest `shown` decisions, after the older ones still awaiting an answer (an open
    proposal stays in view however many maps follow), oldest first."""
    answered = answered_calls(decisions)
    older, newest = decisions[:max(len(decisions) - shown, 0)], decisions[-shown:]
    pinned = [d for d in older if any(a.awaited for a in open_actions(d, answered))]
    return pinned + newest


class DecisionsPanel:
    """The table of the newest decisions (Div `decisions`) and their undo/override buttons."""

    def __init__(self, steering: Steering, shown: int = SHOWN) -> None:
        self.steering, self.shown = steering, shown
        self.table = Div(text=decisions_html([]), name="decisions", sizing_mode="stretch_width",
                         min_width=300, styles={"overflow": "hidden"})
        self.buttons = column(children=[], sizing_mode="fixed", width=330)
        self.used: set[tuple[float, str, str]] = set()
        self.sent: list[tuple[str, dict[str, Any]]] = []     # what this session's buttons sent
        self._decisions: list[Decision] = []
        self._made: dict[tuple[float, str, str], Button] = {}   # buttons on the page, kept across refreshes
        self._count = 0

    def layout(self) -> Any:
        return row(self.table, self.buttons, sizing_mode="stretch_width")

    def show(self, decisions: list[Decision]) -> None:
        """The decisions in view, newest first, with a button per action not yet used here nor answered."""
        self._decisions = decisions
        rows = in_view(decisions, self.shown)
        self.table.text = decisions_html(rows, len(rows), total=len(decisions))
        answered = answered_calls(decisions)
        made: dict[tuple[float, str, str], Button] = {}
        for d in reversed(rows):
            for a in open_actions(d, answered):
                key = action_key(d, a)
                b = self._made.get(key) or self._button(d, a, key)
                b.disabled = not self.steering.enabled or key in self.used
                made[key] = b
        self._made = made
        if list(made.values()) != list(self.buttons.children):
            self.buttons.children = list(made.values())

    def _button(self, decision: Decision, action: DecisionAction, key: tuple[float, str, str]) -> Button:
        """A new button for one action (reused while it stays in view: a click is not lost to a re-draw)."""
        when = time.strftime("%H:%M:%S", time.localtime(decision.t))
        b = Button(label=f"{action.label} ({decision.decision}, {when})", name=f"decision_action_{self._count}",
                   height=30, width=320, button_type="success" if action.awaited else "default")
        self._count += 1
        b.on_click(partial(self._act, key, action, b))
        return b

    def _act(self, key: tuple[float, str, str], action: DecisionAction, button: Button) -> None:
        if key in self.used:
            return
        if self.steering.enabled:                # a read-only session is refused by `send` itself
            self.used.add(key)
            button.disabled = True
            self.sent.append((action.command, dict(action.args)))
        self.steering.send(action.command, **action.args)
