"""The one-click accept of a phase-tracking proposal, beside the decisions panel.

With `--phase-tracking propose`, the plan surveys for the next phase's reflection on its own and
records a "proposal" decision (its number, eta, delta, d) in the run's `steering` stream; it
re-centres only once the user accepts. The button shows the newest proposal not yet applied
(no later "re-centre" decision names it) and sends `accept_proposal` through the control
channel, which checks the token; the plan's "re-centre" decision then hides the button.
"""
from __future__ import annotations

import html
from typing import Any

from bokeh.models import Button

from opmon.dashboard.model import Decision
from opmon.dashboard.steering import Steering


def open_proposal(decisions: list[Decision]) -> Decision | None:
    """The newest "proposal" decision that no later "re-centre" decision has applied, or None."""
    applied = {d.detail.get("proposal") for d in decisions if d.decision == "re-centre"}
    for d in reversed(decisions):
        if d.decision == "proposal" and d.detail.get("proposal") not in applied:
            return d
    return None


def proposal_label(decision: Decision) -> str:
    """What accepting it does, in a few words."""
    detail: dict[str, Any] = decision.detail
    try:
        return (f"Accept: re-centre on d = {float(detail['d_angstrom']):.4f} Å "
                f"(eta {float(detail['eta']):.3f}°, delta {float(detail['delta']):.3f}°)")
    except (KeyError, TypeError, ValueError):
        return f"Accept proposal {html.escape(str(detail.get('proposal')))}"


class ProposalButton:
    """Hidden until the plan proposes; one click accepts the open proposal."""

    def __init__(self, steering: Steering) -> None:
        self.steering = steering
        self.proposal: Any = None
        enabled = steering.authorized and steering.control is not None
        self.button = Button(label="Accept proposal", button_type="success", name="accept_proposal",
                             visible=False, disabled=not enabled, height=34, width=420)
        self.button.on_click(self._accept)

    def show(self, decisions: list[Decision]) -> None:
        """Show the newest open proposal (or hide the button when there is none)."""
        found = open_proposal(decisions)
        self.proposal = None if found is None else found.detail.get("proposal")
        self.button.visible = found is not None
        self.button.label = proposal_label(found) if found is not None else "no open proposal"

    def _accept(self) -> None:
        if self.proposal is not None:
            self.steering.send("accept_proposal", proposal=int(self.proposal))
