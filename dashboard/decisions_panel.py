"""The decisions panel: each automatic or steered decision with its reason, and a button per way
to undo or override it.

Rows are generic (`opmon.dashboard.model.Decision`: a kind, a reason, what it set, and actions,
each a label and a control command with its arguments), so any producer of decisions (the plan's
`steering` stream, the live processor's onset flag, the acquisition's pause) adds undo buttons by
naming the inverse command; the panel knows no decision kind. A button sends its command through
the session's `Steering` (token-checked, the reply in the feedback line) once, then greys out;
the acquisition records the undo as a decision of its own.
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

    def layout(self) -> Any:
        return row(self.table, self.buttons, sizing_mode="stretch_width")

    def show(self, decisions: list[Decision]) -> None:
        """The newest decisions, newest first, with a button per action not yet used here."""
        self._decisions = decisions
        self.table.text = decisions_html(decisions, self.shown)
        buttons = []
        for d in reversed(decisions[-self.shown:]):
            for a in d.actions:
                key = action_key(d, a)
                when = time.strftime("%H:%M:%S", time.localtime(d.t))
                b = Button(label=f"{a.label} ({d.decision}, {when})", name=f"decision_action_{len(buttons)}",
                           height=30, width=320, button_type="default",
                           disabled=not self.steering.enabled or key in self.used)
                b.on_click(partial(self._act, key, a, b))
                buttons.append(b)
        self.buttons.children = buttons

    def _act(self, key: tuple[float, str, str], action: DecisionAction, button: Button) -> None:
        if key in self.used:
            return
        if self.steering.enabled:                # a read-only session is refused by `send` itself
            self.used.add(key)
            button.disabled = True
            self.sent.append((action.command, dict(action.args)))
        self.steering.send(action.command, **action.args)
